//! The seed article's routes, each served through the mesh instead of by one
//! Python process: same paths, same JSON.

use std::time::Duration;

use axum::extract::State;
use mesh_proto::cache::v1 as cache_pb;
use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::counter::v1 as counter_pb;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::tasks::v1::TaskStatus;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::tasks::{status_name, submit_task, wait_for};
use crate::error::AppError;
use crate::extract::{Call, Query};
use crate::state::AppState;

/// The counter behind `/increment` (the seed's `shared_resource`).
pub const SHARED_COUNTER: &str = "shared_resource";

#[derive(Serialize, ToSchema)]
pub struct Hello {
    #[schema(example = "Hello, load balanced world!")]
    pub message: &'static str,
}

/// `GET /test`: the load-balancing hello world.
#[utoipa::path(get, path = "/test", tag = "seed", operation_id = "test",
    responses((status = 200, description = "Hello", body = Hello)))]
pub async fn test() -> axum::Json<Hello> {
    axum::Json(Hello {
        message: "Hello, load balanced world!",
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyParam {
    /// The key in the cache's public keyspace, 1..=512 characters, no NUL.
    #[param(min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$")]
    key: String,
}

/// `{"data": V}` when the key is cached, else the seed's
/// `{"error": "Data not found in cache."}`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"data": "hello"}))]
pub struct CachedData {
    /// The value (invalid UTF-8 replaced by U+FFFD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// `Data not found in cache.` (answered with 200, as the seed does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct SharedResource {
    /// The shared counter's new value.
    #[schema(example = 43)]
    pub shared_resource: i64,
}

#[derive(Serialize, ToSchema)]
pub struct TaskStarted {
    #[schema(example = 12)]
    pub task_id: i64,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"result": "slept 5000 ms", "task_id": 13}))]
pub struct BlockingResult {
    /// The `sleep` task's result (its `message`, else the whole result).
    pub result: Value,
    pub task_id: i64,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"response": {"message": "hello from another service"}}))]
pub struct UpstreamAnswer {
    /// The upstream's body: its JSON, or its text as a string.
    pub response: Value,
}

