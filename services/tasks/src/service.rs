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
use crate::store::{self, Task, TaskStore};

/// How often a watcher re-reads its task, to see changes made by other replicas.
const WATCH_POLL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct TasksApi {
    store: TaskStore,
    registry: Registry,
    /// Flips to true at shutdown, so open watch streams end and do not hold
    /// the server's graceful stop hostage.
    stopping: watch::Receiver<bool>,
}

impl TasksApi {
    pub fn new(store: TaskStore, registry: Registry, stopping: watch::Receiver<bool>) -> Self {
        Self {
            store,
            registry,
            stopping,
        }
    }
}

fn status_to_proto(s: store::Status) -> pb::TaskStatus {
    match s {
        store::Status::Queued => pb::TaskStatus::Queued,
        store::Status::Running => pb::TaskStatus::Running,
        store::Status::Succeeded => pb::TaskStatus::Succeeded,
        store::Status::Failed => pb::TaskStatus::Failed,
        store::Status::Cancelled => pb::TaskStatus::Cancelled,
    }
}

fn status_from_proto(raw: i32) -> Result<Option<store::Status>, TaskError> {
    let status = pb::TaskStatus::try_from(raw)
        .map_err(|_| TaskError::invalid("status", format!("unknown task status {raw}")))?;
    Ok(match status {
        pb::TaskStatus::Unspecified => None,
        pb::TaskStatus::Queued => Some(store::Status::Queued),
        pb::TaskStatus::Running => Some(store::Status::Running),
        pb::TaskStatus::Succeeded => Some(store::Status::Succeeded),
        pb::TaskStatus::Failed => Some(store::Status::Failed),
        pb::TaskStatus::Cancelled => Some(store::Status::Cancelled),
    })
}

pub fn task_to_proto(t: Task) -> pb::Task {
    pb::Task {
        id: t.id,
        kind: t.kind,
        payload: Some(mesh_proto::json::to_proto(t.payload)),
        priority: t.priority,
        status: status_to_proto(t.status) as i32,
        attempts: t.attempts,
        result: t.result.map(mesh_proto::json::to_proto),
        error: t.error.unwrap_or_default(),
        create_time: Some(from_millis(t.created_ms)),
        start_time: t.started_ms.map(from_millis),
        finish_time: t.finished_ms.map(from_millis),
    }
}

#[tonic::async_trait]
impl TaskService for TasksApi {
    #[tracing::instrument(skip_all, fields(kind = %request.get_ref().kind, priority = request.get_ref().priority))]
    async fn submit_task(&self, request: Request<pb::SubmitTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let r = request.into_inner();
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
            .map(mesh_proto::json::from_proto)
            .unwrap_or(serde_json::Value::Null);
        kind.validate(&payload).map_err(|m| TaskError::invalid("payload", m))?;
        let task = self.store.submit(&r.kind, payload, r.priority).await?;
        tracing::info!(task = task.id, "task queued");
        Ok(Response::new(task_to_proto(task)))
    }

    #[tracing::instrument(skip_all, fields(task = request.get_ref().id))]
    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let task = self.store.get(request.get_ref().id).await?;
        Ok(Response::new(task_to_proto(task)))
    }

    #[tracing::instrument(skip_all, fields(task = request.get_ref().id))]
    async fn cancel_task(&self, request: Request<pb::CancelTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let id = request.get_ref().id;
        if id < 1 {
            return Err(TaskError::invalid("id", format!("must be a positive integer, got {id}")).into());
        }
        let task = self.store.cancel(id).await?;
        tracing::info!("task cancelled");
        Ok(Response::new(task_to_proto(task)))
    }

    #[tracing::instrument(skip_all)]
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

    type WatchTaskStream = ReceiverStream<Result<pb::Task, Status>>;

    #[tracing::instrument(skip_all, fields(task = request.get_ref().id))]
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
