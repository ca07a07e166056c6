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
use mesh_upstream::CallContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::rfc3339;
use crate::error::AppError;
use crate::extract::{Call, IdempotencyKey, Json, Path, Query, parse_id};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "sleep", "payload": {"ms": 200}, "priority": 5, "max_attempts": 3,
    "timeout_ms": 10000}))]
pub struct SubmitBody {
    /// One of the kinds the tasks service knows.
    #[schema(schema_with = kind_schema, example = "echo")]
    kind: String,
    /// Kind-specific input: echo takes anything; sleep `{"ms": N}`; hash
    /// `{"data": "...", "rounds": N}`; ticker `{"steps": N, "step_ms": M}`;
    /// flaky `{"fail_times": N}`; fetch `{"url": "http://..."}`. Arrays and
    /// objects nest at most 32 deep.
    #[serde(default)]
    payload: Value,
    /// 0 (lowest) ..= 9 (highest).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9, default = 0)]
    priority: i32,
    /// Attempts before the task fails for good (default 1: no retries).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100, default = 1)]
    max_attempts: u32,
    /// Time limit of each attempt.
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    /// Not before this time (RFC 3339). Give this or `countdown_ms`, not both.
    #[schema(format = DateTime)]
    run_at: Option<String>,
    /// Not before this many ms from now; at most 365 days.
    #[schema(maximum = 31_536_000_000_u64)]
    countdown_ms: Option<u64>,
    /// Named queue; "" means "default".
    #[serde(default)]
    #[schema(pattern = "^([a-z0-9_-]{1,64})?$", max_length = 64)]
    queue: String,
    /// Makes a repeat safe, as the `Idempotency-Key` header does (which
    /// `POST /tasks` also takes; if both are given they must agree). In a
    /// batch, each task's own.
    #[schema(min_length = 1, max_length = 256, pattern = "^[\\x21-\\x7e]+$")]
    idempotency_key: Option<String>,
}

/// `POST /tasks:batch`: many tasks, all queued or none.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tasks": [{"kind": "echo", "payload": "a", "idempotency_key": "batch-7-0"},
    {"kind": "sleep", "payload": {"ms": 200}, "priority": 9}]}))]
pub struct BatchBody {
    /// 1 to the tasks service's `--max-batch` (1000 by default) tasks.
    #[schema(min_items = 1)]
    tasks: Vec<SubmitBody>,
}

/// `202 Accepted` to a batch: each task's id and state, in the order given.
#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    pub tasks: Vec<Accepted>,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1..=1000; absent or 0: 50.
    #[param(minimum = 0, maximum = 1000)]
    page_size: Option<i32>,
    /// From the previous page's `next_page_token`.
    #[param(pattern = "^(before-[1-9][0-9]{0,17})?$")]
    page_token: Option<String>,
    /// Only tasks in this state.
    #[param(schema_with = status_schema)]
    status: Option<String>,
}

/// The kinds of task the tasks service runs (its built-in registry; a test
/// holds the two equal by asking a live tasks service).
pub const KINDS: &[&str] = &["echo", "fetch", "flaky", "hash", "sleep", "ticker"];

/// [`KINDS`] as an enum schema.
pub fn kind_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(KINDS.iter().copied()))
        .build()
}

/// One server-sent event of `GET /tasks/{id}/events`, as a client's event
/// parser sees it.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the events are written by `Event`
pub struct TaskEvent {
    /// `task`: `data` is a `Task`; `error`: `data` is an `ErrorBody` (the
    /// stream failed part-way and ends).
    #[schema(schema_with = event_name_schema)]
    event: String,
    /// JSON: a `Task` or an `ErrorBody`, by `event`.
    #[schema(content_media_type = "application/json")]
    data: String,
}

fn event_name_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["task", "error"]))
        .build()
}

/// The task states' names, as an enum schema spelled by [`status_name`].
pub fn status_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(task_states().map(status_name)))
        .build()
}

/// `202 Accepted` to a submit.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "queued", "task_id": 12}))]
pub struct Accepted {
    #[schema(schema_with = status_schema)]
    pub status: &'static str,
    pub task_id: i64,
}