/// `GET /cached-data?key=K`: `{"data": V}`, or the seed's
/// `{"error": "Data not found in cache."}` (with 200, as the seed answers).
#[utoipa::path(get, path = "/cached-data", tag = "seed", operation_id = "cached_data", params(KeyParam),
    responses((status = 200, description = "The value, or the seed's not-found answer", body = CachedData)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn cached_data(
    State(state): State<AppState>,
    call: Call,
    Query(p): Query<KeyParam>,
) -> Result<axum::Json<CachedData>, AppError> {
    let found = {
        let message = cache_pb::GetRequest {
            key: p.key,
            ..Default::default()
        };
        state.cache.unary(&call, message, CacheServiceClient::get).await?
    };
    Ok(axum::Json(if found.found {
        CachedData {
            data: Some(String::from_utf8_lossy(&found.value).into_owned()),
            error: None,
        }
    } else {
        CachedData {
            data: None,
            error: Some("Data not found in cache."),
        }
    }))
}

/// `GET /increment`: the seed's locked counter, now one counter for every
/// gateway and every counter replica.
#[utoipa::path(get, path = "/increment", tag = "seed", operation_id = "seed_increment",
    responses((status = 200, description = "The shared counter's new value", body = SharedResource)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn increment(State(state): State<AppState>, call: Call) -> Result<axum::Json<SharedResource>, AppError> {
    let value = state
        .counter
        .unary(
            &call,
            counter_pb::IncrementRequest {
                name: SHARED_COUNTER.into(),
                delta: Some(1),
                idempotency_key: String::new(),
            },
            CounterServiceClient::increment,
        )
        .await?
        .value;
    Ok(axum::Json(SharedResource { shared_resource: value }))
}

/// `GET /start-task`: the seed's `long_running_task.apply_async()`.
#[utoipa::path(get, path = "/start-task", tag = "seed", operation_id = "start_task",
    responses((status = 200, description = "The queued `echo` task's id", body = TaskStarted)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start_task(State(state): State<AppState>, call: Call) -> Result<axum::Json<TaskStarted>, AppError> {
    let task = submit_task(&state, &call, "echo".into(), json!("Task complete!"), 0).await?;
    Ok(axum::Json(TaskStarted { task_id: task.id }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BlockingParams {
    /// How long the blocking task sleeps; the seed's is 5 s, which is also
    /// the most: the request is held open while the task runs.
    #[serde(default = "max_blocking_ms")]
    #[param(default = 5000, minimum = 0, maximum = 5000)]
    ms: u64,
}

/// The longest sleep `GET /run-blocking-task` asks for: the seed's 5 s. The
/// request waits for the task, so a longer one would hold a connection (and
/// a worker) for as long as a client cares to ask; longer work belongs in
/// `POST /tasks`, which answers at once.
const MAX_BLOCKING_MS: u64 = 5000;

fn max_blocking_ms() -> u64 {
    MAX_BLOCKING_MS
}

/// `GET /run-blocking-task[?ms=N]`: the seed's `time.sleep(5)` in a thread
/// pool, run as a `sleep` task on the tasks service's blocking pool; the
/// request waits for it and returns its result. A client that gives up
/// (or a wait that runs out) cancels the task, which frees its thread.
#[utoipa::path(get, path = "/run-blocking-task", tag = "seed", operation_id = "run_blocking_task",
    params(BlockingParams),
    responses((status = 200, description = "The finished task's result", body = BlockingResult)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn run_blocking_task(
    State(state): State<AppState>,
    call: Call,
    Query(p): Query<BlockingParams>,
) -> Result<axum::Json<BlockingResult>, AppError> {
    if p.ms > MAX_BLOCKING_MS {
        return Err(AppError::invalid(format!(
            "ms: at most {MAX_BLOCKING_MS} (the request waits for the task; submit longer work with POST /tasks)"
        )));
    }
    let task = submit_task(&state, &call, "sleep".into(), json!({"ms": p.ms}), 9).await?;
    let guard = CancelOnDrop {
        state: state.clone(),
        id: task.id,
        request_id: call.request_id.clone(),
        trace: call.trace.clone(),
        armed: true,
    };
    // Queueing and running may take a while; allow the sleep plus a margin.
    let limit = Duration::from_millis(p.ms) + state.route_timeout * 2;
    let done = wait_for(&state, &call, task.id, limit).await?;
    // A watch that ends with the task still queued or running (the tasks
    // service stopping) leaves the guard armed: nobody waits for it now.
    if !matches!(
        done.status(),
        TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
    ) {
        return Err(AppError::Unavailable(format!(
            "task {} is still {}; the wait for it ended",
            done.id,
            status_name(done.status())
        )));
    }
    guard.disarm();
    let status = done.status();
    let result = done.result.map(mesh_proto::json::from_proto);
    match (status, result) {
        (TaskStatus::Succeeded, Some(result)) => Ok(axum::Json(BlockingResult {
            result: result.get("message").cloned().unwrap_or(result),
            task_id: done.id,
        })),
        (status, _) => Err(AppError::Unavailable(format!(
            "task {} ended {}: {}",
            done.id,
            status_name(status),
            done.error
        ))),
    }
}

/// Cancels a task the request queued, unless disarmed: the request ended
/// (its client went away, or its wait ran out) before the task did, and
/// nobody else is waiting for it.
struct CancelOnDrop {
    state: AppState,
    id: i64,
    request_id: Option<String>,
    trace: Option<mesh_common::tracecontext::Trace>,
    armed: bool,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (state, id) = (self.state.clone(), self.id);
        let call =
            mesh_upstream::CallContext::new(self.request_id.take(), state.route_timeout).with_trace(self.trace.take());
        let cancel = state.tasks.unary(
            &call,
            mesh_proto::tasks::v1::CancelTaskRequest { id },
            mesh_proto::tasks::v1::task_service_client::TaskServiceClient::cancel_task,
        );
        // Outside a runtime (its shutdown) there is nothing to cancel with.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            match cancel.await {
                Ok(_) => tracing::debug!(task_id = id, "request ended first; its blocking task was cancelled"),
                // It may have just ended: nothing left to cancel.
                Err(err) => tracing::debug!(task_id = id, error = %err, "cancelling the request's task"),
            }
        });
    }
}

/// `GET /call-another-service`: one call to the configured plain-HTTP
/// upstream over the shared `reqwest` client.
#[utoipa::path(get, path = "/call-another-service", tag = "seed", operation_id = "call_another_service",
    responses((status = 200, description = "The upstream's answer", body = UpstreamAnswer)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn call_another_service(
    State(state): State<AppState>,
    call: Call,
) -> Result<axum::Json<UpstreamAnswer>, AppError> {
    let url = state.upstream.as_deref().ok_or_else(|| {
        AppError::Unavailable("no upstream is configured (start the gateway with --upstream URL)".into())
    })?;
    let left = call.deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut request = state.http.get(url).timeout(left);
    if let Some(id) = &call.request_id {
        request = request.header("x-request-id", id);
    }
    if let Some(trace) = &call.trace {
        request = request.header(mesh_common::tracecontext::TRACEPARENT, trace.traceparent());
        if let Some(state) = &trace.state {
            request = request.header(mesh_common::tracecontext::TRACESTATE, state.as_ref());
        }
    }
    let response = request.send().await.map_err(|e| {
        tracing::warn!(error = %e, url, "upstream call failed");
        AppError::BadGateway("the upstream service did not answer".into())
    })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| {
        tracing::warn!(error = %e, url, "upstream body failed");
        AppError::BadGateway("the upstream service's answer was cut off".into())
    })?;
    if !status.is_success() {
        return Err(AppError::BadGateway(format!(
            "the upstream service answered HTTP {}",
            status.as_u16()
        )));
    }
    let parsed = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok(axum::Json(UpstreamAnswer { response: parsed }))
}
