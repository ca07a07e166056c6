//! What workers call: claim a task under a lease, renew it (learning of a
//! cancel), report progress, record how the attempt ended, and put back what
//! they still hold when their process shuts down.
//!
//! Claiming is one statement, safe when many workers in many processes claim
//! at once: on PostgreSQL the candidate row is locked with `FOR UPDATE SKIP
//! LOCKED` (workers skip each other's rows instead of waiting); on SQLite every
//! write is serialised by the database, and the `status = 'queued'` guard makes
//! a lost race a no-op. Every later write names the worker and `status =
//! 'running'`, so a worker that lost its lease changes nothing.

use std::time::Duration;

use mesh_sql::{Backend, now_ms};
use serde_json::Value;
use sqlx::Row;

use super::backoff::Backoff;
use super::rows::{COLUMNS, task_from_row};
use super::{Attempt, QUEUED, RUNNING, SUCCEEDED, Status, Task, TaskStore};
use crate::error::TaskError;

/// How a run ended, as a worker reports it.
#[derive(Debug)]
pub enum Outcome {
    Succeeded(Value),
    Failed {
        error: String,
        timed_out: bool,
    },
    /// CancelTask stopped it while it ran.
    Cancelled,
}

/// What a worker learns when it renews its lease.
#[derive(Debug, PartialEq, Eq)]
pub enum Lease {
    Held { cancel_requested: bool },
    Lost,
}

impl TaskStore {
    /// Takes the next ready task from `queues` (highest effective priority,
    /// then ready longest) for `worker`, with a lease of `lease`.
    pub async fn claim(&self, worker: &str, lease: Duration, queues: &[String]) -> Result<Option<Task>, TaskError> {
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let queue_params: Vec<String> = (0..queues.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "UPDATE tasks SET status = '{RUNNING}', attempts = attempts + 1, started_ms = $1, \
                 updated_ms = $1, worker = $2, lease_until_ms = $3, progress_percent = 0, progress_message = '' \
             WHERE id = (SELECT id FROM tasks WHERE status = '{QUEUED}' AND queue IN ({}) AND run_at_ms <= $1 \
                         ORDER BY eff_priority DESC, queued_ms, id LIMIT 1 {lock}) \
               AND status = '{QUEUED}' \
             RETURNING {COLUMNS}",
            queue_params.join(", ")
        );
        let mut query = sqlx::query(&sql)
            .bind(now)
            .bind(worker)
            .bind(now + lease.as_millis() as i64);
        for q in queues {
            query = query.bind(q);
        }
        let row = query.fetch_optional(&self.pool).await?;
        let task = row.as_ref().map(task_from_row).transpose()?;
        if let Some(t) = &task {
            self.changed(t.id);
        }
        Ok(task)
    }

    /// Extends the lease of a task this worker still holds, and tells it
    /// whether a cancel was asked for.
    pub async fn renew(&self, id: i64, worker: &str, lease: Duration) -> Result<Lease, TaskError> {
        let sql = format!(
            "UPDATE tasks SET lease_until_ms = $3 WHERE id = $1 AND worker = $2 AND status = '{RUNNING}' \
             RETURNING cancel_requested"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(worker)
            .bind(now_ms() + lease.as_millis() as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Lease::Held {
                cancel_requested: row.try_get::<i32, _>(0)? != 0,
            },
            None => Lease::Lost,
        })
    }

    /// Whether CancelTask was called for this task while it ran.
    pub async fn cancel_requested(&self, id: i64) -> Result<bool, TaskError> {
        let row = sqlx::query("SELECT cancel_requested FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i32, _>(0))
            .transpose()?
            .is_some_and(|flag| flag != 0))
    }

    /// Records progress a running task reported.
    pub async fn progress(&self, id: i64, worker: &str, percent: u32, message: &str) -> Result<(), TaskError> {
        let sql = format!(
            "UPDATE tasks SET progress_percent = $3, progress_message = $4, updated_ms = $5 \
             WHERE id = $1 AND worker = $2 AND status = '{RUNNING}'"
        );
        sqlx::query(&sql)
            .bind(id)
            .bind(worker)
            .bind(percent.min(100) as i32)
            .bind(message)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        self.changed(id);
        Ok(())
    }

