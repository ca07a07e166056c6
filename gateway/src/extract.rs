//! Extractors that turn every kind of bad input into the gateway's JSON error,
//! and the one that gives a handler its call settings ([`Call`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use mesh_common::tracecontext::Trace;
use mesh_upstream::CallContext;
use serde::de::DeserializeOwned;

use crate::error::AppError;
use crate::serve::BodyTimedOut;
use crate::state::AppState;

/// The JSON body of a request, as `T`. Every kind of bad input becomes a 400
/// [`AppError`] whose message is in the API's own terms, naming the field
/// (`price_cents: expected an integer, got a string`), never a Rust type; a
/// body that is not a JSON object is refused, not read as a tuple. Wrong
/// content types get 415 and bodies over the limit 413.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(AppError::BadRequest {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "UNSUPPORTED_MEDIA_TYPE",
                message: "the request body must be JSON, sent with `Content-Type: application/json`".into(),
            });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(AppError::from)?;
        parse_body(&bytes).map(Json)
    }
}

/// A body that could not be read: too slow (408, found in the rejection's
/// source chain), over the size limit (413), or cut off (400).
impl From<BytesRejection> for AppError {
    fn from(rejection: BytesRejection) -> Self {
        if let Some(timed_out) = BodyTimedOut::find(&rejection) {
            return timed_out.clone().into_app_error();
        }
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::BadRequest {
                status,
                code: "PAYLOAD_TOO_LARGE",
                message: "the request body is over the gateway's size limit (--max-body-bytes)".into(),
            };
        }
        Self::invalid(format!("the request body could not be read: {}", rejection.body_text()))
    }
}

/// Like [`Json`], but an empty body means `T::default()` (for optional bodies).
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            || (req.headers().get(axum::http::header::CONTENT_TYPE).is_none()
                && req.headers().get(axum::http::header::TRANSFER_ENCODING).is_none()
                && req.headers().get(axum::http::header::CONTENT_LENGTH).is_none());
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(OptionalJson(value))
    }
}

/// Parses a request body: JSON syntax, then "an object", then the fields.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| AppError::invalid(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(AppError::invalid(format!(
            "the request body must be a JSON object, got {}",
            json_kind(&value)
        )));
    }
    let value = whole_numbers_as_integers(value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = plain_words(&e.into_inner().to_string());
        AppError::invalid(if path == "." {
            message
        } else {
            format!("{path}: {message}")
        })
    })
}

/// Numbers written with a fraction of zero (`150.0`, `1e3`) as the integers
/// they are. JSON has one number type, and JSON Schema's `integer` is "a
/// number with no fractional part", so a client may write `"price_cents":
/// 150.0`; serde would refuse it for an integer field. Numbers beyond the
/// 64-bit integers, and ones with a fraction, stay as they are (and are
/// refused where an integer is expected). Arbitrary JSON (a task's payload)
/// loses nothing: its numbers travel as doubles, where the two are one value.
fn whole_numbers_as_integers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^63 and 2^64 are exact doubles; `as` saturates, so the range
            // checks come first.
            let whole = f.fract() == 0.0;
            if whole && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
                Value::from(f as i64)
            } else if whole && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Value::from(f as u64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers_as_integers).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, whole_numbers_as_integers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// "an array", "a string", ...: a JSON value's kind, as the API speaks of it.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Rewrites serde's messages ("invalid type: string \"x\", expected i64")
/// in the API's terms ("expected an integer, got a string"): JSON kinds,
/// never Rust types.
fn plain_words(message: &str) -> String {
    let expected = |rust: &str| -> String {
        let rust = rust.trim();
        let word = match rust {
            "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
            "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
            "f32" | "f64" => "a number",
            "a sequence" | "a vec" => "an array",
            "a map" => "an object",
            "a boolean" | "a string" | "a borrowed string" | "a character" => {
                return rust.replace("borrowed ", "");
            }
            other if other.starts_with("struct ") || other.starts_with("a map") => "an object",
            other if other.starts_with("a sequence") || other.starts_with("tuple") => "an array",
            other => return other.to_string(),
        };
        word.to_string()
    };
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((got, want)) = rest.rsplit_once(", expected ")
    {
        let got = match got.split_whitespace().next().unwrap_or_default() {
            "integer" | "floating" => "a number",
            "string" => "a string",
            "boolean" => "a boolean",
            "sequence" => "an array",
            "map" => "an object",
            "null" | "unit" => "null",
            _ => got,
        };
        return format!("expected {}, got {got}", expected(want));
    }
    if let Some(rest) = message.strip_prefix("invalid value: ")
        && let Some((got, want)) = rest.rsplit_once(", expected ")
    {
        return format!("expected {}, got {}", expected(want), got.replace('`', ""));
    }
    if message.starts_with("invalid length") {
        return "has the wrong number of elements".into();
    }
    // "missing field `name`", "unknown field `x`, expected one of `a`, `b`",
    // "unknown variant ..." already speak of fields and values.
    message.to_string()
}

/// `axum::extract::Query` with the gateway's error shape and wording.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(Query).map_err(|e| {
            let path = e.path().to_string();
            let message = plain_words(&e.into_inner().to_string());
            AppError::invalid(if path == "." {
                format!("query string: {message}")
            } else {
                format!("query parameter {path}: {message}")
            })
        })
    }
}

/// One path segment, percent-decoded, with the gateway's error shape (a
/// segment that is not UTF-8, such as `%ff`, is a 400 JSON error).
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(axum::extract::rejection::PathRejection::FailedToDeserializePathParams(e)) => {
                let message = match e.kind() {
                    axum::extract::path::ErrorKind::InvalidUtf8InPathParam { key } => {
                        format!("path segment {{{key}}}: not valid UTF-8 once percent-decoded")
                    }
                    _ => plain_words(&e.body_text()),
                };
                Err(AppError::invalid(message))
            }
            Err(other) => Err(AppError::invalid(other.body_text())),
        }
    }
}

/// The request's call settings ([`CallContext`]: the deadline every service
/// call of the request shares, and the request id each one forwards), read
/// from the request: the deadline is `--route-timeout-ms` from now.
#[derive(Clone, Debug)]
pub struct Call(pub CallContext);

impl std::ops::Deref for Call {
    type Target = CallContext;

    fn deref(&self) -> &CallContext {
        &self.0
    }
}

impl FromRequestParts<AppState> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let principal = parts.extensions.get::<mesh_auth::Principal>().map(|p| p.name.clone());
        Ok(Call(
            CallContext::new(request_id, state.route_timeout)
                .with_principal(principal)
                .with_trace(parts.extensions.get::<Trace>().cloned()),
        ))
    }
}

/// The `Idempotency-Key` header ("" when absent), read without copying the
/// rest of the headers.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(String::new())),
            Some(v) => v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 256)
                .map(|k| IdempotencyKey(k.to_owned()))
                .ok_or_else(|| AppError::invalid("Idempotency-Key: must be 1 to 256 visible ASCII characters")),
        }
    }
}

/// Parses a path segment that must be a positive id, naming it in the error.
pub fn parse_id(raw: &str, what: &str) -> Result<i64, AppError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::invalid(format!("{what}: must be a positive integer, got {raw:?}")))
}