/// One page of tasks, newest first.
#[derive(Serialize, ToSchema)]
pub struct TaskPage {
    /// Pass as `page_token` for the next page; empty on the last one.
    #[schema(pattern = "^(before-[1-9][0-9]{0,17})?$")]
    pub next_page_token: String,
    pub tasks: Vec<TaskJson>,
}

/// Progress the running task reported.
#[derive(Serialize, ToSchema)]
pub struct Progress {
    pub message: String,
    #[schema(minimum = 0, maximum = 100)]
    pub percent: u32,
}

/// One attempt at running a task.
#[derive(Serialize, ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptJson {
    /// `null` when the attempt succeeded (or runs).
    #[schema(required = true)]
    pub error: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
    #[schema(minimum = 1)]
    pub number: u32,
    #[schema(format = DateTime, required = true)]
    pub started_at: Option<String>,
    pub timed_out: bool,
}

/// A task as the gateway shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Task, example = json!(task_example()))]
pub struct TaskJson {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    #[schema(minimum = 0, maximum = 9)]
    pub priority: i32,
    pub queue: String,
    #[schema(schema_with = status_schema)]
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
    pub progress: Progress,
    pub cancel_requested: bool,
    pub attempt_log: Vec<AttemptJson>,
    #[schema(format = DateTime, required = true)]
    pub created_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub run_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
}

