//! The queue in SQL: submit, claim under a lease, finish (with retries and
//! back-off), cancel, re-queue dead letters, age, purge, count. No tonic.
//!
//! Claiming is one statement, safe when many workers in many processes claim
//! at once: on PostgreSQL the candidate row is locked with `FOR UPDATE SKIP
//! LOCKED` (workers skip each other's rows instead of waiting); on SQLite every
//! write is serialised by the database, and the `status = 'queued'` guard makes
//! a lost race a no-op.

use std::time::Duration;

use mesh_sql::{Backend, now_ms};
use serde_json::Value;
use sqlx::{AnyPool, Row, any::AnyRow};
use tokio::sync::{Notify, broadcast};

use crate::error::TaskError;

pub const MIN_PRIORITY: i32 = 0;
pub const MAX_PRIORITY: i32 = 9;
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self, TaskError> {
        Ok(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            other => {
                return Err(TaskError::Internal(format!("unknown stored status {other:?}")));
            }
        })
    }

    /// Succeeded, failed and cancelled tasks never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub priority: i32,
    pub status: Status,
    pub attempts: u32,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub updated_ms: i64,
    pub max_attempts: u32,
    pub timeout_ms: Option<i64>,
    pub run_at_ms: i64,
    pub queue: String,
    pub idempotency_key: Option<String>,
    pub attempt_log: Vec<Attempt>,
    pub progress_percent: u32,
    pub progress_message: String,
    pub cancel_requested: bool,
    pub detail: String,
    /// Attempts whose worker died (lease expired); not counted against `max_attempts`.
    pub lost_attempts: u32,
}

impl Task {
    /// Attempts that ended with a result (not lost with their worker).
    pub fn counted_attempts(&self) -> u32 {
        self.attempts.saturating_sub(self.lost_attempts)
    }
}

/// One attempt at running a task, as kept in its attempt log.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub started_ms: i64,
    pub finished_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
}

/// What a client asks to queue.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub kind: String,
    pub payload: Value,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout: Option<Duration>,
    /// Not before this time (ms since the epoch); 0 means now.
    pub run_at_ms: i64,
    pub queue: String,
    pub idempotency_key: Option<String>,
    /// With a key: what the request asked for, so a reuse of the key with a
    /// different request can be told apart from a retry.
    pub fingerprint: Option<String>,
}

/// Queue depth, for `QueueStats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub queued_by_priority: std::collections::BTreeMap<i32, u64>,
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub oldest_queued_ms: Option<i64>,
}

/// How long a failed attempt waits before the next: exponential, with jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Three quarters of the exponential delay plus a random part of the
    /// last quarter: retries of many tasks spread out, and (until the cap)
    /// each wait is longer than the one before, whatever the draw.
    pub fn after(&self, attempt: u32, task_id: i64) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let full = exp.min(self.max);
        let quarter = full / 4;
        full - quarter + quarter.mul_f64(unit_random(task_id, attempt))
    }
}

/// A number in [0, 1) that differs per task and attempt (std's randomly keyed hasher).
fn unit_random(task_id: i64, attempt: u32) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(task_id);
    h.write_u32(attempt);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub next_token: Option<String>,
}

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

/// A task whose worker died this many times is failed: it is the likely
/// cause (a poison pill), and must not take down worker after worker.
pub const LOST_WORKER_ALLOWANCE: i32 = 3;
pub const MAX_ATTEMPTS: u32 = 100;

const COLUMNS: &str = "id, kind, payload, priority, status, attempts, result, error, \
                       created_ms, started_ms, finished_ms, updated_ms, max_attempts, timeout_ms, run_at_ms, \
                       queue, idempotency_key, attempt_log, progress_percent, progress_message, \
                       cancel_requested, detail, lost_attempts";

