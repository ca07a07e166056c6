//! `/cache/{key}`: the cache service as a small key/value HTTP API.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use mesh_proto::cache::v1 as pb;
use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use mesh_upstream::Kind;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::AppError;
use crate::extract::{Call, Json, Path};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutValue {
    value: String,
    /// Omitted: the entry lives until evicted.
    ttl_seconds: Option<u64>,
}

/// UTF-8 values come back as `value`; anything else (written over gRPC) as
/// `value_base64`, so no byte is ever altered.
fn value_json(key: String, value: Vec<u8>) -> Value {
    match String::from_utf8(value) {
        Ok(text) => json!({"key": key, "value": text}),
        Err(err) => json!({
            "key": key,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(err.into_bytes()),
        }),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(key = %key))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(key): Path<String>,
) -> Result<axum::Json<Value>, AppError> {
    let message = pb::GetRequest {
        key: key.clone(),
        ..Default::default()
    };
    let found = state
        .cache
        .unary(&call, Kind::Read, message, CacheServiceClient::get)
        .await?;
    if !found.found {
        return Err(AppError::NotFound(format!("key {key:?} is not in the cache")));
    }
    Ok(axum::Json(value_json(key, found.value)))
}

#[tracing::instrument(level = "debug", skip_all, fields(key = %key))]
pub async fn put(
    State(state): State<AppState>,
    call: Call,
    Path(key): Path<String>,
    Json(body): Json<PutValue>,
) -> Result<axum::Json<Value>, AppError> {
    let ttl = match body.ttl_seconds {
        None => None,
        Some(0) => {
            return Err(AppError::invalid(
                "ttl_seconds: must be positive (omit it for no expiry)",
            ));
        }
        Some(s) => Some(
            prost_types::Duration::try_from(Duration::from_secs(s))
                .map_err(|_| AppError::invalid("ttl_seconds: too large (at most 365 days)"))?,
        ),
    };
    let message = pb::SetRequest {
        key: key.clone(),
        value: body.value.clone().into_bytes(),
        ttl,
        namespace: String::new(),
    };
    // Setting a key to one value twice is harmless: safe to retry.
    state
        .cache
        .unary(&call, Kind::IdempotentWrite, message, CacheServiceClient::set)
        .await?;
    Ok(axum::Json(
        json!({"key": key, "value": body.value, "ttl_seconds": body.ttl_seconds}),
    ))
}

#[tracing::instrument(level = "debug", skip_all, fields(key = %key))]
pub async fn delete(
    State(state): State<AppState>,
    call: Call,
    Path(key): Path<String>,
) -> Result<StatusCode, AppError> {
    let message = pb::DeleteRequest {
        key: key.clone(),
        ..Default::default()
    };
    // Not retried: a retry of a delete that did happen would answer 404.
    let deleted = state
        .cache
        .unary(&call, Kind::Write, message, CacheServiceClient::delete)
        .await?
        .deleted;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound(format!("key {key:?} is not in the cache")))
    }
}
