//! What the reaper calls, on every replica: queue again the tasks whose
//! worker stopped renewing its lease, age the priorities of waiting tasks,
//! and purge ended tasks past their retention.

use std::time::Duration;

use mesh_sql::{Backend, now_ms};

use super::{CANCELLED, FAILED, MAX_PRIORITY, QUEUED, RUNNING, SUCCEEDED, TaskStore};
use crate::error::TaskError;

/// A task whose worker died this many times is failed: it is the likely
/// cause (a poison pill), and must not take down worker after worker.
pub const LOST_WORKER_ALLOWANCE: i32 = 3;

/// Ready rows one aging statement updates at most (PostgreSQL).
const AGING_CHUNK: u64 = 1000;

impl TaskStore {
    /// Queues again every running task whose lease has expired (its worker
    /// died or hung); one that lost its worker too often fails instead.
    pub async fn requeue_expired(&self) -> Result<u64, TaskError> {
        let now = now_ms();
        // A cancel asked for while the worker was gone still stands.
        let sql = format!(
            "UPDATE tasks SET status = '{CANCELLED}', worker = NULL, lease_until_ms = NULL, finished_ms = $1, \
                 updated_ms = $1, detail = 'cancelled while running (its worker stopped)' \
             WHERE status = '{RUNNING}' AND lease_until_ms < $1 AND cancel_requested = 1"
        );
        let cancelled = sqlx::query(&sql).bind(now).execute(&self.pool).await?;
        let sql = format!(
            "UPDATE tasks SET status = '{FAILED}', worker = NULL, lease_until_ms = NULL, finished_ms = $1, \
                 updated_ms = $1, lost_attempts = lost_attempts + 1, \
                 error = 'its worker stopped (lease expired) too many times', \
                 detail = 'failed: it lost its worker on every allowed attempt' \
             WHERE status = '{RUNNING}' AND lease_until_ms < $1 AND lost_attempts + 1 >= $2"
        );
        let failed = sqlx::query(&sql)
            .bind(now)
            .bind(LOST_WORKER_ALLOWANCE)
            .execute(&self.pool)
            .await?;
        let sql = format!(
            "UPDATE tasks SET status = '{QUEUED}', worker = NULL, lease_until_ms = NULL, updated_ms = $1, \
                 queued_ms = $1, eff_priority = priority, lost_attempts = lost_attempts + 1, \
                 detail = 'queued again: its worker stopped renewing the lease' \
             WHERE status = '{RUNNING}' AND lease_until_ms < $1"
        );
        let requeued = sqlx::query(&sql).bind(now).execute(&self.pool).await?;
        if requeued.rows_affected() > 0 {
            self.announce(now).await;
        }
        Ok(requeued.rows_affected() + failed.rows_affected() + cancelled.rows_affected())
    }

    /// Priority aging: a ready task's effective priority is its priority plus
    /// one per `step` it has been ready, up to the maximum.
    ///
    /// On PostgreSQL in chunks of `AGING_CHUNK` rows, each locked `FOR UPDATE
    /// SKIP LOCKED`: a backlog queued at once reaches each step at once, and
    /// one statement over all of it would hold every ready row while claims
    /// skip them (a claim that finds nothing waits for new work).
    pub async fn age(&self, step: Duration) -> Result<u64, TaskError> {
        let least = match self.backend {
            Backend::Postgres => "LEAST",
            Backend::Sqlite => "MIN",
        };
        let due = format!(
            "status = '{QUEUED}' AND eff_priority < {MAX_PRIORITY} AND queued_ms <= $1 \
             AND {least}({MAX_PRIORITY}, priority + ($1 - queued_ms) / $2) > eff_priority"
        );
        let which = match self.backend {
            Backend::Postgres => {
                format!("id = ANY(ARRAY(SELECT id FROM tasks WHERE {due} LIMIT {AGING_CHUNK} FOR UPDATE SKIP LOCKED))")
            }
            Backend::Sqlite => due,
        };
        let sql = format!(
            "UPDATE tasks SET eff_priority = CAST({least}({MAX_PRIORITY}, priority + ($1 - queued_ms) / $2) AS INTEGER) \
             WHERE {which}"
        );
        let now = now_ms();
        let mut aged = 0;
        loop {
            let done = sqlx::query(&sql)
                .bind(now)
                .bind((step.as_millis() as i64).max(1))
                .execute(&self.pool)
                .await?;
            aged += done.rows_affected();
            if self.backend == Backend::Sqlite || done.rows_affected() < AGING_CHUNK {
                return Ok(aged);
            }
        }
    }

    /// Deletes ended tasks that finished more than `retention` ago.
    pub async fn purge(&self, retention: Duration) -> Result<u64, TaskError> {
        // The state list matches the `tasks_finished` partial index.
        let sql = format!(
            "DELETE FROM tasks WHERE status IN ('{SUCCEEDED}', '{FAILED}', '{CANCELLED}') AND finished_ms < $1"
        );
        let done = sqlx::query(&sql)
            .bind(now_ms() - retention.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