#[derive(Clone)]
pub struct TaskStore {
    pool: AnyPool,
    backend: Backend,
    /// Wakes idle local workers when a task is submitted here. Workers also
    /// poll, for tasks submitted through other replicas.
    submitted: std::sync::Arc<Notify>,
    /// The earliest future `run_at` this process scheduled (a countdown, a
    /// retry's back-off), so idle workers wake for it on time rather than at
    /// their next poll.
    due: std::sync::Arc<std::sync::Mutex<Option<i64>>>,
    /// Ids of tasks this process changed, so watchers answer at once.
    /// (Changes made by other replicas are seen by the watchers' polling.)
    changes: broadcast::Sender<i64>,
}

impl TaskStore {
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self {
            pool,
            backend,
            submitted: std::sync::Arc::new(Notify::new()),
            due: Default::default(),
            changes: broadcast::channel(1024).0,
        }
    }

    pub fn submitted(&self) -> &Notify {
        &self.submitted
    }

    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.changes.subscribe()
    }

    fn changed(&self, id: i64) {
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(id);
    }

    /// Validates and queues a task (`kind` must already be known to be
    /// valid). With an idempotency key that was seen before, returns the task
    /// the first submit created, and `false`.
    pub async fn submit(&self, new: NewTask) -> Result<(Task, bool), TaskError> {
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&new.priority) {
            return Err(TaskError::invalid(
                "priority",
                format!(
                    "must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {}",
                    new.priority
                ),
            ));
        }
        if new.max_attempts > MAX_ATTEMPTS {
            return Err(TaskError::invalid("max_attempts", format!("at most {MAX_ATTEMPTS}")));
        }
        validate_queue(&new.queue)?;
        if new
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 256)
        {
            return Err(TaskError::invalid("idempotency_key", "must be 1 to 256 bytes"));
        }
        if let Some(key) = &new.idempotency_key {
            mesh_sql::check_text(key).map_err(|m| TaskError::invalid("idempotency_key", m))?;
        }
        let timeout_ms = match new.timeout {
            Some(t) if t.is_zero() => return Err(TaskError::invalid("timeout", "must be positive")),
            Some(t) => Some(i64::try_from(t.as_millis()).unwrap_or(i64::MAX).max(1)),
            None => None,
        };
        let payload_text = new.payload.to_string();
        if payload_text.len() > MAX_PAYLOAD_BYTES {
            return Err(TaskError::invalid(
                "payload",
                format!("is {} bytes of JSON; at most {MAX_PAYLOAD_BYTES}", payload_text.len()),
            ));
        }
        let now = now_ms();
        let ready_at = new.run_at_ms.max(now);
        let sql = format!(
            "INSERT INTO tasks (kind, payload, priority, status, attempts, created_ms, updated_ms, max_attempts, \
                 timeout_ms, run_at_ms, queued_ms, eff_priority, queue, idempotency_key, request_fingerprint) \
             VALUES ($1, $2, $3, 'queued', 0, $4, $4, $5, $6, $7, $7, $3, $8, $9, $10) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&new.kind)
            .bind(payload_text)
            .bind(new.priority)
            .bind(now)
            .bind(new.max_attempts.max(1) as i32)
            .bind(timeout_ms)
            .bind(ready_at)
            .bind(&new.queue)
            .bind(new.idempotency_key.as_deref())
            .bind(new.fingerprint.as_deref())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            // The key was used before (the insert did nothing, so no second
            // row exists): answer with the task it created, if this is the
            // same request again.
            let sql = format!("SELECT {COLUMNS}, request_fingerprint FROM tasks WHERE idempotency_key = $1");
            let row = sqlx::query(&sql)
                .bind(new.idempotency_key.as_deref())
                .fetch_one(&self.pool)
                .await?;
            let first: Option<String> = row.try_get("request_fingerprint")?;
            if first.is_some() && first != new.fingerprint {
                return Err(TaskError::IdempotencyKeyReused);
            }
            return Ok((task_from_row(&row)?, false));
        };
        let task = task_from_row(&row)?;
        if ready_at > now {
            self.due_at(ready_at);
        }
        self.wake();
        self.changed(task.id);
        Ok((task, true))
    }

    fn wake(&self) {
        self.submitted.notify_waiters();
        self.submitted.notify_one();
    }

    /// Remembers that a task becomes ready at `at_ms`.
    fn due_at(&self, at_ms: i64) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        if due.is_none_or(|d| at_ms < d || d <= now_ms()) {
            *due = Some(at_ms);
        }
    }

    /// How long until the earliest task this process scheduled becomes
    /// ready, if that is in the future.
    pub fn next_due_in(&self) -> Option<Duration> {
        let due = (*self.due.lock().unwrap_or_else(|p| p.into_inner()))?;
        u64::try_from(due - now_ms()).ok().map(Duration::from_millis)
    }

    pub async fn get(&self, id: i64) -> Result<Task, TaskError> {
        validate_id(id)?;
        let sql = format!("SELECT {COLUMNS} FROM tasks WHERE id = $1");
        match sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await? {
            Some(row) => task_from_row(&row),
            None => Err(TaskError::NotFound(id)),
        }
    }

    /// Newest first; optionally only one status.
    pub async fn list(&self, page_size: i32, token: &str, status: Option<Status>) -> Result<Page, TaskError> {
        let size = match page_size {
            0 => DEFAULT_PAGE,
            1.. if page_size as u32 <= MAX_PAGE => page_size as u32,
            _ => {
                return Err(TaskError::invalid(
                    "page_size",
                    format!("must be between 1 and {MAX_PAGE} (or 0 for {DEFAULT_PAGE}), got {page_size}"),
                ));
            }
        };
        let before = decode_token(token)?;
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks WHERE id < $1 AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
             ORDER BY id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(before)
            .bind(status.map(Status::as_str))
            .bind(i64::from(size) + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut tasks = rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_token = if tasks.len() > size as usize {
            tasks.truncate(size as usize);
            tasks.last().map(|t| encode_token(t.id))
        } else {
            None
        };
        Ok(Page { tasks, next_token })
    }

    /// Cancels a queued task at once; asks a running one to stop (its worker
    /// sees `cancel_requested` and ends it CANCELLED). An ended task cannot be
    /// cancelled.
    pub async fn cancel(&self, id: i64) -> Result<Task, TaskError> {
        validate_id(id)?;
        let now = now_ms();
        let sql = format!(
            "UPDATE tasks SET status = 'cancelled', finished_ms = $2, updated_ms = $2, \
                 detail = 'cancelled while queued' \
             WHERE id = $1 AND status = 'queued' RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(id).bind(now).fetch_optional(&self.pool).await? {
            self.changed(id);
            return task_from_row(&row);
        }
        let sql = format!(
            "UPDATE tasks SET cancel_requested = 1, updated_ms = $2 \
             WHERE id = $1 AND status = 'running' RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(id).bind(now).fetch_optional(&self.pool).await? {
            self.changed(id);
            return task_from_row(&row);
        }
        let task = self.get(id).await?;
        Err(TaskError::FailedPrecondition(format!(
            "task {id} is {}; only a queued or running task can be cancelled",
            task.status.as_str()
        )))
    }

    /// Queues a failed or cancelled task again with a fresh set of attempts.
    pub async fn retry(&self, id: i64) -> Result<Task, TaskError> {
        validate_id(id)?;
        let now = now_ms();
        let sql = format!(
            "UPDATE tasks SET status = 'queued', attempts = 0, result = NULL, error = NULL, finished_ms = NULL, \
                 run_at_ms = $2, queued_ms = $2, updated_ms = $2, eff_priority = priority, worker = NULL, \
                 lease_until_ms = NULL, cancel_requested = 0, progress_percent = 0, progress_message = '', \
                 detail = 're-queued by RetryTask' \
             WHERE id = $1 AND status IN ('failed', 'cancelled') RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(id).bind(now).fetch_optional(&self.pool).await? {
            self.wake();
            self.changed(id);
            return task_from_row(&row);
        }
        let task = self.get(id).await?;
        Err(TaskError::FailedPrecondition(format!(
            "task {id} is {}; only a failed or cancelled task can be retried",
            task.status.as_str()
        )))
    }

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
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_ms = $1, \
                 updated_ms = $1, worker = $2, lease_until_ms = $3, progress_percent = 0, progress_message = '' \
             WHERE id = (SELECT id FROM tasks WHERE status = 'queued' AND queue IN ({}) AND run_at_ms <= $1 \
                         ORDER BY eff_priority DESC, queued_ms, id LIMIT 1 {lock}) \
               AND status = 'queued' \
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
        let row = sqlx::query(
            "UPDATE tasks SET lease_until_ms = $3 WHERE id = $1 AND worker = $2 AND status = 'running' \
             RETURNING cancel_requested",
        )
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
        sqlx::query(
            "UPDATE tasks SET progress_percent = $3, progress_message = $4, updated_ms = $5 \
             WHERE id = $1 AND worker = $2 AND status = 'running'",
        )
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
        let done = sqlx::query(
            "UPDATE tasks SET status = $3, result = $4, error = $5, detail = $6, attempt_log = $7, \
                 finished_ms = $8, updated_ms = $9, lease_until_ms = NULL, \
                 worker = CASE WHEN $3 = 'queued' THEN NULL ELSE worker END, \
                 run_at_ms = COALESCE($10, run_at_ms), queued_ms = COALESCE($10, queued_ms), \
                 eff_priority = CASE WHEN $3 = 'queued' THEN priority ELSE eff_priority END, \
                 progress_percent = CASE WHEN $3 = 'succeeded' THEN 100 ELSE progress_percent END, \
                 progress_message = CASE WHEN $3 = 'succeeded' THEN 'done' ELSE progress_message END \
             WHERE id = $1 AND worker = $2 AND status = 'running'",
        )
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
            self.due_at(at);
            self.wake();
        }
        Ok((done.rows_affected() == 1).then_some(status))
    }

    /// Queues again every running task whose lease has expired (its worker
    /// died or hung); one that lost its worker too often fails instead.
    pub async fn requeue_expired(&self) -> Result<u64, TaskError> {
        let now = now_ms();
        // A cancel asked for while the worker was gone still stands.
        let cancelled = sqlx::query(
            "UPDATE tasks SET status = 'cancelled', worker = NULL, lease_until_ms = NULL, finished_ms = $1, \
                 updated_ms = $1, detail = 'cancelled while running (its worker stopped)' \
             WHERE status = 'running' AND lease_until_ms < $1 AND cancel_requested = 1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        let failed = sqlx::query(
            "UPDATE tasks SET status = 'failed', worker = NULL, lease_until_ms = NULL, finished_ms = $1, \
                 updated_ms = $1, lost_attempts = lost_attempts + 1, \
                 error = 'its worker stopped (lease expired) too many times', \
                 detail = 'failed: it lost its worker on every allowed attempt' \
             WHERE status = 'running' AND lease_until_ms < $1 AND lost_attempts + 1 >= $2",
        )
        .bind(now)
        .bind(LOST_WORKER_ALLOWANCE)
        .execute(&self.pool)
        .await?;
        let requeued = sqlx::query(
            "UPDATE tasks SET status = 'queued', worker = NULL, lease_until_ms = NULL, updated_ms = $1, \
                 queued_ms = $1, eff_priority = priority, lost_attempts = lost_attempts + 1, \
                 detail = 'queued again: its worker stopped renewing the lease' \
             WHERE status = 'running' AND lease_until_ms < $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        if requeued.rows_affected() > 0 {
            self.wake();
        }
        Ok(requeued.rows_affected() + failed.rows_affected() + cancelled.rows_affected())
    }

    /// Priority aging: a ready task's effective priority is its priority plus
    /// one per `step` it has been ready, up to the maximum.
    pub async fn age(&self, step: Duration) -> Result<u64, TaskError> {
        let least = match self.backend {
            Backend::Postgres => "LEAST",
            Backend::Sqlite => "MIN",
        };
        let sql = format!(
            "UPDATE tasks SET eff_priority = CAST({least}({MAX_PRIORITY}, priority + ($1 - queued_ms) / $2) AS INTEGER) \
             WHERE status = 'queued' AND eff_priority < {MAX_PRIORITY} AND queued_ms <= $1 \
               AND {least}({MAX_PRIORITY}, priority + ($1 - queued_ms) / $2) > eff_priority"
        );
        let done = sqlx::query(&sql)
            .bind(now_ms())
            .bind((step.as_millis() as i64).max(1))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes ended tasks that finished more than `retention` ago.
    pub async fn purge(&self, retention: Duration) -> Result<u64, TaskError> {
        let done =
            sqlx::query("DELETE FROM tasks WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_ms < $1")
                .bind(now_ms() - retention.as_millis() as i64)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    /// Counts per status (and per priority for ready tasks).
    pub async fn stats(&self, queue: Option<&str>) -> Result<QueueStats, TaskError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT status, priority, CASE WHEN run_at_ms > $1 THEN 1 ELSE 0 END AS later, \
                    COUNT(*) AS n, MIN(queued_ms) AS oldest \
             FROM tasks WHERE (CAST($2 AS TEXT) IS NULL OR queue = $2) \
             GROUP BY status, priority, CASE WHEN run_at_ms > $1 THEN 1 ELSE 0 END",
        )
        .bind(now)
        .bind(queue)
        .fetch_all(&self.pool)
        .await?;
        let mut stats = QueueStats::default();
        for row in rows {
            let status = Status::parse(&row.try_get::<String, _>("status")?)?;
            let n = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            let later = row.try_get::<i32, _>("later")? == 1;
            match status {
                Status::Queued if later => stats.scheduled += n,
                Status::Queued => {
                    stats.queued += n;
                    *stats.queued_by_priority.entry(row.try_get("priority")?).or_default() += n;
                    let oldest: i64 = row.try_get("oldest")?;
                    stats.oldest_queued_ms = Some(stats.oldest_queued_ms.map_or(oldest, |o| o.min(oldest)));
                }
                Status::Running => stats.running += n,
                Status::Succeeded => stats.succeeded += n,
                Status::Failed => stats.failed += n,
                Status::Cancelled => stats.cancelled += n,
            }
        }
        Ok(stats)
    }

    /// Puts back every task that the workers of process `worker_prefix` still
    /// run (when it shuts down before they finish), so another can take them at once.
    pub async fn release(&self, worker_prefix: &str) -> Result<u64, TaskError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE tasks SET status = 'queued', worker = NULL, lease_until_ms = NULL, updated_ms = $2, \
                 queued_ms = $2, eff_priority = priority, attempts = attempts - 1, \
                 detail = 'queued again: its worker shut down' \
             WHERE worker LIKE $1 AND status = 'running'",
        )
        .bind(format!("{worker_prefix}-%"))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

