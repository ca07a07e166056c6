//! The worker pool: N worker loops per process over one local queue, fed
//! by one claimer and drained into one completer.
//!
//! - [`local`]: the claimer takes ready tasks in batches into a small local
//!   queue, sized by how many workers are idle and how short tasks are;
//! - the workers (here) run each task under its own lease; they enforce its
//!   time limit, stop it on a cancel request, write reported progress, and
//!   hand how it ended to
//! - [`complete`]: one writer that records ends in batches;
//! - [`held`]: the keeper, which renews every running task's lease in one
//!   statement and looks for cancels asked for through other replicas.
//!
//! If the process dies, the leases run out and any replica's reaper queues
//! the tasks again. On shutdown, the claimer stops and gives back what no
//! worker started, running tasks get a grace period, and whatever is still
//! unfinished after it is put back.

mod complete;
mod held;
mod local;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::kinds::{Pools, Registry, TaskContext};
use crate::store::{Backoff, Finished, Outcome, Task, TaskStore};
use complete::Ended;
use held::{Held, Signal};
use local::LocalQueue;

/// How often at most a running task's progress is written.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Concurrent tasks in this process (0: this replica only serves the API).
    pub workers: usize,
    /// The most claimed tasks per worker in the local queue (at least 1: then
    /// a task is claimed only for an idle worker).
    pub claim_batch: usize,
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
    claimer: Option<tokio::task::JoinHandle<()>>,
    completer: Option<tokio::task::JoinHandle<()>>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    reaper: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    store: TaskStore,
    worker_id: Arc<str>,
    grace: Duration,
}

