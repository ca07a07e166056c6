//! The replica's local queue and its claimer.
//!
//! One claimer per replica takes ready tasks from the database in batches
//! (one statement for many tasks) and keeps them in a small local queue that
//! the workers pop from. How many it claims follows the workers:
//!
//! - it claims only when a worker is idle, or when the local queue has run
//!   down to half its prefetch;
//! - it claims for the idle workers, plus a prefetch of `p` tasks per worker,
//!   where `p` is what keeps the workers busy through the next claim's round
//!   trip: twice the claim's time over a task's run time (both moving
//!   averages), so long tasks are never prefetched (`p` = 0: claim only for
//!   an idle worker) and short ones are, up to `claim_batch - 1`;
//! - the local queue keeps the claim order (effective priority, then age),
//!   also across claims; at most `claim_batch` tasks per worker wait in it,
//!   so a task queued later with a higher priority waits behind at most
//!   `claim_batch × workers` claimed tasks per replica;
//! - a claimed task that waited longer than the hold time (a third of the
//!   lease, at most a second) goes back to the database for any replica, as
//!   does the whole local queue at shutdown; a worker that pops one that
//!   waited half its lease (the claimer stalled) gives it back too, so none
//!   starts near the end of its lease.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::WorkerConfig;
use crate::store::{Rank, Task, TaskStore};

/// A claimed task, where it stands in the claim order, and when it was claimed.
pub(super) struct Claimed {
    task: Task,
    rank: Rank,
    at: Instant,
}

/// Moving averages that size the prefetch.
#[derive(Default)]
struct Pace {
    /// How long one claim statement takes, in seconds.
    claim: Option<f64>,
    /// How long one task runs, in seconds.
    run: Option<f64>,
}

const EWMA_WEIGHT: f64 = 0.2;

fn ewma(slot: &mut Option<f64>, sample: Duration) {
    let x = sample.as_secs_f64();
    *slot = Some(slot.map_or(x, |old| old + EWMA_WEIGHT * (x - old)));
}

/// Tasks to prefetch per worker: enough to last twice a claim's round
/// trip, between 0 and `cap`. Unknown pace: none.
fn prefetch(claim: Option<f64>, run: Option<f64>, cap: usize) -> usize {
    match (claim, run) {
        (Some(claim), Some(run)) if run > 0.0 => ((2.0 * claim / run).floor() as usize).min(cap),
        (Some(_), Some(_)) => cap,
        _ => 0,
    }
}

/// How many tasks to claim now. Idle workers take buffered tasks first
/// (workers just woken for tasks already here still count as idle until
/// they take one); then: none while no worker lacks a task and the buffer
/// holds more than half its prefetch; else enough for the workers that lack
/// one and to refill the prefetch, never more than `claim_batch` per worker
/// in the buffer.
fn wanted(workers: usize, claim_batch: usize, idle: usize, buffered: usize, per_worker: usize) -> usize {
    let per_worker = per_worker.min(claim_batch.saturating_sub(1));
    let served = idle.min(buffered);
    let (lacking, left) = (idle - served, buffered - served);
    let prefetch = workers * per_worker;
    if lacking == 0 && left > prefetch / 2 {
        return 0;
    }
    (lacking + prefetch.saturating_sub(left)).min((workers * claim_batch).saturating_sub(buffered))
}

pub(super) struct LocalQueue {
    buffer: Mutex<VecDeque<Claimed>>,
    /// Workers waiting for a task.
    idle: AtomicUsize,
    /// Wakes workers: tasks were put in the buffer.
    work: Notify,
    /// Wakes the claimer: a worker went idle or the buffer ran low.
    want: Notify,
    pace: Mutex<Pace>,
    workers: usize,
    claim_batch: usize,
}

