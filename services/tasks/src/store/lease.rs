//! What a replica's workers call: claim tasks in a batch, each under its
//! own lease, give back claimed tasks that never started, renew every lease
//! the replica holds (learning of cancels), report progress, record how
//! attempts ended (in a batch), and put back what they still hold when their
//! process shuts down.
//!
//! Claiming is one statement for many tasks, safe when many replicas claim
//! at once: on PostgreSQL the candidate rows are locked with `FOR UPDATE SKIP
//! LOCKED` (claimers skip each other's rows instead of waiting); on SQLite
//! every write is serialised by the database, and the `status = 'queued'`
//! guard makes a lost race a no-op. Every later write names the replica and
//! `status = 'running'`, so a replica that lost a lease changes nothing.

use std::collections::HashSet;
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

/// Where a claimed task stands in the claim order: effective priority
/// (highest first), then the time it became ready, then its id.
pub type Rank = (std::cmp::Reverse<i32>, i64, i64);

/// How one attempt ended, ready to be recorded (see
/// [`TaskStore::finish_many`]): the task's next state and what it keeps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finished {
    pub id: i64,
    /// The claim's attempt number: the end is recorded only for that claim.
    attempts: u32,
    #[serde(serialize_with = "status_name")]
    pub status: Status,
    result: Option<String>,
    error: Option<String>,
    pub detail: String,
    attempt_log: String,
    started_ms: i64,
    finished_ms: Option<i64>,
    run_at_ms: Option<i64>,
}

fn status_name<S: serde::Serializer>(status: &Status, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

impl Finished {
    /// The record of `task`'s attempt that started at `started_ms` and
    /// ended at `now` with `outcome`: done, cancelled, failed for good, or
    /// (a failure with attempts left) queued again after `backoff`.
    pub fn new(task: &Task, outcome: Outcome, backoff: Backoff, started_ms: i64, now: i64) -> Result<Self, TaskError> {
        // PostgreSQL's TEXT cannot hold NUL; a kind's message must not fail the write.
        let clean = |error: &str| error.replace('\0', "\u{FFFD}");
        let attempt = Attempt {
            number: task.attempts,
            // Until the end is recorded, the row's started_ms is the claim's time.
            claimed_ms: task.started_ms,
            started_ms,
            finished_ms: now,
            error: match &outcome {
                Outcome::Succeeded(_) => None,
                Outcome::Failed { error, .. } => Some(clean(error)),
                Outcome::Cancelled => Some("cancelled".into()),
            },
            timed_out: matches!(outcome, Outcome::Failed { timed_out: true, .. }),
        };
        let mut log = task.attempt_log.clone();
        log.push(attempt);
        let attempt_log = serde_json::to_string(&log).map_err(|e| TaskError::Internal(e.to_string()))?;
        let (status, result, error, detail, run_at_ms) = match outcome {
            Outcome::Succeeded(v) => (Status::Succeeded, Some(v.to_string()), None, String::new(), None),
            Outcome::Cancelled => (
                Status::Cancelled,
                None,
                None,
                "cancelled while running".to_string(),
                None,
            ),
            Outcome::Failed { error, timed_out } if task.counted_attempts() < task.max_attempts => {
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
                    Some(clean(&error)),
                    detail,
                    Some(now + wait.as_millis() as i64),
                )
            }
            Outcome::Failed { error, timed_out } => {
                let what = if timed_out { "timed out" } else { "failed" };
                let detail = format!(
                    "{what} on its last attempt ({} of {})",
                    task.attempts, task.max_attempts
                );
                (Status::Failed, None, Some(clean(&error)), detail, None)
            }
        };
        Ok(Self {
            id: task.id,
            attempts: task.attempts,
            status,
            result,
            error,
            detail,
            attempt_log,
            started_ms,
            finished_ms: (status != Status::Queued).then_some(now),
            run_at_ms,
        })
    }
}