impl Pool {
    pub fn start(store: TaskStore, registry: Registry, config: WorkerConfig) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        // Unique per process start, and the `worker` of every task this
        // replica claims: a restarted process must not renew or finish the
        // claims of its previous life.
        let worker_id: Arc<str> = format!("{}-{}", std::process::id(), mesh_sql::now_ms()).into();
        let pools = Pools::new(config.blocking_threads, config.cpu_threads);
        let local = LocalQueue::new(config.workers, config.claim_batch);
        let held = Arc::new(Held::default());
        let (ends_tx, ends_rx) = mpsc::channel(complete::MAX_BATCH * 2);
        let mut workers = JoinSet::new();
        for n in 0..config.workers {
            let w = Worker {
                store: store.clone(),
                registry: registry.clone(),
                pools: pools.clone(),
                local: local.clone(),
                held: held.clone(),
                ends: ends_tx.clone(),
                name: format!("{worker_id}-{n}"),
                worker_id: worker_id.clone(),
                config: config.clone(),
                stop: stop_rx.clone(),
            };
            workers.spawn(w.run());
        }
        drop(ends_tx);
        let (claimer, completer, keeper) = if config.workers > 0 {
            (
                Some(tokio::spawn(local::claimer(
                    local,
                    store.clone(),
                    config.clone(),
                    worker_id.clone(),
                    stop_rx.clone(),
                ))),
                Some(tokio::spawn(complete::completer(
                    store.clone(),
                    worker_id.clone(),
                    ends_rx,
                ))),
                Some(tokio::spawn(held::keeper(
                    store.clone(),
                    held,
                    worker_id.clone(),
                    config.lease,
                    config.cancel_poll,
                ))),
            )
        } else {
            (None, None, None)
        };
        let reaper = tokio::spawn(reap(store.clone(), config.clone(), stop_rx));
        tracing::info!(
            workers = config.workers,
            claim_batch = config.claim_batch,
            queues = %config.queues.join(","),
            lease_ms = config.lease.as_millis() as u64,
            "worker pool started"
        );
        Self {
            workers,
            claimer,
            completer,
            keeper,
            reaper,
            stop,
            store,
            worker_id,
            grace: config.shutdown_grace,
        }
    }

    /// Stops claiming and gives back the claimed tasks no worker started,
    /// waits up to the grace period for running tasks and their ends to be
    /// recorded, then puts back whatever is unfinished.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.reaper.abort();
        if let Some(claimer) = self.claimer.take() {
            let _ = claimer.await;
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        let drained =
            tokio::time::timeout_at(deadline, async { while self.workers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            self.workers.abort_all();
            while self.workers.join_next().await.is_some() {}
        }
        // Every worker is gone, so the completer's channel is closed: it
        // ends once it has recorded what they handed it.
        if let Some(completer) = self.completer.take() {
            let flush = deadline.max(tokio::time::Instant::now() + Duration::from_secs(5));
            if tokio::time::timeout_at(flush, completer).await.is_err() {
                tracing::error!("the tasks' ends were not all recorded in time; their leases will expire");
            }
        }
        // Nothing runs or waits to be recorded any more: no lease to keep.
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        if drained.is_err() {
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
    local: Arc<LocalQueue>,
    held: Arc<Held>,
    ends: mpsc::Sender<Ended>,
    /// This loop's name in log lines.
    name: String,
    /// The replica's claim identity (the tasks' `worker`).
    worker_id: Arc<str>,
    config: WorkerConfig,
    stop: watch::Receiver<bool>,
}

impl Worker {
    async fn run(self) {
        let local = self.local.clone();
        let mut stop = self.stop.clone();
        let stalled = self.config.lease / 2;
        while let Some((mut task, waited)) = local.next(&mut stop).await {
            if waited >= stalled {
                // The claimer stalled: too little of the lease is left to start it.
                local::give_back(
                    &self.store,
                    &self.worker_id,
                    vec![(task.id, task.attempts)],
                    "waited half its lease in the local queue",
                )
                .await;
                continue;
            }
            // A cancel asked for while it waited here: through this process,
            // noted (a note is only a hint: it is read again); through
            // another, read again if it waited a while.
            let noted = self.store.take_cancel_note(task.id);
            task.cancel_requested |=
                (noted || waited >= self.config.cancel_poll) && self.cancel_requested(task.id).await;
            self.execute(task).await;
        }
    }

    #[tracing::instrument(skip_all, fields(worker = %self.name, task = task.id, kind = %task.kind, attempt = task.attempts))]
    async fn execute(&self, task: Task) {
        tracing::info!("task started");
        // With tracing on, each attempt is the root of a trace of its own,
        // linked to the call that queued the task (whichever replica took
        // it, however long after).
        let mut span = mesh_common::otel::start_linked(
            format!("task {}", task.kind),
            mesh_common::otel::Kind::Consumer,
            task.traceparent
                .as_deref()
                .and_then(mesh_common::otel::Parent::of_traceparent),
        );
        if let Some(span) = &mut span {
            span.set("mesh.task.id", task.id);
            span.set("mesh.task.kind", task.kind.clone());
            span.set("mesh.task.attempt", i64::from(task.attempts));
        }
        let started = Instant::now();
        let started_ms = mesh_sql::now_ms();
        // Its lease is kept (see `held`) until its end is recorded.
        let mut held = self.held.hold(&task);
        let outcome = match self.registry.get(&task.kind) {
            // Cancelled while its previous worker ran it: do not start again.
            _ if task.cancel_requested => Outcome::Cancelled,
            None => Outcome::Failed {
                error: format!("unknown task kind {:?}", task.kind),
                timed_out: false,
            },
            Some(kind) => match self.supervise(&task, kind.as_ref(), &mut held).await {
                Some(outcome) => outcome,
                None => return, // lease lost: another worker owns the task now
            },
        };
        let took = started.elapsed();
        self.local.ran(took);
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
        if let Some(mut span) = span {
            span.set("mesh.task.outcome", label);
            if let Outcome::Failed { error, .. } = &outcome {
                span.fail(error.clone());
            }
            span.end();
        }
        let finished = match Finished::new(&task, outcome, self.config.backoff, started_ms, mesh_sql::now_ms()) {
            Ok(finished) => finished,
            Err(err) => {
                tracing::error!(error = %err, "cannot record the task's end; its lease will expire and it will run again");
                return;
            }
        };
        let ended = Ended {
            finished,
            kind: task.kind.clone(),
            attempt: task.attempts,
            outcome: label,
            kind_label: self.registry.get(&task.kind).map_or("unknown", |k| k.name()),
            took,
            _held: held,
        };
        if self.ends.send(ended).await.is_err() {
            tracing::error!("the completer has stopped; the task's lease will expire and it will run again");
        }
    }

    /// Runs one attempt while renewing the lease, enforcing the time limit,
    /// watching for cancellation and writing progress. `None`: lease lost.
    async fn supervise(
        &self,
        task: &Task,
        kind: &dyn crate::kinds::TaskKind,
        held: &mut held::HeldTask,
    ) -> Option<Outcome> {
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
        // The keeper renews its lease and learns of cancels through other
        // replicas (see `held`); a cancel through this process is seen at once.
        let mut kept = true;
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
                changed = held.signal.changed(), if kept => {
                    kept = changed.is_ok();
                    match *held.signal.borrow_and_update() {
                        Some(Signal::Cancel) => return Some(self.cancelled()),
                        Some(Signal::Lost) => {
                            tracing::warn!("lease lost; another worker owns this task now");
                            return None;
                        }
                        None => {}
                    }
                }
                // A cancel through this process is noticed at once.
                changed = changes.recv() => {
                    if matches!(changed, Ok(id) if id != task.id) {
                        continue;
                    }
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
                        && let Err(err) = self.store.progress(task, &self.worker_id, percent, &message).await
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
            Ok(n) => {
                crate::metrics::leases_expired(n);
                tracing::warn!(count = n, "tasks whose lease expired were queued again (or failed)")
            }
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