    /// Records how an attempt ended, if `worker` still holds the task: done,
    /// failed for good, cancelled, or queued again after `backoff` when it
    /// failed with attempts left. Returns the task's new state (`None` when
    /// the lease had been lost and the result was dropped).
    pub async fn finish(
        &self,
        task: &Task,
        worker: &str,
        outcome: Outcome,
        backoff: Backoff,
    ) -> Result<Option<Status>, TaskError> {
        let now = now_ms();
        let attempt = Attempt {
            number: task.attempts,
            started_ms: task.started_ms.unwrap_or(now),
            finished_ms: now,
            error: match &outcome {
                Outcome::Succeeded(_) => None,
                Outcome::Failed { error, .. } => Some(error.replace('\0', "\u{FFFD}")),
                Outcome::Cancelled => Some("cancelled".into()),
            },
            timed_out: matches!(outcome, Outcome::Failed { timed_out: true, .. }),
        };
        let mut log = task.attempt_log.clone();
        log.push(attempt);
        let log = serde_json::to_string(&log).map_err(|e| TaskError::Internal(e.to_string()))?;
        let (status, result, error, detail, run_at) = match outcome {
            Outcome::Succeeded(v) => (Status::Succeeded, Some(v.to_string()), None, String::new(), None),
            Outcome::Cancelled => (
                Status::Cancelled,
                None,
                None,
                "cancelled while running".to_string(),
                None,
            ),
            // PostgreSQL's TEXT cannot hold NUL; a kind's message must not fail the write.
            Outcome::Failed { error, timed_out } if task.counted_attempts() < task.max_attempts => {
                let error = error.replace('\0', "\u{FFFD}");
                let wait = backoff.after(task.counted_attempts(), task.id);
                let why = if timed_out { "timed out" } else { "failed" };
                let detail = format!(
                    "attempt {} of {} {why}; retrying in {} ms",
                    task.counted_attempts(),
                    task.max_attempts,
                    wait.as_millis()
                );
                (
                    Status::Queued,
                    None,
                    Some(error),
                    detail,
                    Some(now + wait.as_millis() as i64),
                )
            }
            Outcome::Failed { error, timed_out } => {
                let error = error.replace('\0', "\u{FFFD}");
                let detail = if timed_out {
                    format!(
                        "timed out on its last attempt ({} of {})",
                        task.attempts, task.max_attempts
                    )
                } else {
                    format!(
                        "failed on its last attempt ({} of {})",
                        task.attempts, task.max_attempts
                    )
                };
                (Status::Failed, None, Some(error), detail, None)
            }
        };
        let finished = (status != Status::Queued).then_some(now);
        let sql = format!(
            "UPDATE tasks SET status = $3, result = $4, error = $5, detail = $6, attempt_log = $7, \
                 finished_ms = $8, updated_ms = $9, lease_until_ms = NULL, \
                 worker = CASE WHEN $3 = '{QUEUED}' THEN NULL ELSE worker END, \
                 run_at_ms = COALESCE($10, run_at_ms), queued_ms = COALESCE($10, queued_ms), \
                 eff_priority = CASE WHEN $3 = '{QUEUED}' THEN priority ELSE eff_priority END, \
                 progress_percent = CASE WHEN $3 = '{SUCCEEDED}' THEN 100 ELSE progress_percent END, \
                 progress_message = CASE WHEN $3 = '{SUCCEEDED}' THEN 'done' ELSE progress_message END \
             WHERE id = $1 AND worker = $2 AND status = '{RUNNING}'"
        );
        let done = sqlx::query(&sql)
            .bind(task.id)
            .bind(worker)
            .bind(status.as_str())
            .bind(result)
            .bind(error)
            .bind(detail)
            .bind(log)
            .bind(finished)
            .bind(now)
            .bind(run_at)
            .execute(&self.pool)
            .await?;
        self.changed(task.id);
        if let (Status::Queued, Some(at)) = (status, run_at) {
            self.announce(at).await;
        }
        Ok((done.rows_affected() == 1).then_some(status))
    }

    /// Puts back every task that the workers of process `worker_prefix` still
    /// run (when it shuts down before they finish), so another can take them at once.
    pub async fn release(&self, worker_prefix: &str) -> Result<u64, TaskError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE tasks SET status = '{QUEUED}', worker = NULL, lease_until_ms = NULL, updated_ms = $2, \
                 queued_ms = $2, eff_priority = priority, attempts = attempts - 1, \
                 detail = 'queued again: its worker shut down' \
             WHERE worker LIKE $1 AND status = '{RUNNING}'"
        );
        let done = sqlx::query(&sql)
            .bind(format!("{worker_prefix}-%"))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
