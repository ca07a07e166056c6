//! The policy layer's own counters, per service (`items`, `cache`, ...:
//! a bounded set), beside the per-call `grpc_client_*` series (see
//! `mesh_common::metrics`):
//!
//! - `mesh_upstream_retries_total{service,reason}`: repeats sent, after an
//!   attempt was cut at its per-try timeout (`per_try_timeout`) or a
//!   replica could not take the call (`unavailable`);
//! - `mesh_upstream_retries_refused_total{service}`: repeats the retry
//!   budget refused;
//! - `mesh_upstream_hedges_total{service}` and
//!   `mesh_upstream_hedges_won_total{service}`: second copies of slow reads
//!   sent, and those that answered first;
//! - `mesh_upstream_shed_total{service}`: calls refused because the
//!   service's in-flight limit was reached.

use std::sync::LazyLock;

use mesh_common::metrics::register;
use prometheus::{IntCounterVec, Opts};

struct Counters {
    retries: IntCounterVec,
    refused: IntCounterVec,
    hedges: IntCounterVec,
    hedges_won: IntCounterVec,
    shed: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| Counters {
    retries: counter(
        "mesh_upstream_retries_total",
        "Repeats of a call sent to a service, by why.",
        &["service", "reason"],
    ),
    refused: counter(
        "mesh_upstream_retries_refused_total",
        "Repeats the retry budget refused.",
        &["service"],
    ),
    hedges: counter(
        "mesh_upstream_hedges_total",
        "Second copies of slow reads sent.",
        &["service"],
    ),
    hedges_won: counter(
        "mesh_upstream_hedges_won_total",
        "Second copies of slow reads that answered first.",
        &["service"],
    ),
    shed: counter(
        "mesh_upstream_shed_total",
        "Calls refused at the service's in-flight limit.",
        &["service"],
    ),
});

pub fn retried(service: &'static str, reason: &'static str) {
    COUNTERS.retries.with_label_values(&[service, reason]).inc();
}

pub fn retry_refused(service: &'static str) {
    COUNTERS.refused.with_label_values(&[service]).inc();
}

pub fn hedged(service: &'static str) {
    COUNTERS.hedges.with_label_values(&[service]).inc();
}

pub fn hedge_won(service: &'static str) {
    COUNTERS.hedges_won.with_label_values(&[service]).inc();
}

pub fn shed(service: &'static str) {
    COUNTERS.shed.with_label_values(&[service]).inc();
}
