//! `mesh.tasks.v1.TaskService`: proto <-> domain, plus the WatchTask stream.

use std::time::Duration;

use mesh_proto::tasks::v1 as pb;
use mesh_proto::tasks::v1::task_service_server::TaskService;
use mesh_proto::time::from_millis;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::TaskError;
use crate::kinds::Registry;
use crate::store::{self, NewTask, Task, TaskStore};

/// The furthest ahead a task can be scheduled.
const MAX_SCHEDULE_AHEAD_MS: i64 = 365 * 24 * 3600 * 1000;

/// How often a watcher re-reads its task, to see changes made by other replicas.
const WATCH_POLL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct TasksApi {
    store: TaskStore,
    registry: Registry,
    /// Flips to true at shutdown, so open watch streams end and do not hold
    /// the server's graceful stop hostage.
    stopping: watch::Receiver<bool>,
    /// The most tasks one `SubmitTasks` may carry (`--max-batch`).
    max_batch: usize,
}

impl TasksApi {
    pub fn new(store: TaskStore, registry: Registry, stopping: watch::Receiver<bool>, max_batch: usize) -> Self {
        Self {
            store,
            registry,
            stopping,
            max_batch,
        }
    }

    /// Checks one submit request against the registry (kind, payload) and
    /// turns it into the store's form.
    fn new_task(&self, r: pb::SubmitTaskRequest) -> Result<NewTask, TaskError> {
        let kind = self.registry.get(&r.kind).ok_or_else(|| {
            TaskError::invalid(
                "kind",
                format!(
                    "unknown task kind {:?}; known kinds: {}",
                    r.kind,
                    self.registry.names().join(", ")
                ),
            )
        })?;
        let payload = r
            .payload
            .clone()
            .map(mesh_proto::json::from_proto)
            .unwrap_or(serde_json::Value::Null);
        check_depth(&payload)?;
        kind.validate(&payload).map_err(|m| TaskError::invalid("payload", m))?;
        new_task(r, payload)
    }
}

/// The one mapping between the store's states and the proto's (exhaustive:
/// a new state must be given its proto value here).
fn status_to_proto(s: store::Status) -> pb::TaskStatus {
    match s {
        store::Status::Queued => pb::TaskStatus::Queued,
        store::Status::Running => pb::TaskStatus::Running,
        store::Status::Succeeded => pb::TaskStatus::Succeeded,
        store::Status::Failed => pb::TaskStatus::Failed,
        store::Status::Cancelled => pb::TaskStatus::Cancelled,
    }
}

/// A list filter: UNSPECIFIED means every state; the others read through
/// [`status_to_proto`] backwards.
fn status_from_proto(raw: i32) -> Result<Option<store::Status>, TaskError> {
    let unknown = || TaskError::invalid("status", format!("unknown task status {raw}"));
    let status = pb::TaskStatus::try_from(raw).map_err(|_| unknown())?;
    if status == pb::TaskStatus::Unspecified {
        return Ok(None);
    }
    store::Status::ALL
        .into_iter()
        .find(|s| status_to_proto(*s) == status)
        .map(Some)
        .ok_or_else(unknown)
}

pub fn task_to_proto(t: Task) -> pb::Task {
    pb::Task {
        id: t.id,
        kind: t.kind,
        // Bounded: a row stored before depth was limited must never make a
        // page undecodable for the client.
        payload: Some(mesh_proto::json::to_proto_bounded(t.payload)),
        priority: t.priority,
        status: status_to_proto(t.status) as i32,
        attempts: t.attempts,
        result: t.result.map(mesh_proto::json::to_proto_bounded),
        error: t.error.unwrap_or_default(),
        create_time: Some(from_millis(t.created_ms)),
        start_time: t.started_ms.map(from_millis),
        finish_time: t.finished_ms.map(from_millis),
        max_attempts: t.max_attempts,
        timeout: t
            .timeout_ms
            .and_then(|ms| prost_types::Duration::try_from(Duration::from_millis(ms as u64)).ok()),
        run_at: Some(from_millis(t.run_at_ms)),
        queue: t.queue,
        idempotency_key: t.idempotency_key.unwrap_or_default(),
        attempt_log: t
            .attempt_log
            .into_iter()
            .map(|a| pb::Attempt {
                number: a.number,
                start_time: Some(from_millis(a.started_ms)),
                finish_time: Some(from_millis(a.finished_ms)),
                error: a.error.unwrap_or_default(),
                timed_out: a.timed_out,
            })
            .collect(),
        progress_percent: t.progress_percent,
        progress_message: t.progress_message,
        cancel_requested: t.cancel_requested,
        detail: t.detail,
    }
}

