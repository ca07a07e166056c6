//! `/counters/{name}`: the counter service. `Idempotency-Key` makes an
//! increment safe to retry: the same key returns the first answer.

use axum::extract::State;
use mesh_proto::counter::v1 as pb;
use mesh_proto::counter::v1::counter_service_client::CounterServiceClient;
use mesh_upstream::Kind;
use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::extract::{Call, IdempotencyKey, OptionalJson, Path};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementBody {
    #[serde(default = "one")]
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

#[derive(Serialize)]
pub struct CounterJson {
    pub name: String,
    pub value: i64,
}

impl From<pb::CounterValue> for CounterJson {
    fn from(v: pb::CounterValue) -> Self {
        Self {
            name: v.name,
            value: v.value,
        }
    }
}

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
    // Only an increment with a key is safe to repeat: without one a retry
    // after a lost answer would count twice.
    let kind = if message.idempotency_key.is_empty() {
        Kind::Write
    } else {
        Kind::IdempotentWrite
    };
    let value = state
        .counter
        .unary(&call, kind, message, CounterServiceClient::increment)
        .await?;
    Ok(axum::Json(value.into()))
}

#[tracing::instrument(level = "debug", skip_all, fields(name = %name))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let message = pb::GetRequest { name };
    let value = state
        .counter
        .unary(&call, Kind::Read, message, CounterServiceClient::get)
        .await?;
    Ok(axum::Json(value.into()))
}

/// Resets to 0 and returns the value the counter had.
#[tracing::instrument(level = "debug", skip_all, fields(name = %name))]
pub async fn reset(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let message = pb::ResetRequest { name };
    let value = state
        .counter
        .unary(&call, Kind::Write, message, CounterServiceClient::reset)
        .await?;
    Ok(axum::Json(value.into()))
}
