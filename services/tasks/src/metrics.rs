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
//!   and `tasks_oldest_ready_age_seconds`; and per queue
//!   `tasks_queued_by_queue{queue,priority}`, for the [`QUEUES_SHOWN`]
//!   deepest queues, the rest summed under `queue="(other)"` (queue names
//!   are the callers': the label stays bounded whatever they send).
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
    by_queue: IntGaugeVec,
}

/// Queues shown by name in `tasks_queued_by_queue`; the others are summed.
pub const QUEUES_SHOWN: usize = 20;

/// The `queue` label of the queues not shown by name (not a valid queue name).
pub const OTHER_QUEUES: &str = "(other)";

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
    by_queue: register(
        IntGaugeVec::new(
            Opts::new(
                "tasks_queued_by_queue",
                "Tasks ready to run, by queue (the deepest 20; the rest as (other)) and priority.",
            ),
            &["queue", "priority"],
        )
        .expect("valid metric"),
    ),
});

/// Sets `tasks_queued_by_queue` from (queue, priority, ready tasks) rows.
pub fn queues(rows: &[(String, i32, u64)]) {
    let m = &*METRICS;
    m.by_queue.reset();
    for (queue, priority, n) in shown_queues(rows) {
        let priority = usize::try_from(priority).ok().and_then(|p| PRIORITIES.get(p)).copied();
        m.by_queue
            .with_label_values(&[queue.as_str(), priority.unwrap_or("unknown")])
            .set(n as i64);
    }
}

/// The rows by queue, the deepest [`QUEUES_SHOWN`] queues by name (ties by
/// name) and the rest summed per priority under [`OTHER_QUEUES`].
fn shown_queues(rows: &[(String, i32, u64)]) -> Vec<(String, i32, u64)> {
    let mut totals: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (queue, _, n) in rows {
        *totals.entry(queue).or_default() += n;
    }
    let mut deepest: Vec<(&str, u64)> = totals.into_iter().collect();
    deepest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: std::collections::BTreeSet<&str> = deepest.iter().take(QUEUES_SHOWN).map(|(q, _)| *q).collect();
    let mut out: std::collections::BTreeMap<(String, i32), u64> = std::collections::BTreeMap::new();
    for (queue, priority, n) in rows {
        let name = if shown.contains(queue.as_str()) {
            queue.clone()
        } else {
            OTHER_QUEUES.to_string()
        };
        *out.entry((name, *priority)).or_default() += n;
    }
    out.into_iter().map(|((q, p), n)| (q, p, n)).collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_queues_are_shown_and_the_rest_summed() {
        let mut rows: Vec<(String, i32, u64)> = (0..25).map(|i| (format!("q{i:02}"), 1, 1)).collect();
        rows.push(("mail".into(), 3, 5));
        rows.push(("mail".into(), 7, 2));
        let shown = shown_queues(&rows);
        let names: std::collections::BTreeSet<&str> = shown.iter().map(|(q, _, _)| q.as_str()).collect();
        assert_eq!(names.len(), QUEUES_SHOWN + 1, "{names:?}");
        assert!(names.contains("mail") && names.contains(OTHER_QUEUES));
        // mail (7) and q00..q18 by name are shown; q19..q24 are summed.
        assert!(names.contains("q18") && !names.contains("q19"));
        assert!(shown.contains(&(OTHER_QUEUES.into(), 1, 6)));
        assert!(shown.contains(&("mail".into(), 7, 2)));
        assert_eq!(shown.iter().map(|r| r.2).sum::<u64>(), 32);
        assert!(shown_queues(&[]).is_empty());
    }
}
