//! `/tasks`: submit, inspect, cancel and follow background tasks.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use mesh_proto::tasks::v1 as pb;
use mesh_proto::tasks::v1::task_service_client::TaskServiceClient;
use mesh_upstream::{CallContext, Kind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rfc3339;
use crate::error::AppError;
use crate::extract::{Call, IdempotencyKey, Json, Path, Query, parse_id};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    kind: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    priority: i32,
    /// Attempts before the task fails for good (default 1: no retries).
    #[serde(default)]
    max_attempts: u32,
    /// Time limit of each attempt.
    timeout_ms: Option<u64>,
    /// Not before this time (RFC 3339).
    run_at: Option<String>,
    /// Not before this many ms from now.
    countdown_ms: Option<u64>,
    #[serde(default)]
    queue: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    page_size: Option<i32>,
    page_token: Option<String>,
    status: Option<String>,
}

#[derive(Serialize)]
pub struct TaskJson {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub priority: i32,
    pub queue: String,
    pub status: &'static str,
    /// Why it is in its state ("cancelled while running", "attempt 1 of 3 failed; retrying in 812 ms", ...).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub progress: Value,
    pub cancel_requested: bool,
    pub attempt_log: Vec<Value>,
    pub created_at: Option<String>,
    pub run_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A task state's name in the gateway's JSON (`queued`, `succeeded`, ...):
/// the one place the gateway spells them. Query parameters are parsed back
/// through it too ([`parse_status`]).
pub fn status_name(status: pb::TaskStatus) -> &'static str {
    match status {
        pb::TaskStatus::Queued => "queued",
        pb::TaskStatus::Running => "running",
        pb::TaskStatus::Succeeded => "succeeded",
        pb::TaskStatus::Failed => "failed",
        pb::TaskStatus::Cancelled => "cancelled",
        pb::TaskStatus::Unspecified => "unknown",
    }
}

/// Every state a task can be in, in the proto's order (from 1: 0 is
/// `UNSPECIFIED`, which no task is in).
fn task_states() -> impl Iterator<Item = pb::TaskStatus> {
    (1..).map_while(|n| pb::TaskStatus::try_from(n).ok())
}

/// The state named `name` in the gateway's JSON.
fn parse_status(name: &str) -> Result<pb::TaskStatus, AppError> {
    task_states().find(|s| status_name(*s) == name).ok_or_else(|| {
        let names: Vec<&str> = task_states().map(status_name).collect();
        AppError::invalid(format!("status: {name:?} is not one of {}", names.join(", ")))
    })
}

impl From<pb::Task> for TaskJson {
    fn from(t: pb::Task) -> Self {
        let status = status_name(t.status());
        Self {
            id: t.id,
            kind: t.kind,
            payload: t.payload.map(mesh_proto::json::from_proto).unwrap_or(Value::Null),
            priority: t.priority,
            queue: t.queue,
            status,
            detail: t.detail,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            timeout_ms: t
                .timeout
                .and_then(|d| std::time::Duration::try_from(d).ok())
                .map(|d| d.as_millis() as u64),
            result: t.result.map(mesh_proto::json::from_proto),
            error: Some(t.error).filter(|e| !e.is_empty()),
            progress: serde_json::json!({"percent": t.progress_percent, "message": t.progress_message}),
            cancel_requested: t.cancel_requested,
            attempt_log: t
                .attempt_log
                .into_iter()
                .map(|a| {
                    serde_json::json!({
                        "number": a.number,
                        "started_at": rfc3339(a.start_time),
                        "finished_at": rfc3339(a.finish_time),
                        "error": Some(a.error).filter(|e| !e.is_empty()),
                        "timed_out": a.timed_out,
                    })
                })
                .collect(),
            created_at: rfc3339(t.create_time),
            run_at: rfc3339(t.run_at),
            started_at: rfc3339(t.start_time),
            finished_at: rfc3339(t.finish_time),
        }
    }
}

/// Queues a task; answers 202 with its id and where to follow it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn submit(
    State(state): State<AppState>,
    call: Call,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<SubmitBody>,
) -> Result<Response, AppError> {
    let run_at = body
        .run_at
        .as_deref()
        .map(|s| {
            s.parse::<prost_types::Timestamp>()
                .map_err(|_| AppError::invalid(format!("run_at: {s:?} is not an RFC 3339 time")))
        })
        .transpose()?;
    let depth = mesh_proto::json::depth(&body.payload);
    if depth > mesh_proto::json::MAX_DEPTH {
        return Err(AppError::invalid(format!(
            "payload: nests arrays and objects {depth} levels deep; at most {}",
            mesh_proto::json::MAX_DEPTH
        )));
    }
    let message = pb::SubmitTaskRequest {
        kind: body.kind,
        payload: Some(mesh_proto::json::to_proto(body.payload)),
        priority: body.priority,
        max_attempts: body.max_attempts,
        timeout: body
            .timeout_ms
            .and_then(|ms| prost_types::Duration::try_from(Duration::from_millis(ms)).ok()),
        run_at,
        countdown: body
            .countdown_ms
            .and_then(|ms| prost_types::Duration::try_from(Duration::from_millis(ms)).ok()),
        queue: body.queue,
        idempotency_key: key,
    };
    let task = submit_message(&state, &call, message).await?;
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"task_id": task.id, "status": status_name(task.status())})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/tasks/{}", task.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Queues a plain task (no retries, limits or schedule).
pub async fn submit_task(
    state: &AppState,
    call: &Call,
    kind: String,
    payload: Value,
    priority: i32,
) -> Result<pb::Task, AppError> {
    let message = pb::SubmitTaskRequest {
        kind,
        payload: Some(mesh_proto::json::to_proto(payload)),
        priority,
        ..Default::default()
    };
    submit_message(state, call, message).await
}

