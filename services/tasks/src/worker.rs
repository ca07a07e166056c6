//! The worker pool: N loops per process, each claiming one task at a time
//! from the queues this replica serves.
//!
//! A worker holds its task under a lease and renews it while the task runs;
//! if the process dies, the lease runs out and any replica's reaper queues the
//! task again. While a task runs, its worker also enforces the task's time
//! limit, watches for a cancel request, and writes reported progress. On
//! shutdown, workers stop claiming, give running tasks a grace period, and put
//! back whatever is still unfinished.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::kinds::{Pools, Registry, TaskContext};
use crate::store::{Backoff, Lease, Outcome, Status, Task, TaskStore};

/// How often at most a running task's progress is written.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Concurrent tasks in this process (0: this replica only serves the API).
    pub workers: usize,
    /// The queues this replica's workers take tasks from.
    pub queues: Vec<String>,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How often an idle worker looks for tasks submitted through other replicas.
    pub poll: Duration,
    /// How often a running task's cancel flag is checked (besides local notice).
    pub cancel_poll: Duration,
    /// How long running tasks may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
    pub backoff: Backoff,
    /// Priority aging step: a ready task gains one priority level per step.
    pub aging: Duration,
    /// Ended tasks are deleted this long after they finished.
    pub retention: Duration,
    pub blocking_threads: usize,
    pub cpu_threads: usize,
}

pub struct Pool {
    workers: JoinSet<()>,
    reaper: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    store: TaskStore,
    worker_id: Arc<str>,
    grace: Duration,
}

impl Pool {
    pub fn start(store: TaskStore, registry: Registry, config: WorkerConfig) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        // Unique per process start: a restarted process must not renew or finish
        // the claims of its previous life.
        let worker_id: Arc<str> = format!("{}-{}", std::process::id(), mesh_sql::now_ms()).into();
        let pools = Pools::new(config.blocking_threads, config.cpu_threads);
        let mut workers = JoinSet::new();
        for n in 0..config.workers {
            let w = Worker {
                store: store.clone(),
                registry: registry.clone(),
                pools: pools.clone(),
                id: format!("{worker_id}-{n}"),
                config: config.clone(),
                stop: stop_rx.clone(),
            };
            workers.spawn(w.run());
        }
        let reaper = tokio::spawn(reap(store.clone(), config.clone(), stop_rx));
        tracing::info!(
            workers = config.workers,
            queues = %config.queues.join(","),
            lease_ms = config.lease.as_millis() as u64,
            "worker pool started"
        );
        Self {
            workers,
            reaper,
            stop,
            store,
            worker_id,
            grace: config.shutdown_grace,
        }
    }

    /// Stops claiming, waits up to the grace period for running tasks, then
    /// puts back whatever is unfinished.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.reaper.abort();
        let drained =
            tokio::time::timeout(self.grace, async { while self.workers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            self.workers.abort_all();
            while self.workers.join_next().await.is_some() {}
            match self.store.release(&self.worker_id).await {
                Ok(0) => {}
                Ok(released) => tracing::warn!(released, "put unfinished tasks back in the queue"),
                Err(err) => tracing::error!(error = %err, "cannot put unfinished tasks back; their leases will expire"),
            }
        }
        tracing::info!("worker pool stopped");
    }
}

