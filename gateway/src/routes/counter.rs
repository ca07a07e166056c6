//! `/counters/{name}`: the counter service. `Idempotency-Key` makes an
//! increment safe to retry: the same key returns the first answer.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use mesh_proto::counter::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::extract::{Call, OptionalJson};
use crate::state::AppState;
use crate::upstream::Kind;

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
    let message = pb::IncrementRequest {
        name,
        delta: Some(body.by),
        idempotency_key: idempotency_key(&headers)?,
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
        .call(&call, kind, |mut c| {
            let r = call.req(message.clone());
            async move { c.increment(r).await }
        })
        .await?;
    Ok(axum::Json(value.into()))
}

#[tracing::instrument(skip_all, fields(name = %name))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let message = pb::GetRequest { name };
    let value = state
        .counter
        .call(&call, Kind::Read, |mut c| {
            let r = call.req(message.clone());
            async move { c.get(r).await }
        })
        .await?;
    Ok(axum::Json(value.into()))
}

/// Resets to 0 and returns the value the counter had.
#[tracing::instrument(skip_all, fields(name = %name))]
pub async fn reset(
    State(state): State<AppState>,
    call: Call,
    Path(name): Path<String>,
) -> Result<axum::Json<CounterJson>, AppError> {
    let message = pb::ResetRequest { name };
    let value = state
        .counter
        .call(&call, Kind::Write, |mut c| {
            let r = call.req(message.clone());
            async move { c.reset(r).await }
        })
        .await?;
    Ok(axum::Json(value.into()))
}
