//! The task queue's own metrics, beside the gRPC server's (see
//! `mesh_common::metrics`), on the admin listener's `GET /metrics`:
//!
//! - `tasks_attempts_total{kind,outcome}` and `tasks_attempt_seconds{kind}`:
//!   attempts this replica ran, counted once their end is recorded
//!   (`outcome`: succeeded, failed, timed_out, cancelled);
//! - `tasks_leases_expired_total`: tasks this replica's reaper found with
//!   an expired lease (their worker died or hung);
//! - read from the database at each scrape, for every queue together:
//!   `tasks_queued{priority}` (ready now), `tasks_scheduled` (ready later),
//!   `tasks_running`, `tasks_ended{status}` (kept until their retention),
//!   and `tasks_oldest_ready_age_seconds`.
//!
//! `kind` is one of the registered kinds (a stored task of any other kind is
//! `unknown`), so every label stays bounded.

use std::sync::LazyLock;
use std::time::Duration;

use mesh_common::metrics::register;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::store::{MAX_PRIORITY, MIN_PRIORITY, QueueStats};

struct Metrics {
    attempts: IntCounterVec,
    attempt_seconds: HistogramVec,
    leases_expired: IntCounter,
    queued: IntGaugeVec,
    scheduled: IntGauge,
    running: IntGauge,
    ended: IntGaugeVec,
    oldest_ready_age: prometheus::Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    attempts: register(
        IntCounterVec::new(
            Opts::new(
                "tasks_attempts_total",
                "Attempts run by this replica, by how they ended.",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric"),
    ),
    attempt_seconds: register(
        HistogramVec::new(
            HistogramOpts::new("tasks_attempt_seconds", "How long attempts ran on this replica.")
                .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
            &["kind"],
        )
        .expect("valid metric"),
    ),
    leases_expired: register(
        IntCounter::new(
            "tasks_leases_expired_total",
            "Tasks whose lease this replica's reaper found expired (queued again, or failed).",
        )
        .expect("valid metric"),
    ),
    queued: register(
        IntGaugeVec::new(
            Opts::new("tasks_queued", "Tasks ready to run, by priority (every queue)."),
            &["priority"],
        )
        .expect("valid metric"),
    ),
    scheduled: register(
        IntGauge::new(
            "tasks_scheduled",
            "Tasks queued to run later (countdowns, retry back-offs).",
        )
        .expect("valid metric"),
    ),
    running: register(IntGauge::new("tasks_running", "Tasks running (claimed by a replica).").expect("valid metric")),
    ended: register(
        IntGaugeVec::new(
            Opts::new("tasks_ended", "Ended tasks kept until their retention, by status."),
            &["status"],
        )
        .expect("valid metric"),
    ),
    oldest_ready_age: register(
        prometheus::Gauge::new(
            "tasks_oldest_ready_age_seconds",
            "How long the oldest ready task has waited (0: none waits).",
        )
        .expect("valid metric"),
    ),
});

/// An attempt of `kind` (a registered kind's name, or `unknown`) ended with
/// `outcome` after `took`, and its end was recorded.
pub fn attempt(kind: &'static str, outcome: &'static str, took: Duration) {
    METRICS.attempts.with_label_values(&[kind, outcome]).inc();
    METRICS
        .attempt_seconds
        .with_label_values(&[kind])
        .observe(took.as_secs_f64());
}

pub fn leases_expired(n: u64) {
    METRICS.leases_expired.inc_by(n);
}

/// Sets the queue's gauges from `stats` (read at `now_ms`).
pub fn queue(stats: &QueueStats, now_ms: i64) {
    let m = &*METRICS;
    for priority in MIN_PRIORITY..=MAX_PRIORITY {
        let n = stats.queued_by_priority.get(&priority).copied().unwrap_or(0);
        m.queued
            .with_label_values(&[PRIORITIES[priority as usize]])
            .set(n as i64);
    }
    m.scheduled.set(stats.scheduled as i64);
    m.running.set(stats.running as i64);
    m.ended.with_label_values(&["succeeded"]).set(stats.succeeded as i64);
    m.ended.with_label_values(&["failed"]).set(stats.failed as i64);
    m.ended.with_label_values(&["cancelled"]).set(stats.cancelled as i64);
    let age = stats.oldest_queued_ms.map_or(0, |at| (now_ms - at).max(0));
    m.oldest_ready_age.set(age as f64 / 1000.0);
}

const PRIORITIES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Makes every series exist (at zero) before the first task, so a scrape
/// shows them from the start.
pub fn init() {
    LazyLock::force(&METRICS);
}