struct Worker {
    store: TaskStore,
    registry: Registry,
    pools: Pools,
    id: String,
    config: WorkerConfig,
    stop: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        while !*self.stop.borrow() {
            match self.store.claim(&self.id, self.config.lease, &self.config.queues).await {
                Ok(Some(task)) => self.execute(task).await,
                Ok(None) => self.idle().await,
                Err(err) => {
                    tracing::warn!(worker = %self.id, error = %err, "cannot claim a task; retrying");
                    self.idle().await;
                }
            }
        }
    }

    /// Waits for a local submit, the poll interval (or, if sooner, the time
    /// a task scheduled here becomes ready), or shutdown.
    async fn idle(&mut self) {
        if self.store.next_due_in().is_none()
            && let Err(err) = self.store.refresh_due().await
        {
            tracing::debug!(error = %err, "cannot look up the next scheduled task; polling");
        }
        let wait = self
            .store
            .next_due_in()
            .map_or(self.config.poll, |due| due.min(self.config.poll));
        tokio::select! {
            () = self.store.submitted().notified() => {}
            () = tokio::time::sleep(wait) => {}
            _ = self.stop.changed() => {}
        }
    }

    #[tracing::instrument(skip_all, fields(worker = %self.id, task = task.id, kind = %task.kind, attempt = task.attempts))]
    async fn execute(&self, task: Task) {
        tracing::info!("task started");
        let outcome = match self.registry.get(&task.kind) {
            // Cancelled while its previous worker ran it: do not start again.
            _ if task.cancel_requested => Outcome::Cancelled,
            None => Outcome::Failed {
                error: format!("unknown task kind {:?}", task.kind),
                timed_out: false,
            },
            Some(kind) => match self.supervise(&task, kind.as_ref()).await {
                Some(outcome) => outcome,
                None => return, // lease lost: another worker owns the task now
            },
        };
        // A cancel that arrived while a failing attempt ended wins over a retry.
        let outcome = match outcome {
            Outcome::Failed { .. } if self.cancel_requested(task.id).await => Outcome::Cancelled,
            other => other,
        };
        let label = match &outcome {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed { timed_out: true, .. } => "timed out",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
        };
        match self.store.finish(&task, &self.id, outcome, self.config.backoff).await {
            Ok(Some(Status::Queued)) => tracing::info!(outcome = label, "attempt ended; retry scheduled"),
            Ok(Some(status)) => tracing::info!(outcome = label, status = status.as_str(), "task finished"),
            Ok(None) => tracing::warn!("task ended, but its lease had been lost; result dropped"),
            Err(err) => {
                tracing::error!(error = %err, "cannot record the task's end; its lease will expire and it will run again")
            }
        }
    }

    /// Runs one attempt while renewing the lease, enforcing the time limit,
    /// watching for cancellation and writing progress. `None`: lease lost.
    async fn supervise(&self, task: &Task, kind: &dyn crate::kinds::TaskKind) -> Option<Outcome> {
        let (progress_tx, mut progress_rx) = watch::channel(None);
        let ctx = TaskContext::new(task.id, task.attempts, self.pools.clone(), progress_tx);
        let run = kind.run(task.payload.clone(), &ctx);
        tokio::pin!(run);
        let limit = task.timeout_ms.map(|ms| Duration::from_millis(ms.max(1) as u64));
        let timed_out = async {
            match limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timed_out);
        let mut renew = tokio::time::interval(self.config.lease / 3);
        renew.tick().await;
        let mut cancel_poll = tokio::time::interval(self.config.cancel_poll);
        cancel_poll.tick().await;
        let mut changes = self.store.subscribe();
        let mut progress_open = true;
        // Progress is written at most every PROGRESS_EVERY, however often
        // the task reports; the latest report wins.
        let mut progress_pending = false;
        let mut next_progress_write = tokio::time::Instant::now();
        loop {
            tokio::select! {
                result = &mut run => return Some(match result {
                    Ok(value) => Outcome::Succeeded(value),
                    Err(error) => Outcome::Failed { error, timed_out: false },
                }),
                () = &mut timed_out => {
                    let ms = limit.map_or(0, |l| l.as_millis());
                    tracing::warn!(limit_ms = ms as u64, "time limit passed; abandoning the attempt");
                    return Some(Outcome::Failed { error: format!("timed out after {ms} ms"), timed_out: true });
                }
                _ = renew.tick() => match self.store.renew(task.id, &self.id, self.config.lease).await {
                    Ok(Lease::Held { cancel_requested: true }) => return Some(self.cancelled()),
                    Ok(Lease::Held { .. }) => {}
                    Ok(Lease::Lost) => {
                        tracing::warn!("lease lost; another worker owns this task now");
                        return None;
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot renew lease"),
                },
                // A cancel through this process is noticed at once; one
                // through another replica at the next poll.
                changed = changes.recv() => {
                    if matches!(changed, Ok(id) if id != task.id) {
                        continue;
                    }
                    if self.cancel_requested(task.id).await {
                        return Some(self.cancelled());
                    }
                }
                _ = cancel_poll.tick() => {
                    if self.cancel_requested(task.id).await {
                        return Some(self.cancelled());
                    }
                }
                changed = progress_rx.changed(), if progress_open => {
                    progress_open = changed.is_ok();
                    progress_pending |= progress_open;
                }
                () = tokio::time::sleep_until(next_progress_write), if progress_pending => {
                    progress_pending = false;
                    next_progress_write = tokio::time::Instant::now() + PROGRESS_EVERY;
                    let report = progress_rx.borrow_and_update().clone();
                    if let Some((percent, message)) = report
                        && let Err(err) = self.store.progress(task.id, &self.id, percent, &message).await
                    {
                        tracing::warn!(error = %err, "cannot record progress");
                    }
                }
            }
        }
    }

    async fn cancel_requested(&self, id: i64) -> bool {
        self.store.cancel_requested(id).await.unwrap_or(false)
    }

    fn cancelled(&self) -> Outcome {
        tracing::info!("cancel requested; stopping the attempt");
        Outcome::Cancelled
    }
}

/// Housekeeping every replica shares: queues again tasks whose worker stopped
/// renewing its lease, ages waiting tasks, purges old results.
async fn reap(store: TaskStore, config: WorkerConfig, mut stop: watch::Receiver<bool>) {
    let every = (config.lease / 2)
        .min(config.aging / 2)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match store.requeue_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "tasks whose lease expired were queued again (or failed)"),
            Err(err) => tracing::warn!(error = %err, "cannot check for expired leases"),
        }
        if let Err(err) = store.age(config.aging).await {
            tracing::warn!(error = %err, "cannot age waiting tasks");
        }
        if last_purge.elapsed() >= (config.retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(60)) {
            last_purge = tokio::time::Instant::now();
            match store.purge(config.retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "purged ended tasks past their retention"),
                Err(err) => tracing::warn!(error = %err, "cannot purge old tasks"),
            }
        }
    }
}
