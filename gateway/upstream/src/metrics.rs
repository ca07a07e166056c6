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
//!
//! And per replica (`{service,replica}`, the replica's address: bounded by
//! the deployment, as Linkerd's and Envoy's per-endpoint series are), read
//! from the controller's and the balancer's state at each scrape:
//!
//! - `mesh_upstream_replica_healthy`: its last health check said `SERVING`;
//! - `mesh_upstream_replica_ejected`: outlier detection has taken it out;
//! - `mesh_upstream_replica_in_rotation`: the balancer may send it calls;
//! - `mesh_upstream_replica_pending`: calls sent to it and not yet answered;
//! - `mesh_upstream_replica_latency_seconds`: the balancer's peak-EWMA
//!   latency estimate for it.
//!
//! A replica that is no longer resolved leaves the series at the next scrape.

use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};

use mesh_common::metrics::register;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use crate::balance::{Replica, Rotation};
use crate::members::{MemberView, Members};

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

/// One service's state, held weakly: a gateway that drops an upstream (a
/// test's, at its end) takes its series with it.
struct Source {
    service: &'static str,
    members: Weak<RwLock<Vec<MemberView>>>,
    rotation: Weak<RwLock<Arc<[Arc<Replica>]>>>,
}

/// The per-replica gauges, filled afresh from every [`Source`] at each scrape.
#[derive(Clone)]
struct Replicas {
    sources: Arc<Mutex<Vec<Source>>>,
    healthy: IntGaugeVec,
    ejected: IntGaugeVec,
    in_rotation: IntGaugeVec,
    pending: IntGaugeVec,
    latency: GaugeVec,
}

fn gauge(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &["service", "replica"]).expect("valid metric")
}

static REPLICAS: LazyLock<Replicas> = LazyLock::new(|| {
    register(Replicas {
        sources: Arc::default(),
        healthy: gauge(
            "mesh_upstream_replica_healthy",
            "1 when the replica's last health check said SERVING.",
        ),
        ejected: gauge(
            "mesh_upstream_replica_ejected",
            "1 while outlier detection has taken the replica out.",
        ),
        in_rotation: gauge(
            "mesh_upstream_replica_in_rotation",
            "1 when the balancer may send the replica calls.",
        ),
        pending: gauge(
            "mesh_upstream_replica_pending",
            "Calls sent to the replica and not yet answered.",
        ),
        latency: GaugeVec::new(
            Opts::new(
                "mesh_upstream_replica_latency_seconds",
                "The balancer's peak-EWMA latency estimate for the replica.",
            ),
            &["service", "replica"],
        )
        .expect("valid metric"),
    })
});

/// Adds a service's replicas to the per-replica gauges.
pub(crate) fn watch_replicas(service: &'static str, members: &Members, rotation: &Rotation) {
    let mut sources = REPLICAS.sources.lock().unwrap_or_else(|p| p.into_inner());
    sources.retain(|s| s.members.strong_count() > 0);
    sources.push(Source {
        service,
        members: members.downgrade(),
        rotation: rotation.downgrade(),
    });
}

impl Collector for Replicas {
    fn desc(&self) -> Vec<&Desc> {
        [&self.healthy, &self.ejected, &self.in_rotation, &self.pending]
            .into_iter()
            .flat_map(|g| g.desc())
            .chain(self.latency.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // One scrape at a time: the gauges are reset and refilled.
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        for g in [&self.healthy, &self.ejected, &self.in_rotation, &self.pending] {
            g.reset();
        }
        self.latency.reset();
        for source in sources.iter() {
            let Some(members) = source.members.upgrade() else {
                continue;
            };
            let members = members.read().unwrap_or_else(|p| p.into_inner()).clone();
            for m in &members {
                let labels = [source.service, m.address.as_str()];
                self.healthy.with_label_values(&labels).set(m.healthy.into());
                self.ejected.with_label_values(&labels).set(m.ejected.into());
                self.in_rotation.with_label_values(&labels).set(m.in_rotation.into());
                // Every known replica has the series; only those in rotation
                // have calls and an estimate.
                self.pending.with_label_values(&labels).set(0);
            }
            let Some(rotation) = source.rotation.upgrade() else {
                continue;
            };
            let replicas = rotation.read().unwrap_or_else(|p| p.into_inner()).clone();
            for replica in replicas.iter() {
                let labels = [source.service, replica.address().as_ref()];
                self.pending.with_label_values(&labels).set(replica.in_flight() as i64);
                self.latency
                    .with_label_values(&labels)
                    .set(replica.latency().as_secs_f64());
            }
        }
        [&self.healthy, &self.ejected, &self.in_rotation, &self.pending]
            .into_iter()
            .flat_map(|g| g.collect())
            .chain(self.latency.collect())
            .collect()
    }
}