impl LocalQueue {
    pub fn new(workers: usize, claim_batch: usize) -> Arc<Self> {
        Arc::new(Self {
            buffer: Mutex::new(VecDeque::new()),
            idle: AtomicUsize::new(0),
            work: Notify::new(),
            want: Notify::new(),
            pace: Mutex::new(Pace::default()),
            workers,
            claim_batch: claim_batch.max(1),
        })
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, VecDeque<Claimed>> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn per_worker(&self) -> usize {
        let pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        prefetch(pace.claim, pace.run, self.claim_batch - 1)
    }

    /// A worker's next task and how long it waited here, waiting for one;
    /// `None` once `stop` is set.
    pub async fn next(&self, stop: &mut watch::Receiver<bool>) -> Option<(Task, Duration)> {
        loop {
            if *stop.borrow() {
                return None;
            }
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let popped = {
                let mut buffer = self.buffer();
                buffer.pop_front().map(|c| (c, buffer.len()))
            };
            if let Some((claimed, left)) = popped {
                if left <= (self.workers * self.per_worker()) / 2 {
                    self.want.notify_one();
                }
                return Some((claimed.task, claimed.at.elapsed()));
            }
            self.idle.fetch_add(1, Ordering::SeqCst);
            self.want.notify_one();
            tokio::select! {
                () = &mut notified => {}
                _ = stop.changed() => {}
            }
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A worker ran a task for `took` (from start to outcome).
    pub fn ran(&self, took: Duration) {
        ewma(&mut self.pace.lock().unwrap_or_else(|p| p.into_inner()).run, took);
    }

    fn wanted(&self) -> usize {
        let buffered = self.buffer().len();
        wanted(
            self.workers,
            self.claim_batch,
            self.idle.load(Ordering::SeqCst),
            buffered,
            self.per_worker(),
        )
    }

    /// Adds claimed tasks in claim order: a task claimed later with a higher
    /// priority goes ahead of those already waiting here.
    fn push(&self, tasks: Vec<(Rank, Task)>) {
        let at = Instant::now();
        let mut buffer = self.buffer();
        for (rank, task) in tasks {
            let at_rank = buffer.partition_point(|c| c.rank <= rank);
            buffer.insert(at_rank, Claimed { task, rank, at });
        }
        drop(buffer);
        self.work.notify_waiters();
    }

    /// Takes out the tasks that have waited at least `hold` (all of them
    /// with `Duration::ZERO`), as (id, the claim's attempt number).
    fn take_waiting(&self, hold: Duration) -> Vec<(i64, u32)> {
        let mut buffer = self.buffer();
        let mut out = Vec::new();
        buffer.retain(|c| {
            let stale = c.at.elapsed() >= hold;
            if stale {
                out.push((c.task.id, c.task.attempts));
            }
            !stale
        });
        out
    }

    fn is_empty(&self) -> bool {
        self.buffer().is_empty()
    }
}

/// Claims for the local queue until `stop`; then gives back what no worker
/// started.
pub(super) async fn claimer(
    local: Arc<LocalQueue>,
    store: TaskStore,
    config: WorkerConfig,
    worker: Arc<str>,
    mut stop: watch::Receiver<bool>,
) {
    let hold = hold_time(config.lease);
    while !*stop.borrow() {
        // Whatever the claimer does next, nothing waits here past the hold
        // time, so never near its lease.
        let stale = local.take_waiting(hold);
        if !stale.is_empty() {
            // Tasks ran longer than the pace said: stop prefetching until
            // finished tasks show they are short again.
            local.ran(hold);
            give_back(&store, &worker, stale, "waited too long in the local queue").await;
        }
        let n = local.wanted();
        if n == 0 {
            let want = local.want.notified();
            tokio::select! {
                () = want => {}
                () = tokio::time::sleep(hold) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let started = Instant::now();
        // While tasks wait here, an idle claimer still wakes within the hold time.
        let cap = (!local.is_empty()).then_some(hold);
        match store.claim(&worker, config.lease, &config.queues, n).await {
            Ok(tasks) if tasks.is_empty() => wait_for_work(&store, &config, cap, &mut stop).await,
            Ok(tasks) => {
                tracing::debug!(
                    wanted = n,
                    claimed = tasks.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "claimed"
                );
                ewma(
                    &mut local.pace.lock().unwrap_or_else(|p| p.into_inner()).claim,
                    started.elapsed(),
                );
                local.push(tasks);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim tasks; retrying");
                wait_for_work(&store, &config, cap, &mut stop).await;
            }
        }
    }
    let left = local.take_waiting(Duration::ZERO);
    give_back(&store, &worker, left, "its replica is shutting down").await;
}

/// How long a claimed task may wait in the local queue: a third of the
/// lease, at most a second.
pub(super) fn hold_time(lease: Duration) -> Duration {
    (lease / 3).min(Duration::from_secs(1))
}

/// Gives back claimed tasks no worker started: (id, the claim's attempt number).
pub(super) async fn give_back(store: &TaskStore, worker: &str, tasks: Vec<(i64, u32)>, why: &str) {
    if tasks.is_empty() {
        return;
    }
    match store.unclaim(worker, &tasks).await {
        Ok(n) => tracing::info!(
            count = n,
            why,
            "claimed tasks that had not started went back to the queue"
        ),
        Err(err) => {
            tracing::warn!(error = %err, count = tasks.len(), why, "cannot give back claimed tasks; their leases will expire")
        }
    }
}

/// The queue had nothing ready: waits for a submit here or an announcement
/// from another replica, the poll interval (or, if sooner, the time a
/// scheduled task becomes ready, or `cap`), or shutdown.
async fn wait_for_work(
    store: &TaskStore,
    config: &WorkerConfig,
    cap: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
) {
    if store.next_due_in().is_none()
        && let Err(err) = store.refresh_due().await
    {
        tracing::debug!(error = %err, "cannot look up the next scheduled task; polling");
    }
    let poll = cap.map_or(config.poll, |cap| cap.min(config.poll));
    let wait = store.next_due_in().map_or(poll, |due| due.min(poll));
    tokio::select! {
        () = store.submitted().notified() => {}
        () = tokio::time::sleep(wait) => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tasks_are_not_prefetched_and_short_ones_are_up_to_the_cap() {
        // Unknown pace: claim only for idle workers.
        assert_eq!(prefetch(None, None, 31), 0);
        assert_eq!(prefetch(Some(0.002), None, 31), 0);
        // A 100 ms task and a 2 ms claim: no prefetch.
        assert_eq!(prefetch(Some(0.002), Some(0.1), 31), 0);
        // A task as long as a claim: two per worker.
        assert_eq!(prefetch(Some(0.002), Some(0.002), 31), 2);
        // A no-op task: as many as allowed.
        assert_eq!(prefetch(Some(0.002), Some(0.000_01), 31), 31);
        assert_eq!(prefetch(Some(0.002), Some(0.0), 31), 31);
    }

    #[test]
    fn claims_follow_idle_workers_and_never_exceed_the_cap() {
        // No prefetch: one task per idle worker, nothing while all are busy.
        assert_eq!(wanted(4, 32, 3, 0, 0), 3);
        assert_eq!(wanted(4, 32, 0, 0, 0), 0);
        assert_eq!(wanted(4, 32, 2, 1, 0), 1);
        // Woken workers that have not yet taken the tasks pushed for them.
        assert_eq!(wanted(4, 32, 4, 4, 0), 0);
        assert_eq!(wanted(4, 32, 4, 124, 31), 0);
        // Prefetch 10 per worker: fill to idle + 40, refill at half.
        assert_eq!(wanted(4, 32, 4, 0, 10), 44);
        assert_eq!(wanted(4, 32, 0, 21, 10), 0);
        assert_eq!(wanted(4, 32, 0, 20, 10), 20);
        // However fast tasks are, at most claim_batch per worker wait.
        assert_eq!(wanted(4, 32, 4, 0, 1000), 128);
        assert_eq!(wanted(4, 32, 0, 0, 1000), 124);
        assert_eq!(wanted(4, 1, 4, 0, 1000), 4);
        assert_eq!(wanted(4, 1, 0, 0, 1000), 0);
    }
}
