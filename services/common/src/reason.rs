//! A machine-readable reason on a `tonic::Status`, for errors that one gRPC
//! code does not tell apart (e.g. `IDEMPOTENCY_KEY_REUSED` within
//! `INVALID_ARGUMENT`). Services put it in the `error-reason` trailer
//! metadata (and in the message, for people); the gateway reads it to pick
//! the HTTP answer.

use tonic::Status;
use tonic::metadata::MetadataValue;

pub const METADATA_KEY: &str = "error-reason";

/// Tags `status` with `reason` (an upper-case ASCII word).
pub fn set(status: &mut Status, reason: &'static str) {
    status
        .metadata_mut()
        .insert(METADATA_KEY, MetadataValue::from_static(reason));
}

/// The reason a service gave, if any.
pub fn get(status: &Status) -> Option<&str> {
    status.metadata().get(METADATA_KEY).and_then(|v| v.to_str().ok())
}
