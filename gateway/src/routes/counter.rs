//! `/counters/{name}`: the counter service. `Idempotency-Key` makes an
//! increment safe to retry: the same key returns the first answer.

use axum::extract::State;
use mesh_proto::counter::v1 as pb;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::AppError;
use crate::extract::{Call, IdempotencyKey, OptionalJson, Path};
use crate::state::AppState;

/// Optional: an empty body adds 1.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"by": 5}))]
pub struct IncrementBody {
    /// What to add (may be negative).
    #[serde(default = "one")]
    #[schema(default = 1)]
    by: i64,
}

impl Default for IncrementBody {
    fn default() -> Self {
        Self { by: 1 }
    }
}

fn one() -> i64 {
    1
}

#[derive(Serialize, ToSchema)]
#[schema(as = Counter, example = json!({"name": "visits", "value": 42}))]
pub struct CounterJson {
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    pub value: i64,
}

/// The path segment `{name}`.
const NAME: &str = "The counter's name, 1..=256 characters";

impl From<pb::CounterValue> for CounterJson {
    fn from(v: pb::CounterValue) -> Self {
        Self {
            name: v.name,
            value: v.value,
        }
    }
}

/// Add to a counter.
#[utoipa::path(post, path = "/counters/{name}/increment", tag = "counters", operation_id = "increment_counter",
    params(("name" = String, Path, min_length = 1, max_length = 256, description = NAME),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256,
            description = "Makes a retry safe: within the idempotency window (600 s) the same key returns \
                the first answer without counting again; the same key with another `by` is 422.")),
    request_body(content = Option<IncrementBody>, content_type = "application/json",
        description = "Optional: with no body (and no Content-Type) the counter goes up by 1."),
    responses((status = 200, description = "The new value", body = CounterJson)))]
#[tracing::instrument(level = "debug", skip_all, fields(name = %name))]
pub async fn increment(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    OptionalJson(body): OptionalJson<IncrementBody>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let message = pb::IncrementRequest {
        name,
        delta: Some(body.by),
        idempotency_key: key,
    };
    // Only an increment with a key is retried (`Kind::of`): without one a
    // retry after a lost answer would count twice.
    let value = state
        .counter
        .unary(&call, message, CounterServiceClient::increment)
        .await?;
    Ok(axum::Json(value.into()))
}

/// Read a counter.
#[utoipa::path(get, path = "/counters/{name}", tag = "counters", operation_id = "get_counter",
    params(("name" = String, Path, min_length = 1, max_length = 256, description = NAME)),
    responses((status = 200, description = "The current value", body = CounterJson)))]
#[tracing::instrument(level = "debug", skip_all, fields(name = %name))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let message = pb::GetRequest { name };
    let value = state.counter.unary(&call, message, CounterServiceClient::get).await?;
    Ok(axum::Json(value.into()))
}

/// Resets to 0 and returns the value the counter had.
#[utoipa::path(post, path = "/counters/{name}/reset", tag = "counters", operation_id = "reset_counter",
    params(("name" = String, Path, min_length = 1, max_length = 256, description = NAME)),
    responses((status = 200, description = "The value the counter had", body = CounterJson)))]
#[tracing::instrument(level = "debug", skip_all, fields(name = %name))]
pub async fn reset(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let message = pb::ResetRequest { name };
    let value = state.counter.unary(&call, message, CounterServiceClient::reset).await?;
    Ok(axum::Json(value.into()))
}
