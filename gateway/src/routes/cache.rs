//! `/cache/{key}`: the cache service as a small key/value HTTP API.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use mesh_proto::cache::v1 as pb;
use mesh_proto::cache::v1::cache_service_client::CacheServiceClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::AppError;
use crate::extract::{Call, Json, Path};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"value": "hello", "ttl_seconds": 60}))]
pub struct PutValue {
    /// UTF-8 text, at most 1 MiB.
    value: String,
    /// Omitted: the entry lives until evicted. At most 365 days.
    #[schema(minimum = 1, maximum = 31536000)]
    ttl_seconds: Option<u64>,
}

/// The path segment `{key}`: 1..=512 characters.
const KEY: &str = "The key, 1..=512 characters, no NUL (percent-encoded in the path)";

/// A cached value. UTF-8 values come back as `value`; anything else (written
/// over gRPC) as `value_base64`, so no byte is ever altered.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"key": "greeting", "value": "hello"}))]
pub struct CacheValue {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(content_encoding = "base64")]
    pub value_base64: Option<String>,
}

/// What `PUT` stored.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"key": "greeting", "ttl_seconds": 60, "value": "hello"}))]
pub struct StoredValue {
    pub key: String,
    /// `null`: no expiry.
    #[schema(required = true)]
    pub ttl_seconds: Option<u64>,
    pub value: String,
}

fn value_json(key: String, value: Vec<u8>) -> CacheValue {
    match String::from_utf8(value) {
        Ok(text) => CacheValue {
            key,
            value: Some(text),
            value_base64: None,
        },
        Err(err) => CacheValue {
            key,
            value: None,
            value_base64: Some(base64::engine::general_purpose::STANDARD.encode(err.into_bytes())),
        },
    }
}

/// Read a cached value.
#[utoipa::path(get, path = "/cache/{key}", tag = "cache", operation_id = "cache_get",
    params(("key" = String, Path, min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$", description = KEY)),
    responses((status = 200, description = "The value", body = CacheValue)))]
#[tracing::instrument(level = "debug", skip_all, fields(key = %key))]
pub async fn get(
    State(state): State<AppState>,
    call: Call,
    Path(key): Path<String>,
) -> Result<axum::Json<CacheValue>, AppError> {
    let message = pb::GetRequest {
        key: key.clone(),
        ..Default::default()
    };
    let found = state.cache.unary(&call, message, CacheServiceClient::get).await?;
    if !found.found {
        return Err(AppError::NotFound(format!("key {key:?} is not in the cache")));
    }
    Ok(axum::Json(value_json(key, found.value)))
}

/// Store a value.
#[utoipa::path(put, path = "/cache/{key}", tag = "cache", operation_id = "cache_set",
    params(("key" = String, Path, min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$", description = KEY)),
    request_body = PutValue,
    responses((status = 200, description = "Stored", body = StoredValue)))]
#[tracing::instrument(level = "debug", skip_all, fields(key = %key))]
pub async fn put(
    State(state): State<AppState>,
    call: Call,
    Path(key): Path<String>,
    Json(body): Json<PutValue>,
) -> Result<axum::Json<StoredValue>, AppError> {
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
    state.cache.unary(&call, message, CacheServiceClient::set).await?;
    Ok(axum::Json(StoredValue {
        key,
        ttl_seconds: body.ttl_seconds,
        value: body.value,
    }))
}

/// Delete a cached value.
#[utoipa::path(delete, path = "/cache/{key}", tag = "cache", operation_id = "cache_delete",
    params(("key" = String, Path, min_length = 1, max_length = 512, pattern = "^[^\\u0000]*$", description = KEY)),
    responses((status = 204, description = "Deleted")))]
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
        .unary(&call, message, CacheServiceClient::delete)
        .await?
        .deleted;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound(format!("key {key:?} is not in the cache")))
    }
}
