//! `/counters/{name}`: the counter service. `Idempotency-Key` makes an
//! increment safe to retry: the same key returns the first answer.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use mesh_proto::counter::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::extract::{Call, OptionalJson};
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

pub fn idempotency_key(headers: &HeaderMap) -> Result<String, AppError> {
    match headers.get("idempotency-key") {
        None => Ok(String::new()),
        Some(v) => v
            .to_str()
            .map(str::to_owned)
            .map_err(|_| AppError::invalid("Idempotency-Key: must be visible ASCII")),
    }
}

#[tracing::instrument(skip_all, fields(name = %name))]
pub async fn increment(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<IncrementBody>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let value = state
        .counter
        .clone()
        .increment(call.req(pb::IncrementRequest {
            name,
            delta: Some(body.by),
            idempotency_key: idempotency_key(&headers)?,
        }))
        .await
        .map_err(AppError::upstream("counter"))?
        .into_inner();
    Ok(axum::Json(value.into()))
}

#[tracing::instrument(skip_all, fields(name = %name))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let value = state
        .counter
        .clone()
        .get(call.req(pb::GetRequest { name }))
        .await
        .map_err(AppError::upstream("counter"))?
        .into_inner();
    Ok(axum::Json(value.into()))
}

/// Resets to 0 and returns the value the counter had.
#[tracing::instrument(skip_all, fields(name = %name))]
pub async fn reset(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let value = state
        .counter
        .clone()
        .reset(call.req(pb::ResetRequest { name }))
        .await
        .map_err(AppError::upstream("counter"))?
        .into_inner();
    Ok(axum::Json(value.into()))
}
