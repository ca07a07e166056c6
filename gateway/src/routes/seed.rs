//! The seed article's routes, each served through the mesh instead of by one
//! Python process: same paths, same JSON.

use std::time::Duration;

use axum::extract::State;
use mesh_proto::cache::v1 as cache_pb;
use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::counter::v1 as counter_pb;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::tasks::v1::TaskStatus;
use mesh_upstream::Kind;
use serde::Deserialize;
use serde_json::{Value, json};

use super::tasks::{status_name, submit_task, wait_for};
use crate::error::AppError;
use crate::extract::{Call, Query};
use crate::state::AppState;

/// The counter behind `/increment` (the seed's `shared_resource`).
pub const SHARED_COUNTER: &str = "shared_resource";

/// `GET /test`: the load-balancing hello world.
pub async fn test() -> axum::Json<Value> {
    axum::Json(json!({"message": "Hello, load balanced world!"}))
}

#[derive(Deserialize)]
pub struct KeyParam {
    key: String,
}

/// `GET /cached-data?key=K`: `{"data": V}`, or the seed's
/// `{"error": "Data not found in cache."}` (with 200, as the seed answers).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn cached_data(
    State(state): State<AppState>,
    call: Call,
    Query(p): Query<KeyParam>,
) -> Result<axum::Json<Value>, AppError> {
    let found = {
        let message = cache_pb::GetRequest {
            key: p.key,
            ..Default::default()
        };
        state
            .cache
            .unary(&call, Kind::Read, message, CacheServiceClient::get)
            .await?
    };
    Ok(axum::Json(if found.found {
        json!({"data": String::from_utf8_lossy(&found.value)})
    } else {
        json!({"error": "Data not found in cache."})
    }))
}

/// `GET /increment`: the seed's locked counter, now one counter for every
/// gateway and every counter replica.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn increment(State(state): State<AppState>, call: Call) -> Result<axum::Json<Value>, AppError> {
    let value = state
        .counter
        .unary(
            &call,
            Kind::Write,
            counter_pb::IncrementRequest {
                name: SHARED_COUNTER.into(),
                delta: Some(1),
                idempotency_key: String::new(),
            },
            CounterServiceClient::increment,
        )
        .await?
        .value;
    Ok(axum::Json(json!({"shared_resource": value})))
}

/// `GET /start-task`: the seed's `long_running_task.apply_async()`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start_task(State(state): State<AppState>, call: Call) -> Result<axum::Json<Value>, AppError> {
    let task = submit_task(&state, &call, "echo".into(), json!("Task complete!"), 0).await?;
    Ok(axum::Json(json!({"task_id": task.id})))
}

#[derive(Deserialize)]
pub struct BlockingParams {
    /// How long the blocking task sleeps; the seed's is 5 s.
    #[serde(default = "five_seconds")]
    ms: u64,
}

fn five_seconds() -> u64 {
    5000
}

/// `GET /run-blocking-task[?ms=N]`: the seed's `time.sleep(5)` in a thread
/// pool, run as a `sleep` task on the tasks service's blocking pool; the
/// request waits for it and returns its result.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn run_blocking_task(
    State(state): State<AppState>,
    call: Call,
    Query(p): Query<BlockingParams>,
) -> Result<axum::Json<Value>, AppError> {
    let task = submit_task(&state, &call, "sleep".into(), json!({"ms": p.ms}), 9).await?;
    // Queueing and running may take a while; allow the sleep plus a margin.
    let limit = Duration::from_millis(p.ms) + state.route_timeout * 2;
    let done = wait_for(&state, &call, task.id, limit).await?;
    let status = done.status();
    let result = done.result.map(mesh_proto::json::from_proto);
    match (status, result) {
        (TaskStatus::Succeeded, Some(result)) => Ok(axum::Json(json!({
            "result": result.get("message").cloned().unwrap_or(result),
            "task_id": done.id,
        }))),
        (status, _) => Err(AppError::Unavailable(format!(
            "task {} ended {}: {}",
            done.id,
            status_name(status),
            done.error
        ))),
    }
}

/// `GET /call-another-service`: one call to the configured plain-HTTP
/// upstream over the shared `reqwest` client.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn call_another_service(State(state): State<AppState>, call: Call) -> Result<axum::Json<Value>, AppError> {
    let url = state.upstream.as_deref().ok_or_else(|| {
        AppError::Unavailable("no upstream is configured (start the gateway with --upstream URL)".into())
    })?;
    let left = call.deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut request = state.http.get(url).timeout(left);
    if let Some(id) = &call.request_id {
        request = request.header("x-request-id", id);
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
    Ok(axum::Json(json!({"response": parsed})))
}
