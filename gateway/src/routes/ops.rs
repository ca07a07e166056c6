//! Operational routes: liveness, readiness and the fan-out overview.
//!
//! Each comes in two forms. On the public listener, readiness says only
//! whether each service is ready, and the overview leaves out replica
//! addresses and the recent tasks' payloads, results and errors (they are
//! other clients' data). On the admin listener (`--admin-listen`, loopback by
//! default) both are in full: `*_detail`.

use axum::extract::State;
use axum::http::StatusCode;
use mesh_proto::cache::v1 as cache_pb;
use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_proto::counter::v1 as counter_pb;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_proto::items::v1 as items_pb;
use mesh_proto::items::v1::item_service_client::ItemServiceClient;
use mesh_proto::tasks::v1 as tasks_pb;
use mesh_proto::tasks::v1::task_service_client::TaskServiceClient;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::items::ItemJson;
use super::seed::SHARED_COUNTER;
use super::tasks::TaskJson;
use crate::error::AppError;
use crate::extract::Call;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /healthz`: the gateway process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz",
    responses((status = 200, description = "The gateway process is up", body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The public readiness answer (the schema; built in [`readiness`]).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ready": true, "services": {"cache": {"ready": true}, "counter": {"ready": true},
    "items": {"ready": true}, "tasks": {"ready": true}}}))]
pub struct Readiness {
    /// Every service has a healthy replica.
    pub ready: bool,
    /// By service name (`items`, `cache`, `tasks`, `counter`).
    pub services: std::collections::BTreeMap<String, ServiceReadiness>,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceReadiness {
    pub ready: bool,
}

/// The public overview (the schema; built in [`overview_of`]). A service
/// that is down gets an `ErrorBody` in its part instead.
#[derive(Serialize, ToSchema)]
pub struct Overview {
    #[schema(schema_with = overview_part::<OverviewItems>)]
    pub items: Value,
    #[schema(schema_with = overview_part::<OverviewCache>)]
    pub cache: Value,
    #[schema(schema_with = overview_part::<OverviewTasks>)]
    pub tasks: Value,
    #[schema(schema_with = overview_part::<OverviewCounter>)]
    pub counter: Value,
}

/// A part of the overview: the service's figures, or its error.
fn overview_part<T: utoipa::ToSchema>() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::Schema::OneOf(
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name(T::name()))
            .item(utoipa::openapi::Ref::from_schema_name("ErrorBody"))
            .build(),
    )
}

#[derive(Serialize, ToSchema)]
pub struct OverviewItems {
    /// The first five items.
    pub first: Vec<ItemJson>,
    /// There are more than five.
    pub more: bool,
}

#[derive(Serialize, ToSchema)]
pub struct OverviewCache {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Serialize, ToSchema)]
pub struct OverviewTasks {
    /// The five newest tasks, without `payload`, `result`, `error` and `attempt_log`.
    pub recent: Vec<Value>,
    pub stats: super::tasks::QueueStats,
}

#[derive(Serialize, ToSchema)]
pub struct OverviewCounter {
    /// The value of `/increment`'s counter.
    pub shared_resource: i64,
}

/// Each service's readiness as the gateway sees it (from its own health
/// checks and outlier detection): `{"items": {"ready": true}}`, and with
/// `detail` each replica too: `{"items": {"ready": true, "replicas": [...]}}`.
fn replicas(state: &AppState, detail: bool) -> (bool, serde_json::Map<String, Value>) {
    let mut all_ready = true;
    let mut out = serde_json::Map::new();
    for upstream in &state.upstreams {
        let members = upstream.members().snapshot();
        let ready = members.iter().any(|m| m.healthy && !m.ejected);
        all_ready &= ready;
        let service = if detail {
            json!({"ready": ready, "replicas": members})
        } else {
            json!({"ready": ready})
        };
        out.insert(upstream.name().to_string(), service);
    }
    (all_ready, out)
}

fn readiness(state: &AppState, detail: bool) -> (StatusCode, axum::Json<Value>) {
    let (ready, services) = replicas(state, detail);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(json!({"ready": ready, "services": services})))
}

/// `GET /readyz` (public): 200 when every service has a healthy replica, else
/// 503 naming the ones that have none; no replica addresses.
#[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz",
    responses((status = 200, description = "Every service has a ready replica", body = Readiness),
        (status = 503, description = "Some service has no ready replica (`ready` false on it)", body = Readiness,
            example = json!({"ready": false, "services": {"cache": {"ready": true}, "counter": {"ready": true},
                "items": {"ready": false}, "tasks": {"ready": true}}}))))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Value>) {
    readiness(&state, false)
}

/// `GET /readyz` (admin): the same, with each replica's address and state
/// (`healthy`, `ejected`, `in_rotation`).
pub async fn readyz_detail(State(state): State<AppState>) -> (StatusCode, axum::Json<Value>) {
    readiness(&state, true)
}

/// A recent task as the public overview shows it: what it is and how it is
/// doing, without what it was given or produced.
fn public_task(task: TaskJson) -> Value {
    let mut task = json!(task);
    if let Some(fields) = task.as_object_mut() {
        for private in ["payload", "result", "error", "attempt_log"] {
            fields.remove(private);
        }
    }
    task
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

/// `GET /overview` (public): one call to each service,
/// concurrently. A service that is down gets an error in its part; the rest
/// still answer. No replica addresses; recent tasks without payloads,
/// results or errors.
#[utoipa::path(get, path = "/overview", tag = "ops", operation_id = "overview",
    responses((status = 200, description = "Each service's figures (or its error)", body = Overview)))]
#[tracing::instrument(skip_all)]
pub async fn overview(State(state): State<AppState>, call: Call) -> axum::Json<Value> {
    overview_of(state, call, false).await
}

/// `GET /overview` (admin): the same in full, with each service's replicas.
#[tracing::instrument(skip_all)]
pub async fn overview_detail(State(state): State<AppState>, call: Call) -> axum::Json<Value> {
    overview_of(state, call, true).await
}

pub(crate) async fn overview_of(state: AppState, call: Call, detail: bool) -> axum::Json<Value> {
    let items = async {
        let page = state
            .items
            .unary(
                &call,
                items_pb::ListItemsRequest {
                    page_size: 5,
                    page_token: String::new(),
                },
                ItemServiceClient::list_items,
            )
            .await?;
        Ok::<_, AppError>(json!({
            "first": page.items.into_iter().map(ItemJson::from).collect::<Vec<_>>(),
            "more": !page.next_page_token.is_empty(),
        }))
    };
    let cache = async {
        let s = state
            .cache
            .unary(&call, cache_pb::StatsRequest {}, CacheServiceClient::stats)
            .await?;
        Ok::<_, AppError>(json!({"hits": s.hits, "misses": s.misses, "entries": s.entries}))
    };
    let tasks = async {
        let page = state
            .tasks
            .unary(
                &call,
                tasks_pb::ListTasksRequest {
                    page_size: 5,
                    ..Default::default()
                },
                TaskServiceClient::list_tasks,
            )
            .await?;
        let stats = state
            .tasks
            .unary(
                &call,
                tasks_pb::QueueStatsRequest::default(),
                TaskServiceClient::queue_stats,
            )
            .await?;
        let recent = page.tasks.into_iter().map(TaskJson::from);
        let recent: Vec<Value> = if detail {
            recent.map(|t| json!(t)).collect()
        } else {
            recent.map(public_task).collect()
        };
        Ok::<_, AppError>(json!({
            "recent": recent,
            "stats": super::tasks::stats_json(stats),
        }))
    };
    let counter = async {
        let v = state
            .counter
            .unary(
                &call,
                counter_pb::GetRequest {
                    name: SHARED_COUNTER.into(),
                },
                CounterServiceClient::get,
            )
            .await?;
        Ok::<_, AppError>(json!({ SHARED_COUNTER: v.value }))
    };
    let (items, cache, tasks, counter) = tokio::join!(items, cache, tasks, counter);
    let mut body = serde_json::Map::new();
    for (upstream, part) in [
        (state.items.upstream(), part(items)),
        (state.cache.upstream(), part(cache)),
        (state.tasks.upstream(), part(tasks)),
        (state.counter.upstream(), part(counter)),
    ] {
        body.insert(upstream.name().to_string(), part);
    }
    if detail {
        body.insert("replicas".into(), Value::Object(replicas(&state, true).1));
    }
    axum::Json(Value::Object(body))
}
