//! The tasks a replica's workers are running (or whose ends wait to be
//! recorded), and the keeper that looks after all of them at once: one
//! statement renews their leases each third of the lease, and one query per
//! `--cancel-poll-ms` finds the ones whose cancel was asked for through
//! another replica. A task whose renewal no longer finds it (its lease ran
//! out and it was queued again) is told it is lost. Only these claims are
//! renewed: one the replica gave up on (an end it could not record, a
//! give-back that failed) runs out its lease and is queued again. Claimed
//! tasks in the local queue need none: they go back within a third of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{Task, TaskStore};

/// What the keeper tells a running task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Signal {
    /// Stop: a cancel was asked for.
    Cancel,
    /// Stop and record nothing: another claim owns the task now.
    Lost,
}

/// By (task id, the claim's attempt number): a run that lost its lease and
/// a new claim of the same task are told apart.
#[derive(Default)]
pub(super) struct Held {
    tasks: Mutex<Tasks>,
}

type Tasks = HashMap<(i64, u32), watch::Sender<Option<Signal>>>;

/// A running task's place in [`Held`]; leaving it (drop) ends the keeper's care.
pub(super) struct HeldTask {
    held: Arc<Held>,
    key: (i64, u32),
    pub signal: watch::Receiver<Option<Signal>>,
}

impl Drop for HeldTask {
    fn drop(&mut self) {
        self.held.lock().remove(&self.key);
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hold(self: &Arc<Self>, task: &Task) -> HeldTask {
        let (tx, rx) = watch::channel(None);
        let key = (task.id, task.attempts);
        self.lock().insert(key, tx);
        HeldTask {
            held: self.clone(),
            key,
            signal: rx,
        }
    }

    fn snapshot(&self) -> Vec<(i64, u32)> {
        self.lock().keys().copied().collect()
    }

    /// Tells task `id` (if it still runs the claim with `attempts`).
    fn signal(&self, id: i64, attempts: u32, signal: Signal) {
        if let Some(tx) = self.lock().get(&(id, attempts)) {
            tx.send_replace(Some(signal));
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Renews and watches every held task until aborted (by the pool, once its
/// workers are done: running tasks keep their leases through the shutdown
/// grace).
pub(super) async fn keeper(
    store: TaskStore,
    held: Arc<Held>,
    worker: Arc<str>,
    lease: Duration,
    cancel_poll: Duration,
) {
    let every = |period: Duration| tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut renew = every(lease / 3);
    let mut poll = every(cancel_poll);
    loop {
        tokio::select! {
            _ = renew.tick() => {
                // Only tasks held before the statement is sent are judged by
                // it: their claims had committed, so it finds them if it may.
                let before = held.snapshot();
                if before.is_empty() {
                    continue;
                }
                match store.renew_all(&worker, lease, &before).await {
                    Ok(renewed) => {
                        let renewed: HashMap<i64, (u32, bool)> =
                            renewed.into_iter().map(|(id, attempts, cancel)| (id, (attempts, cancel))).collect();
                        for (id, attempts) in before {
                            match renewed.get(&id) {
                                Some((a, true)) if *a == attempts => held.signal(id, attempts, Signal::Cancel),
                                Some((a, false)) if *a == attempts => {}
                                _ => held.signal(id, attempts, Signal::Lost),
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot renew the leases of running tasks"),
                }
            }
            _ = poll.tick() => {
                if held.is_empty() {
                    continue;
                }
                match store.cancels_requested(&worker).await {
                    Ok(cancels) => {
                        for (id, attempts) in cancels {
                            held.signal(id, attempts, Signal::Cancel);
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "cannot look for cancel requests"),
                }
            }
        }
    }
}