fn task_example() -> Value {
    serde_json::json!({
        "id": 12, "kind": "sleep", "payload": {"ms": 200}, "priority": 5, "queue": "default",
        "status": "succeeded", "attempts": 1, "max_attempts": 3, "timeout_ms": 10000,
        "result": {"slept_ms": 200}, "progress": {"percent": 100, "message": ""},
        "cancel_requested": false,
        "attempt_log": [{"number": 1, "started_at": "2026-11-26T16:32:12.361Z",
            "finished_at": "2026-11-26T16:32:12.562Z", "error": null, "timed_out": false}],
        "created_at": "2026-11-26T16:32:12.360Z", "run_at": null,
        "started_at": "2026-11-26T16:32:12.361Z", "finished_at": "2026-11-26T16:32:12.562Z",
    })
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
            progress: Progress {
                message: t.progress_message,
                percent: t.progress_percent,
            },
            cancel_requested: t.cancel_requested,
            attempt_log: t
                .attempt_log
                .into_iter()
                .map(|a| AttemptJson {
                    error: Some(a.error).filter(|e| !e.is_empty()),
                    finished_at: rfc3339(a.finish_time),
                    number: a.number,
                    started_at: rfc3339(a.start_time),
                    timed_out: a.timed_out,
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
#[utoipa::path(post, path = "/tasks", tag = "tasks", operation_id = "submit_task",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256,
        description = "Makes a retry safe: a submit with a key already used returns the task the first one \
            created; the same key with a different request is 422.")),
    request_body = SubmitBody,
    responses((status = 202, description = "Queued", body = Accepted,
        headers(("Location" = String, description = "`/tasks/{id}`, where to follow the task")))))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn submit(
    State(state): State<AppState>,
    call: Call,
    IdempotencyKey(key): IdempotencyKey,
    Json(mut body): Json<SubmitBody>,
) -> Result<Response, AppError> {
    let key = match (key, body.idempotency_key.take()) {
        (header, Some(field)) if !header.is_empty() && header != field => {
            return Err(AppError::invalid(
                "idempotency_key: differs from the Idempotency-Key header; give one of them",
            ));
        }
        (header, field) if header.is_empty() => field.unwrap_or_default(),
        (header, _) => header,
    };
    let mut message = submit_request(body).map_err(AppError::invalid)?;
    message.idempotency_key = key;
    let task = submit_message(&state, &call, message).await?;
    let accepted = Accepted {
        status: status_name(task.status()),
        task_id: task.id,
    };
    let mut response = (StatusCode::ACCEPTED, axum::Json(accepted)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/tasks/{}", task.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A submit body as the `SubmitTask` request (its key included); the error
/// is a message naming the field.
fn submit_request(body: SubmitBody) -> Result<pb::SubmitTaskRequest, String> {
    let run_at = body
        .run_at
        .as_deref()
        .map(|s| {
            s.parse::<prost_types::Timestamp>()
                .map_err(|_| format!("run_at: {s:?} is not an RFC 3339 time"))
        })
        .transpose()?;
    let depth = mesh_proto::json::depth(&body.payload);
    if depth > mesh_proto::json::MAX_DEPTH {
        return Err(format!(
            "payload: nests arrays and objects {depth} levels deep; at most {}",
            mesh_proto::json::MAX_DEPTH
        ));
    }
    Ok(pb::SubmitTaskRequest {
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
        idempotency_key: body.idempotency_key.unwrap_or_default(),
    })
}

/// Queues many tasks at once, all or none; answers 202 with each task's id
/// in the order given.
#[utoipa::path(post, path = "/tasks:batch", tag = "tasks", operation_id = "submit_tasks",
    request_body = BatchBody,
    responses((status = 202, description = "All queued (a task whose key was seen before: the task it created)",
        body = BatchAccepted)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn submit_batch(
    State(state): State<AppState>,
    call: Call,
    Json(body): Json<BatchBody>,
) -> Result<(StatusCode, axum::Json<BatchAccepted>), AppError> {
    let tasks = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, task)| submit_request(task).map_err(|m| AppError::invalid(format!("tasks[{i}].{m}"))))
        .collect::<Result<Vec<_>, _>>()?;
    // Never retried (`Kind::of`: SubmitTasks is not idempotent as a whole).
    let done = state
        .tasks
        .unary(&call, pb::SubmitTasksRequest { tasks }, TaskServiceClient::submit_tasks)
        .await?;
    let tasks = done
        .tasks
        .into_iter()
        .map(|task| Accepted {
            status: status_name(task.status()),
            task_id: task.id,
        })
        .collect();
    Ok((StatusCode::ACCEPTED, axum::Json(BatchAccepted { tasks })))
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
    // Retried only with an idempotency key (`Kind::of`): without one, a
    // submit whose answer was lost may have queued the task, and a retry
    // would queue it twice.
    Ok(state.tasks.unary(call, message, TaskServiceClient::submit_task).await?)
}

/// `POST /tasks/{id}/retry`: queues a failed or cancelled task again.
#[utoipa::path(post, path = "/tasks/{id}/retry", tag = "tasks", operation_id = "retry_task",
    params(("id" = i64, Path, minimum = 1, description = "The task's id")),
    responses((status = 200, description = "The task, queued again", body = TaskJson)))]
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn retry(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskJson>, AppError> {
    let id = parse_id(&id, "id")?;
    let task = state
        .tasks
        .unary(&call, pb::RetryTaskRequest { id }, TaskServiceClient::retry_task)
        .await?;
    Ok(axum::Json(task.into()))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// One queue's figures; absent or empty: every queue's.
    #[param(pattern = "^([a-z0-9_-]{1,64})?$")]
    queue: Option<String>,
}

/// How deep the queues are.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"cancelled": 0, "failed": 1, "oldest_queued_age_ms": 35, "queued": 3,
    "queued_by_priority": {"0": 2, "9": 1}, "running": 2, "scheduled": 0, "succeeded": 40}))]
pub struct QueueStats {
    pub cancelled: u64,
    pub failed: u64,
    /// How long the oldest ready task has waited; `null` when none waits.
    #[schema(required = true)]
    pub oldest_queued_age_ms: Option<u64>,
    /// Ready to run.
    pub queued: u64,
    /// Ready to run, by priority ("0" ..= "9").
    pub queued_by_priority: std::collections::BTreeMap<String, u64>,
    pub running: u64,
    /// Queued but not before a future time (countdowns, retry back-offs).
    pub scheduled: u64,
    pub succeeded: u64,
}

