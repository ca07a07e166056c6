//! A `tasks` row read back as a [`Task`]: the columns every query returns,
//! and the decoding (a row that does not decode is an internal error, never a
//! panic or a guess).

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Status, Task};
use crate::error::TaskError;

/// What every query that returns tasks selects, in this order.
pub(super) const COLUMNS: &str = "id, kind, payload, priority, status, attempts, result, error, \
                       created_ms, started_ms, finished_ms, updated_ms, max_attempts, timeout_ms, run_at_ms, \
                       queue, idempotency_key, attempt_log, progress_percent, progress_message, \
                       cancel_requested, detail, lost_attempts, traceparent";

pub(super) fn task_from_row(row: &AnyRow) -> Result<Task, TaskError> {
    let json = |col: &str, text: String| {
        serde_json::from_str::<Value>(&text).map_err(|e| TaskError::Internal(format!("stored {col} is not JSON: {e}")))
    };
    let payload: String = row.try_get("payload")?;
    let result: Option<String> = row.try_get("result")?;
    let status: String = row.try_get("status")?;
    let attempts: i32 = row.try_get("attempts")?;
    let max_attempts: i32 = row.try_get("max_attempts")?;
    let log: String = row.try_get("attempt_log")?;
    let percent: i32 = row.try_get("progress_percent")?;
    let cancel: i32 = row.try_get("cancel_requested")?;
    Ok(Task {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        payload: json("payload", payload)?,
        priority: row.try_get("priority")?,
        status: Status::parse(&status)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        result: result.map(|r| json("result", r)).transpose()?,
        error: row.try_get("error")?,
        created_ms: row.try_get("created_ms")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        max_attempts: u32::try_from(max_attempts).unwrap_or(1),
        timeout_ms: row.try_get("timeout_ms")?,
        run_at_ms: row.try_get("run_at_ms")?,
        queue: row.try_get("queue")?,
        idempotency_key: row.try_get("idempotency_key")?,
        attempt_log: serde_json::from_str(&log)
            .map_err(|e| TaskError::Internal(format!("stored attempt log is not valid: {e}")))?,
        progress_percent: u32::try_from(percent).unwrap_or(0),
        progress_message: row.try_get("progress_message")?,
        cancel_requested: cancel != 0,
        detail: row.try_get("detail")?,
        lost_attempts: u32::try_from(row.try_get::<i32, _>("lost_attempts")?).unwrap_or(0),
        traceparent: row.try_get("traceparent")?,
    })
}