/// Refuses a payload nested deeper than every hop can carry.
fn check_depth(payload: &serde_json::Value) -> Result<(), TaskError> {
    let depth = mesh_proto::json::depth(payload);
    if depth > mesh_proto::json::MAX_DEPTH {
        return Err(TaskError::invalid(
            "payload",
            format!(
                "nests arrays and objects {depth} levels deep; at most {}",
                mesh_proto::json::MAX_DEPTH
            ),
        ));
    }
    Ok(())
}

fn duration_from_proto(field: &'static str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, TaskError> {
    d.map(|d| Duration::try_from(d).map_err(|_| TaskError::invalid(field, "must not be negative")))
        .transpose()
}

/// What a submit asked for, as a SHA-256 over its fields as given (the
/// countdown as a duration, not the time it ends, so a retry matches).
/// Stored with an idempotency key to tell a retry from a different request.
fn fingerprint(r: &pb::SubmitTaskRequest, payload: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let millis = |d: &Option<prost_types::Duration>| d.map(|d| (d.seconds, d.nanos));
    // serde_json's maps are ordered by key, so equal payloads print equally.
    let fields = serde_json::json!({
        "kind": r.kind,
        "payload": payload,
        "priority": r.priority,
        "max_attempts": r.max_attempts.max(1),
        "timeout": millis(&r.timeout),
        "run_at": r.run_at.map(|t| (t.seconds, t.nanos)),
        "countdown": millis(&r.countdown),
        "queue": if r.queue.is_empty() { "default" } else { r.queue.as_str() },
    });
    Sha256::digest(fields.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Turns a submit request into the store's form, checking every field.
fn new_task(r: pb::SubmitTaskRequest, payload: serde_json::Value) -> Result<NewTask, TaskError> {
    let fingerprint = (!r.idempotency_key.is_empty()).then(|| fingerprint(&r, &payload));
    let countdown = duration_from_proto("countdown", r.countdown)?;
    let now = mesh_sql::now_ms();
    let run_at_ms = match (r.run_at, countdown) {
        (Some(_), Some(_)) => return Err(TaskError::invalid("run_at", "give run_at or countdown, not both")),
        (Some(at), None) => mesh_proto::time::to_millis(&at),
        (None, Some(c)) => now.saturating_add(i64::try_from(c.as_millis()).unwrap_or(i64::MAX)),
        (None, None) => 0,
    };
    if run_at_ms > now.saturating_add(MAX_SCHEDULE_AHEAD_MS) {
        let field = if countdown.is_some() { "countdown" } else { "run_at" };
        return Err(TaskError::invalid(field, "at most 365 days ahead"));
    }
    Ok(NewTask {
        kind: r.kind,
        payload,
        priority: r.priority,
        max_attempts: r.max_attempts.max(1),
        timeout: duration_from_proto("timeout", r.timeout)?,
        run_at_ms,
        submitted_ms: now,
        queue: if r.queue.is_empty() { "default".into() } else { r.queue },
        idempotency_key: Some(r.idempotency_key).filter(|k| !k.is_empty()),
        fingerprint,
        traceparent: None,
    })
}

#[tonic::async_trait]
impl TaskService for TasksApi {
    #[tracing::instrument(level = "debug", skip_all, fields(kind = %request.get_ref().kind, priority = request.get_ref().priority))]
    async fn submit_task(&self, request: Request<pb::SubmitTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let traceparent = mesh_common::rpc::CallTrace::of(&request);
        let mut new = self.new_task(request.into_inner())?;
        new.traceparent = traceparent;
        let (task, created) = self.store.submit(new).await?;
        if created {
            tracing::debug!(task = task.id, "task queued");
        } else {
            tracing::debug!(
                task = task.id,
                "idempotency key seen before; returning the existing task"
            );
        }
        Ok(Response::new(task_to_proto(task)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(tasks = request.get_ref().tasks.len()))]
    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        let traceparent = mesh_common::rpc::CallTrace::of(&request);
        let batch = request.into_inner().tasks;
        if batch.is_empty() {
            return Err(TaskError::invalid("tasks", "give at least one task").into());
        }
        if batch.len() > self.max_batch {
            return Err(TaskError::invalid(
                "tasks",
                format!(
                    "{} tasks; at most {} in one batch (--max-batch)",
                    batch.len(),
                    self.max_batch
                ),
            )
            .into());
        }
        let batch = batch
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let mut new = self.new_task(r).map_err(|e| e.in_batch(i))?;
                new.traceparent = traceparent.clone();
                Ok(new)
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        let done = self.store.submit_many(batch).await?;
        let created = done.iter().filter(|(_, created)| *created).count();
        tracing::debug!(created, repeated = done.len() - created, "batch queued");
        Ok(Response::new(pb::SubmitTasksResponse {
            tasks: done.into_iter().map(|(task, _)| task_to_proto(task)).collect(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task = request.get_ref().id))]
    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let task = self.store.get(request.get_ref().id).await?;
        Ok(Response::new(task_to_proto(task)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task = request.get_ref().id))]
    async fn cancel_task(&self, request: Request<pb::CancelTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let task = self.store.cancel(request.get_ref().id).await?;
        if task.status == store::Status::Cancelled {
            tracing::info!("queued task cancelled");
        } else {
            tracing::info!("running task asked to stop");
        }
        Ok(Response::new(task_to_proto(task)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let status = status_from_proto(r.status)?;
        let page = self.store.list(r.page_size, &r.page_token, status).await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page.tasks.into_iter().map(task_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task = request.get_ref().id))]
    async fn retry_task(&self, request: Request<pb::RetryTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let task = self.store.retry(request.get_ref().id).await?;
        tracing::info!("task queued again by RetryTask");
        Ok(Response::new(task_to_proto(task)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn queue_stats(
        &self,
        request: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<pb::QueueStatsResponse>, Status> {
        let queue = Some(request.get_ref().queue.as_str()).filter(|q| !q.is_empty());
        if let Some(q) = queue {
            store::validate_queue(q)?;
        }
        let s = self.store.stats(queue).await?;
        let age = s
            .oldest_queued_ms
            .map(|t| Duration::from_millis((mesh_sql::now_ms() - t).max(0) as u64))
            .and_then(|d| prost_types::Duration::try_from(d).ok());
        Ok(Response::new(pb::QueueStatsResponse {
            queued_by_priority: s.queued_by_priority.into_iter().collect(),
            queued: s.queued,
            scheduled: s.scheduled,
            running: s.running,
            succeeded: s.succeeded,
            failed: s.failed,
            cancelled: s.cancelled,
            oldest_queued_age: age,
        }))
    }

    type WatchTaskStream = ReceiverStream<Result<pb::Task, Status>>;

    #[tracing::instrument(level = "debug", skip_all, fields(task = request.get_ref().id))]
    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let id = request.get_ref().id;
        // Fail the call itself (not the stream) for a bad or unknown id.
        let first = self.store.get(id).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(watch_loop(self.store.clone(), first, tx, self.stopping.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends the task each time it changes, until it ends, the client goes away,
/// or the server shuts down.
async fn watch_loop(
    store: TaskStore,
    first: Task,
    tx: mpsc::Sender<Result<pb::Task, Status>>,
    mut stopping: watch::Receiver<bool>,
) {
    let id = first.id;
    let mut changes = store.subscribe();
    let mut task = first;
    let mut sent: Option<(store::Status, u32, i64)> = None;
    loop {
        let stamp = (task.status, task.attempts, task.updated_ms);
        let done = task.status.is_terminal();
        if sent != Some(stamp) {
            sent = Some(stamp);
            if tx.send(Ok(task_to_proto(task))).await.is_err() {
                return; // the client went away
            }
        }
        if done {
            return;
        }
        let deadline = tokio::time::sleep(WATCH_POLL);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                changed = changes.recv() => match changed {
                    Ok(changed) if changed != id => continue,
                    _ => break, // ours, or we lagged: re-read either way
                },
                () = &mut deadline => break,
                () = tx.closed() => return,
                _ = stopping.changed() => {
                    let _ = tx.send(Err(Status::unavailable("server shutting down; watch again"))).await;
                    return;
                }
            }
        }
        task = match store.get(id).await {
            Ok(t) => t,
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        };
    }
}