/// Queue depth as JSON (also part of `/overview`).
pub fn stats_json(s: pb::QueueStatsResponse) -> QueueStats {
    let by_priority = s
        .queued_by_priority
        .into_iter()
        .map(|(p, n)| (p.to_string(), n))
        .collect();
    let oldest = s
        .oldest_queued_age
        .and_then(|d| Duration::try_from(d).ok())
        .map(|d| d.as_millis() as u64);
    QueueStats {
        cancelled: s.cancelled,
        failed: s.failed,
        oldest_queued_age_ms: oldest,
        queued: s.queued,
        queued_by_priority: by_priority,
        running: s.running,
        scheduled: s.scheduled,
        succeeded: s.succeeded,
    }
}

/// `GET /tasks/stats[?queue=]`: how deep the queues are.
#[utoipa::path(get, path = "/tasks/stats", tag = "tasks", operation_id = "queue_stats", params(StatsParams),
    responses((status = 200, description = "Queue depth", body = QueueStats)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn stats(
    State(state): State<AppState>,
    call: Call,
    Query(params): Query<StatsParams>,
) -> Result<axum::Json<QueueStats>, AppError> {
    let message = pb::QueueStatsRequest {
        queue: params.queue.unwrap_or_default(),
    };
    let s = state
        .tasks
        .unary(&call, message, TaskServiceClient::queue_stats)
        .await?;
    Ok(axum::Json(stats_json(s)))
}

/// Get a task.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", operation_id = "get_task",
    params(("id" = i64, Path, minimum = 1, description = "The task's id")),
    responses((status = 200, description = "The task", body = TaskJson)))]
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskJson>, AppError> {
    let id = parse_id(&id, "id")?;
    let task = state
        .tasks
        .unary(&call, pb::GetTaskRequest { id }, TaskServiceClient::get_task)
        .await?;
    Ok(axum::Json(task.into()))
}

/// Cancel a task: a queued one at once, a running one as soon as its worker
/// sees the request. The task is kept; `GET /tasks/{id}` shows it cancelled.
/// 409 if it has already ended.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", operation_id = "cancel_task",
    params(("id" = i64, Path, minimum = 1, description = "The task's id")),
    responses((status = 200, description = "The task, cancelled or asked to stop", body = TaskJson)))]
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    call: Call,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskJson>, AppError> {
    let id = parse_id(&id, "id")?;
    let task = state
        .tasks
        .unary(&call, pb::CancelTaskRequest { id }, TaskServiceClient::cancel_task)
        .await?;
    Ok(axum::Json(task.into()))
}

/// List tasks.
#[utoipa::path(get, path = "/tasks", tag = "tasks", operation_id = "list_tasks", params(ListParams),
    responses((status = 200, description = "One page of tasks", body = TaskPage,
        example = json!({"next_page_token": "", "tasks": [task_example()]}))))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    call: Call,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<TaskPage>, AppError> {
    let status = params.status.as_deref().map(parse_status).transpose()?;
    let page = {
        let message = pb::ListTasksRequest {
            page_size: params.page_size.unwrap_or(0),
            page_token: params.page_token.unwrap_or_default(),
            status: status.unwrap_or(pb::TaskStatus::Unspecified) as i32,
        };
        state.tasks.unary(&call, message, TaskServiceClient::list_tasks).await?
    };
    Ok(axum::Json(TaskPage {
        next_page_token: page.next_page_token,
        tasks: page.tasks.into_iter().map(TaskJson::from).collect(),
    }))
}

/// The longest an events stream stays open.
const WATCH_LIMIT: Duration = Duration::from_secs(3600);

/// Server-sent events: one `task` event per state change, fed by `WatchTask`,
/// until the task ends. A failure mid-stream becomes an `error` event.
#[utoipa::path(get, path = "/tasks/{id}/events", tag = "tasks", operation_id = "watch_task",
    params(("id" = i64, Path, minimum = 1, description = "The task's id")),
    responses((status = 200, content_type = "text/event-stream", body = TaskEvent,
        description = "Server-sent events: `task` events whose data is a `Task` (JSON), until the task ends; \
            an `error` event (data: an `ErrorBody`) if the stream fails part-way. Keep-alive comments in between.",
        example = "event: task\ndata: {\"id\":12,\"kind\":\"sleep\",\"status\":\"running\",...}\n\n")))]
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
    Ok(state.tasks.unary(call, message, TaskServiceClient::watch_task).await?)
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
