//! The worker pool: N loops per process, each claiming one task at a time.
//!
//! A worker holds its task under a lease and renews it while the task runs;
//! if the process dies, the lease runs out and any replica's reaper queues the
//! task again. On shutdown, workers stop claiming, give running tasks a grace
//! period, and put back whatever is still unfinished.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::kinds::Registry;
use crate::store::{Outcome, Task, TaskStore};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Concurrent tasks in this process (0: this replica only serves the API).
    pub workers: usize,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How often an idle worker looks for tasks submitted through other replicas.
    pub poll: Duration,
    /// How long running tasks may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
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
        let mut workers = JoinSet::new();
        for n in 0..config.workers {
            let w = Worker {
                store: store.clone(),
                registry: registry.clone(),
                id: format!("{worker_id}-{n}"),
                config: config.clone(),
                stop: stop_rx.clone(),
            };
            workers.spawn(w.run());
        }
        let reaper = tokio::spawn(reap(store.clone(), config.lease, stop_rx));
        tracing::info!(
            workers = config.workers,
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
                Err(err) => {
                    tracing::error!(error = %err, "cannot put unfinished tasks back; their leases will expire")
                }
            }
        }
        tracing::info!("worker pool stopped");
    }
}

struct Worker {
    store: TaskStore,
    registry: Registry,
    id: String,
    config: WorkerConfig,
    stop: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        while !*self.stop.borrow() {
            match self.store.claim(&self.id, self.config.lease).await {
                Ok(Some(task)) => self.execute(task).await,
                Ok(None) => self.idle().await,
                Err(err) => {
                    tracing::warn!(worker = %self.id, error = %err, "cannot claim a task; retrying");
                    self.idle().await;
                }
            }
        }
    }

    /// Waits for a local submit, the poll interval, or shutdown.
    async fn idle(&mut self) {
        tokio::select! {
            () = self.store.submitted().notified() => {}
            () = tokio::time::sleep(self.config.poll) => {}
            _ = self.stop.changed() => {}
        }
    }

    #[tracing::instrument(skip_all, fields(worker = %self.id, task = task.id, kind = %task.kind, attempt = task.attempts))]
    async fn execute(&self, task: Task) {
        tracing::info!("task started");
        let outcome = match self.registry.get(&task.kind) {
            None => Outcome::Failed(format!("unknown task kind {:?}", task.kind)),
            Some(kind) => {
                let run = kind.run(task.payload.clone());
                tokio::pin!(run);
                let mut renew = tokio::time::interval(self.config.lease / 3);
                renew.tick().await;
                loop {
                    tokio::select! {
                        result = &mut run => break match result {
                            Ok(value) => Outcome::Succeeded(value),
                            Err(message) => Outcome::Failed(message),
                        },
                        _ = renew.tick() => match self.store.renew(task.id, &self.id, self.config.lease).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!("lease lost; another worker owns this task now");
                                return;
                            }
                            Err(err) => tracing::warn!(error = %err, "cannot renew lease"),
                        },
                    }
                }
            }
        };
        let ok = matches!(outcome, Outcome::Succeeded(_));
        match self.store.finish(task.id, &self.id, outcome).await {
            Ok(true) => tracing::info!(succeeded = ok, "task finished"),
            Ok(false) => {
                tracing::warn!("task finished, but its lease had been lost; result dropped")
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot record the task's end; its lease will expire and it will run again")
            }
        }
    }
}

/// Every lease period, queues again the tasks whose worker stopped renewing.
async fn reap(store: TaskStore, lease: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval((lease / 2).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match store.requeue_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(requeued = n, "queued again tasks whose lease expired"),
            Err(err) => tracing::warn!(error = %err, "cannot check for expired leases"),
        }
    }
}