impl TaskStore {
    /// Takes up to `n` ready tasks from `queues` for the replica `worker`,
    /// each with its own lease of `lease`, in the order they should start
    /// (highest effective priority, then ready longest), each with its
    /// [`Rank`] in that order. One statement
    /// however many: the candidates are locked `FOR UPDATE SKIP LOCKED` on
    /// PostgreSQL (claimers skip each other's rows instead of waiting); on
    /// SQLite writes are serialised and the `status` guard makes a lost race
    /// a no-op.
    pub async fn claim(
        &self,
        worker: &str,
        lease: Duration,
        queues: &[String],
        n: usize,
    ) -> Result<Vec<(Rank, Task)>, TaskError> {
        if n == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        // On PostgreSQL, `= ANY(ARRAY(...))` reads the picked rows by primary
        // key; `IN (SELECT ...)` was planned as a scan of the whole table.
        let (lock, picked) = match self.backend {
            Backend::Postgres => ("FOR UPDATE SKIP LOCKED", "id = ANY(ARRAY(SELECT id FROM picked))"),
            Backend::Sqlite => ("", "id IN (SELECT id FROM picked)"),
        };
        let queue_params: Vec<String> = (0..queues.len()).map(|i| format!("${}", i + 5)).collect();
        let sql = format!(
            "WITH picked AS (SELECT id FROM tasks WHERE status = '{QUEUED}' AND queue IN ({}) AND run_at_ms <= $1 \
                             ORDER BY eff_priority DESC, queued_ms, id LIMIT $4 {lock}) \
             UPDATE tasks SET status = '{RUNNING}', attempts = attempts + 1, started_ms = $1, \
                 updated_ms = $1, worker = $2, lease_until_ms = $3, progress_percent = 0, progress_message = '' \
             WHERE {picked} AND status = '{QUEUED}' \
             RETURNING {COLUMNS}, eff_priority, queued_ms",
            queue_params.join(", ")
        );
        let mut query = sqlx::query(&sql)
            .bind(now)
            .bind(worker)
            .bind(now + lease.as_millis() as i64)
            .bind(i64::try_from(n).unwrap_or(i64::MAX));
        for q in queues {
            query = query.bind(q);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let eff: i32 = row.try_get("eff_priority")?;
            let queued: i64 = row.try_get("queued_ms")?;
            claimed.push((std::cmp::Reverse(eff), queued, task_from_row(row)?));
        }
        // RETURNING does not keep the candidates' order.
        let mut tasks: Vec<(Rank, Task)> = claimed
            .into_iter()
            .map(|(eff, queued, task)| ((eff, queued, task.id), task))
            .collect();
        tasks.sort_by_key(|(rank, _)| *rank);
        for (_, t) in &tasks {
            self.changed(t.id);
        }
        Ok(tasks)
    }

