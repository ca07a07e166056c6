//! Batched completions: workers hand how each attempt ended to one
//! completer per replica and go on to their next task; the completer
//! records them in one statement per batch.
//!
//! Batches form by themselves (group commit): the completer writes whatever
//! has arrived, up to `MAX_BATCH`, and while that write is in flight the next
//! batch gathers. A lone completion is written at once; under load a batch
//! holds what finished during one write. Watchers and waiting clients learn
//! of an end only after its batch has committed.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{Finished, Status, TaskStore};

/// The most ends one statement records.
pub(super) const MAX_BATCH: usize = 512;

/// How often a failed write is tried again before its tasks are left to
/// their leases (and run again once those expire).
const WRITE_TRIES: u32 = 3;

/// One attempt's end, with what its log lines name.
pub(super) struct Ended {
    pub finished: Finished,
    pub kind: String,
    pub attempt: u32,
    pub outcome: &'static str,
    /// For the metrics: the kind's registered name (or `unknown`), and how
    /// long the attempt ran.
    pub kind_label: &'static str,
    pub took: Duration,
    /// Keeps the task's lease renewed until its end is recorded (or given up).
    pub _held: super::held::HeldTask,
}

pub(super) async fn completer(store: TaskStore, worker: std::sync::Arc<str>, mut ends: mpsc::Receiver<Ended>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while ends.recv_many(&mut batch, MAX_BATCH).await > 0 {
        record(&store, &worker, &batch).await;
        batch.clear();
    }
}

async fn record(store: &TaskStore, worker: &str, batch: &[Ended]) {
    let finished: Vec<Finished> = batch.iter().map(|e| e.finished.clone()).collect();
    let mut tries = 0;
    let t0 = std::time::Instant::now();
    let recorded = loop {
        tries += 1;
        match store.finish_many(worker, &finished).await {
            Ok(recorded) => {
                tracing::debug!(
                    count = batch.len(),
                    took_us = t0.elapsed().as_micros() as u64,
                    "recorded"
                );
                break recorded;
            }
            Err(err) if tries < WRITE_TRIES => {
                tracing::warn!(error = %err, count = batch.len(), "cannot record tasks' ends; trying again");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await;
            }
            Err(err) => {
                for e in batch {
                    tracing::error!(
                        task = e.finished.id,
                        kind = %e.kind,
                        attempt = e.attempt,
                        error = %err,
                        "cannot record the task's end; its lease will expire and it will run again"
                    );
                }
                return;
            }
        }
    };
    for e in batch {
        let f = &e.finished;
        if recorded.contains(&f.id) {
            let outcome = if e.outcome == "timed out" {
                "timed_out"
            } else {
                e.outcome
            };
            crate::metrics::attempt(e.kind_label, outcome, e.took);
        }
        if !recorded.contains(&f.id) {
            tracing::warn!(task = f.id, kind = %e.kind, attempt = e.attempt, "task ended, but its lease had been lost; result dropped");
        } else if f.status == Status::Queued {
            tracing::info!(task = f.id, kind = %e.kind, attempt = e.attempt, outcome = e.outcome, "attempt ended; retry scheduled");
        } else {
            tracing::info!(
                task = f.id,
                kind = %e.kind,
                attempt = e.attempt,
                outcome = e.outcome,
                status = f.status.as_str(),
                "task finished"
            );
        }
    }
}
