//! Operational routes: liveness, readiness and the fan-out overview.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use mesh_proto::cache::v1 as cache_pb;
use mesh_proto::counter::v1 as counter_pb;
use mesh_proto::items::v1 as items_pb;
use mesh_proto::tasks::v1 as tasks_pb;
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use super::items::ItemJson;
use super::seed::SHARED_COUNTER;
use super::tasks::TaskJson;
use crate::error::AppError;
use crate::extract::Call;
use crate::state::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// `GET /healthz`: the gateway process is up.
pub async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// Each service's `grpc.health.v1` status, asked concurrently.
async fn upstream_health(state: &AppState) -> Vec<(&'static str, String)> {
    let checks = state.health.iter().map(|(name, client)| {
        let mut client = client.clone();
        async move {
            let mut req = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            req.set_timeout(PROBE_TIMEOUT);
            let status = match tokio::time::timeout(PROBE_TIMEOUT, client.check(req)).await {
                Ok(Ok(r)) => match ServingStatus::try_from(r.into_inner().status) {
                    Ok(ServingStatus::Serving) => "SERVING".to_string(),
                    Ok(other) => other.as_str_name().to_string(),
                    Err(_) => "UNKNOWN".to_string(),
                },
                Ok(Err(status)) => {
                    format!("UNREACHABLE ({})", crate::error::code_name(status.code()))
                }
                Err(_) => "UNREACHABLE (timeout)".to_string(),
            };
            (*name, status)
        }
    });
    futures::future::join_all(checks).await
}

/// `GET /readyz`: 200 when every service reports SERVING, else 503 naming
/// the ones that do not.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Value>) {
    let results = upstream_health(&state).await;
    let ready = results.iter().all(|(_, s)| s == "SERVING");
    let services: serde_json::Map<String, Value> = results
        .into_iter()
        .map(|(n, s)| (n.to_string(), Value::String(s)))
        .collect();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(json!({"ready": ready, "services": services})),
    )
}

fn part<T: serde::Serialize>(result: Result<T, AppError>) -> Value {
    match result {
        Ok(v) => json!(v),
        Err(e) => {
            let (_, code, message) = e.parts();
            json!({"error": {"code": code, "message": message}})
        }
    }
}

/// `GET /overview`: one call to each of the four services, concurrently.
/// A service that is down gets an error in its part; the rest still answer.
#[tracing::instrument(skip_all)]
pub async fn overview(State(state): State<AppState>, call: Call) -> axum::Json<Value> {
    let items = async {
        let page = state
            .items
            .clone()
            .list_items(call.req(items_pb::ListItemsRequest {
                page_size: 5,
                page_token: String::new(),
            }))
            .await
            .map_err(AppError::upstream("items"))?
            .into_inner();
        Ok::<_, AppError>(json!({
            "first": page.items.into_iter().map(ItemJson::from).collect::<Vec<_>>(),
            "more": !page.next_page_token.is_empty(),
        }))
    };
    let cache = async {
        let s = state
            .cache
            .clone()
            .stats(call.req(cache_pb::StatsRequest {}))
            .await
            .map_err(AppError::upstream("cache"))?
            .into_inner();
        Ok::<_, AppError>(json!({"hits": s.hits, "misses": s.misses, "entries": s.entries}))
    };
    let tasks = async {
        let page = state
            .tasks
            .clone()
            .list_tasks(call.req(tasks_pb::ListTasksRequest {
                page_size: 5,
                ..Default::default()
            }))
            .await
            .map_err(AppError::upstream("tasks"))?
            .into_inner();
        Ok::<_, AppError>(
            json!({"recent": page.tasks.into_iter().map(TaskJson::from).collect::<Vec<_>>()}),
        )
    };
    let counter = async {
        let v = state
            .counter
            .clone()
            .get(call.req(counter_pb::GetRequest {
                name: SHARED_COUNTER.into(),
            }))
            .await
            .map_err(AppError::upstream("counter"))?
            .into_inner();
        Ok::<_, AppError>(json!({ SHARED_COUNTER: v.value }))
    };
    let (items, cache, tasks, counter, health) =
        tokio::join!(items, cache, tasks, counter, upstream_health(&state));
    let health: serde_json::Map<String, Value> = health
        .into_iter()
        .map(|(n, s)| (n.to_string(), Value::String(s)))
        .collect();
    axum::Json(json!({
        "items": part(items),
        "cache": part(cache),
        "tasks": part(tasks),
        "counter": part(counter),
        "health": health,
    }))
}