fn validate_id(id: i64) -> Result<(), TaskError> {
    if id < 1 {
        return Err(TaskError::invalid(
            "id",
            format!("must be a positive integer, got {id}"),
        ));
    }
    Ok(())
}

/// Queue names: 1..=64 of a-z, 0-9, `_` and `-`.
pub fn validate_queue(queue: &str) -> Result<(), TaskError> {
    let ok = !queue.is_empty()
        && queue.len() <= 64
        && queue
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(TaskError::invalid(
            "queue",
            format!("{queue:?}: 1 to 64 of a-z, 0-9, _ and -"),
        ))
    }
}

fn task_from_row(row: &AnyRow) -> Result<Task, TaskError> {
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
    })
}

fn encode_token(id: i64) -> String {
    format!("before-{id}")
}

fn decode_token(token: &str) -> Result<i64, TaskError> {
    if token.is_empty() {
        return Ok(i64::MAX);
    }
    token
        .strip_prefix("before-")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| TaskError::invalid("page_token", "not a token this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_every_attempt_until_the_cap_whatever_the_jitter() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for task in 0..200 {
            let waits: Vec<Duration> = (1..=5).map(|a| b.after(a, task)).collect();
            assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
            assert!(waits[0] >= Duration::from_millis(75) && waits[0] <= Duration::from_millis(100));
        }
        assert!(b.after(30, 1) <= Duration::from_secs(2), "capped");
    }
}