async fn submit_message(state: &AppState, call: &Call, message: pb::SubmitTaskRequest) -> Result<pb::Task, AppError> {
    // Retried only with an idempotency key: without one, a submit whose
    // answer was lost may have queued the task, and a retry would queue it twice.
    let kind = if message.idempotency_key.is_empty() {
        Kind::Write
    } else {
        Kind::IdempotentWrite
    };
    Ok(state
        .tasks
        .unary(call, kind, message, TaskServiceClient::submit_task)
        .await?)
}

/// `POST /tasks/{id}/retry`: queues a failed or cancelled task again.
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn retry(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskJson>, AppError> {
    let id = parse_id(&id, "id")?;
    let task = state
        .tasks
        .unary(
            &call,
            Kind::Write,
            pb::RetryTaskRequest { id },
            TaskServiceClient::retry_task,
        )
        .await?;
    Ok(axum::Json(task.into()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    queue: Option<String>,
}

/// Queue depth as JSON (also part of `/overview`).
pub fn stats_json(s: pb::QueueStatsResponse) -> Value {
    let by_priority: serde_json::Map<String, Value> = s
        .queued_by_priority
        .into_iter()
        .map(|(p, n)| (p.to_string(), n.into()))
        .collect();
    let oldest = s
        .oldest_queued_age
        .and_then(|d| Duration::try_from(d).ok())
        .map(|d| d.as_millis() as u64);
    serde_json::json!({
        "queued": s.queued,
        "queued_by_priority": by_priority,
        "scheduled": s.scheduled,
        "running": s.running,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "oldest_queued_age_ms": oldest,
    })
}

/// `GET /tasks/stats[?queue=]`: how deep the queues are.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn stats(
    State(state): State<AppState>,
    call: Call,
    Query(params): Query<StatsParams>,
) -> Result<axum::Json<Value>, AppError> {
    let message = pb::QueueStatsRequest {
        queue: params.queue.unwrap_or_default(),
    };
    let s = state
        .tasks
        .unary(&call, Kind::Read, message, TaskServiceClient::queue_stats)
        .await?;
    Ok(axum::Json(stats_json(s)))
}

#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskJson>, AppError> {
    let id = parse_id(&id, "id")?;
    let task = state
        .tasks
        .unary(
            &call,
            Kind::Read,
            pb::GetTaskRequest { id },
            TaskServiceClient::get_task,
        )
        .await?;
    Ok(axum::Json(task.into()))
}

#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskJson>, AppError> {
    let id = parse_id(&id, "id")?;
    let task = state
        .tasks
        .unary(
            &call,
            Kind::Write,
            pb::CancelTaskRequest { id },
            TaskServiceClient::cancel_task,
        )
        .await?;
    Ok(axum::Json(task.into()))
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    call: Call,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Value>, AppError> {
    let status = params.status.as_deref().map(parse_status).transpose()?;
    let page = {
        let message = pb::ListTasksRequest {
            page_size: params.page_size.unwrap_or(0),
            page_token: params.page_token.unwrap_or_default(),
            status: status.unwrap_or(pb::TaskStatus::Unspecified) as i32,
        };
        state
            .tasks
            .unary(&call, Kind::Read, message, TaskServiceClient::list_tasks)
            .await?
    };
    let tasks: Vec<TaskJson> = page.tasks.into_iter().map(TaskJson::from).collect();
    Ok(axum::Json(
        serde_json::json!({"tasks": tasks, "next_page_token": page.next_page_token}),
    ))
}

/// The longest an events stream stays open.
const WATCH_LIMIT: Duration = Duration::from_secs(3600);

/// Server-sent events: one `task` event per state change, fed by `WatchTask`,
/// until the task ends. A failure mid-stream becomes an `error` event.
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn events(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let id = parse_id(&id, "id")?;
    let stream = watch(&state, &call.with_timeout(WATCH_LIMIT), id).await?;
    // End the stream when the gateway shuts down, so it does not wait for it.
    let mut stopping = state.stopping.subscribe();
    let stream = stream.take_until(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    let service = state.tasks.upstream().name();
    let events = stream.map(move |item| {
        Ok(match item {
            Ok(task) => Event::default()
                .event("task")
                .json_data(TaskJson::from(task))
                .unwrap_or_else(|_| Event::default().event("error").data("cannot encode task")),
            Err(status) => {
                let (_, code, message) = AppError::Upstream { service, status }.parts();
                Event::default()
                    .event("error")
                    .json_data(serde_json::json!({"error": {"code": code, "message": message}}))
                    .unwrap_or_else(|_| Event::default().event("error"))
            }
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Opens a `WatchTask` stream that lasts until `call`'s deadline. (Opening
/// is a read, repeatable; the stream itself is never repeated.)
async fn watch(state: &AppState, call: &CallContext, id: i64) -> Result<tonic::Streaming<pb::Task>, AppError> {
    let message = pb::WatchTaskRequest { id };
    Ok(state
        .tasks
        .unary(call, Kind::Read, message, TaskServiceClient::watch_task)
        .await?)
}

/// Waits for a task to end through `WatchTask`, returning its last state.
pub async fn wait_for(state: &AppState, call: &Call, id: i64, limit: Duration) -> Result<pb::Task, AppError> {
    let mut stream = watch(state, &call.with_timeout(limit), id).await?;
    let mut last = None;
    while let Some(task) = stream.next().await {
        last = Some(task.map_err(AppError::upstream(state.tasks.upstream().name()))?);
    }
    last.ok_or_else(|| AppError::Unavailable("the tasks service ended the watch without an answer".into()))
}