    /// Gives back tasks `worker` claimed but never started (its local queue
    /// at shutdown, or ones that waited there too long): queued again at
    /// once, keeping their place (priority, age) and with the claim's
    /// attempt taken back. Each is named with its claim's attempt number, so
    /// a task that was queued again and claimed anew meanwhile is left alone.
    /// Announced, so any replica's idle workers take them now. Returns how
    /// many went back.
    pub async fn unclaim(&self, worker: &str, tasks: &[(i64, u32)]) -> Result<u64, TaskError> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let pairs = serde_json::to_string(tasks).map_err(|e| TaskError::Internal(e.to_string()))?;
        let now = now_ms();
        let sql = format!(
            "WITH given(g_id, g_attempt) AS ({}) \
             UPDATE tasks SET status = '{QUEUED}', worker = NULL, lease_until_ms = NULL, updated_ms = $2, \
                 attempts = attempts - 1, started_ms = CASE WHEN attempts = 1 THEN NULL ELSE started_ms END \
             FROM given WHERE {} AND id = g_id AND attempts = g_attempt AND worker = $1 AND status = '{RUNNING}'",
            self.claim_pairs("$3"),
            self.by_id("g_id", "given"),
        );
        let serial = self.claimed_rows.lock().await;
        let done = sqlx::query(&sql)
            .bind(worker)
            .bind(now)
            .bind(pairs)
            .execute(&self.pool)
            .await?;
        drop(serial);
        for (id, _) in tasks {
            self.changed(*id);
        }
        if done.rows_affected() > 0 {
            self.announce(now).await;
        }
        Ok(done.rows_affected())
    }

    /// Extends the leases of the claims (id, attempt number) replica
    /// `worker` still tracks, in one statement; returns the ones it found as
    /// (id, attempt number, cancel asked for). A claim it does not return
    /// was lost (queued again, maybe claimed anew). Only tracked claims are
    /// renewed: one the replica gave up on runs out its lease and is queued
    /// again.
    pub async fn renew_all(
        &self,
        worker: &str,
        lease: Duration,
        claims: &[(i64, u32)],
    ) -> Result<Vec<(i64, u32, bool)>, TaskError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "WITH held(h_id, h_attempt) AS ({}) \
             UPDATE tasks SET lease_until_ms = $2 FROM held \
             WHERE {} AND id = h_id AND attempts = h_attempt AND worker = $1 AND status = '{RUNNING}' \
             RETURNING id, attempts, cancel_requested",
            self.claim_pairs("$3"),
            self.by_id("h_id", "held"),
        );
        let _serial = self.claimed_rows.lock().await;
        let rows = sqlx::query(&sql)
            .bind(worker)
            .bind(now_ms() + lease.as_millis() as i64)
            .bind(serde_json::to_string(claims).map_err(|e| TaskError::Internal(e.to_string()))?)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>(0)?,
                    u32::try_from(r.try_get::<i32, _>(1)?).unwrap_or(0),
                    r.try_get::<i32, _>(2)? != 0,
                ))
            })
            .collect()
    }

    /// A subquery of (id, attempt number) pairs from the JSON array bound
    /// at `param` (`[[id, attempts], ...]`).
    fn claim_pairs(&self, param: &str) -> String {
        match self.backend {
            Backend::Postgres => format!(
                "SELECT CAST(value->>0 AS BIGINT), CAST(value->>1 AS INTEGER) FROM json_array_elements(CAST({param} AS JSON))"
            ),
            Backend::Sqlite => {
                format!("SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each({param})")
            }
        }
    }

    /// On PostgreSQL, the rows whose id is in column `column` of CTE `cte`,
    /// read by primary key (a join was planned through the status index,
    /// whose dead entries grow with every task run until vacuum), in id
    /// order; on SQLite, every row (the join does the rest).
    fn by_id(&self, column: &str, cte: &str) -> String {
        match self.backend {
            Backend::Postgres => format!("id = ANY(ARRAY(SELECT {column} FROM {cte}))"),
            Backend::Sqlite => "1 = 1".to_string(),
        }
    }

    /// The tasks replica `worker` holds whose cancel was asked for, as (id,
    /// attempt number).
    pub async fn cancels_requested(&self, worker: &str) -> Result<Vec<(i64, u32)>, TaskError> {
        let sql = format!(
            "SELECT id, attempts FROM tasks WHERE worker = $1 AND status = '{RUNNING}' AND cancel_requested = 1"
        );
        let rows = sqlx::query(&sql).bind(worker).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>(0)?,
                    u32::try_from(r.try_get::<i32, _>(1)?).unwrap_or(0),
                ))
            })
            .collect()
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
    pub async fn progress(&self, task: &Task, worker: &str, percent: u32, message: &str) -> Result<(), TaskError> {
        let sql = format!(
            "UPDATE tasks SET progress_percent = $3, progress_message = $4, updated_ms = $5 \
             WHERE id = $1 AND worker = $2 AND attempts = $6 AND status = '{RUNNING}'"
        );
        sqlx::query(&sql)
            .bind(task.id)
            .bind(worker)
            .bind(percent.min(100) as i32)
            .bind(message)
            .bind(now_ms())
            .bind(task.attempts as i32)
            .execute(&self.pool)
            .await?;
        self.changed(task.id);
        Ok(())
    }

    /// Records how attempts ended, for the tasks `worker` still holds, in
    /// one statement however many: done, failed for good, cancelled, or
    /// queued again after their back-off. Returns the ids whose end was
    /// recorded; the others had lost their lease (another worker owns them
    /// now) and their results are dropped. Watchers are told only once the
    /// statement has committed: nothing is reported before it is durable.
    pub async fn finish_many(&self, worker: &str, ended: &[Finished]) -> Result<HashSet<i64>, TaskError> {
        if ended.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = serde_json::to_string(ended).map_err(|e| TaskError::Internal(e.to_string()))?;
        let done = match self.backend {
            Backend::Postgres => {
                "SELECT * FROM json_to_recordset(CAST($3 AS JSON)) AS d(id BIGINT, attempts INTEGER, status TEXT, \
                     result TEXT, error TEXT, detail TEXT, attempt_log TEXT, started_ms BIGINT, finished_ms BIGINT, \
                     run_at_ms BIGINT)"
            }
            Backend::Sqlite => {
                "SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.attempts') AS attempts, \
                        json_extract(value, '$.status') AS status, \
                        json_extract(value, '$.result') AS result, json_extract(value, '$.error') AS error, \
                        json_extract(value, '$.detail') AS detail, json_extract(value, '$.attempt_log') AS attempt_log, \
                        json_extract(value, '$.started_ms') AS started_ms, \
                        json_extract(value, '$.finished_ms') AS finished_ms, \
                        json_extract(value, '$.run_at_ms') AS run_at_ms \
                 FROM json_each($3)"
            }
        };
        // The ended rows' columns are renamed (e_*), so that every name in
        // SET and RETURNING is the table's own. On PostgreSQL the rows are
        // found by primary key (`= ANY`): left to the join, the planner
        // scanned every index entry of status 'running', dead ones included,
        // which grows with every task run until vacuum.
        let by_id = self.by_id("e_id", "ended");
        let sql = format!(
            "WITH ended(e_id, e_attempt, e_status, e_result, e_error, e_detail, e_log, e_started, e_finished, e_run_at) \
                 AS ({done}) \
             UPDATE tasks SET status = e_status, result = e_result, error = e_error, detail = e_detail, \
                 attempt_log = e_log, started_ms = e_started, finished_ms = e_finished, updated_ms = $2, \
                 lease_until_ms = NULL, \
                 worker = CASE WHEN e_status = '{QUEUED}' THEN NULL ELSE worker END, \
                 run_at_ms = COALESCE(e_run_at, run_at_ms), queued_ms = COALESCE(e_run_at, queued_ms), \
                 eff_priority = CASE WHEN e_status = '{QUEUED}' THEN priority ELSE eff_priority END, \
                 progress_percent = CASE WHEN e_status = '{SUCCEEDED}' THEN 100 ELSE progress_percent END, \
                 progress_message = CASE WHEN e_status = '{SUCCEEDED}' THEN 'done' ELSE progress_message END \
             FROM ended WHERE {by_id} AND id = e_id AND attempts = e_attempt AND worker = $1 \
               AND status = '{RUNNING}' \
             RETURNING id"
        );
        let serial = self.claimed_rows.lock().await;
        let recorded: HashSet<i64> = sqlx::query_scalar(&sql)
            .bind(worker)
            .bind(now_ms())
            .bind(rows)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        drop(serial);
        for id in &recorded {
            self.changed(*id);
        }
        let retry_at = ended
            .iter()
            .filter(|e| recorded.contains(&e.id))
            .filter_map(|e| e.run_at_ms)
            .min();
        if let Some(at) = retry_at {
            self.announce(at).await;
        }
        Ok(recorded)
    }

    /// Puts back every task that replica `worker` still runs (when it shuts
    /// down before they finish), so another can take them at once.
    pub async fn release(&self, worker: &str) -> Result<u64, TaskError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE tasks SET status = '{QUEUED}', worker = NULL, lease_until_ms = NULL, updated_ms = $2, \
                 queued_ms = $2, eff_priority = priority, attempts = attempts - 1, \
                 detail = 'queued again: its worker shut down' \
             WHERE worker = $1 AND status = '{RUNNING}'"
        );
        let done = sqlx::query(&sql).bind(worker).bind(now).execute(&self.pool).await?;
        if done.rows_affected() > 0 {
            self.announce(now).await;
        }
        Ok(done.rows_affected())
    }
}
