//! The queue in SQL: submit, claim under a lease, finish, cancel, list. No tonic.
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
    Failed(String),
}

const COLUMNS: &str = "id, kind, payload, priority, status, attempts, result, error, \
                       created_ms, started_ms, finished_ms, updated_ms";

#[derive(Clone)]
pub struct TaskStore {
    pool: AnyPool,
    backend: Backend,
    /// Wakes idle local workers when a task is submitted here. Workers also
    /// poll, for tasks submitted through other replicas.
    submitted: std::sync::Arc<Notify>,
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
            changes: broadcast::channel(1024).0,
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
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

    /// Validates and queues a task. `kind` must already be known to be valid.
    pub async fn submit(&self, kind: &str, payload: Value, priority: i32) -> Result<Task, TaskError> {
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&priority) {
            return Err(TaskError::invalid(
                "priority",
                format!("must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"),
            ));
        }
        let payload_text = payload.to_string();
        if payload_text.len() > MAX_PAYLOAD_BYTES {
            return Err(TaskError::invalid(
                "payload",
                format!("is {} bytes of JSON; at most {MAX_PAYLOAD_BYTES}", payload_text.len()),
            ));
        }
        let now = now_ms();
        let sql = format!(
            "INSERT INTO tasks (kind, payload, priority, status, attempts, created_ms, updated_ms) \
             VALUES ($1, $2, $3, 'queued', 0, $4, $4) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(kind)
            .bind(payload_text)
            .bind(priority)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        let task = task_from_row(&row)?;
        self.submitted.notify_waiters();
        self.submitted.notify_one();
        self.changed(task.id);
        Ok(task)
    }

    pub async fn get(&self, id: i64) -> Result<Task, TaskError> {
        if id < 1 {
            return Err(TaskError::invalid(
                "id",
                format!("must be a positive integer, got {id}"),
            ));
        }
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

    /// Cancels a queued task. A running or finished one cannot be cancelled.
    pub async fn cancel(&self, id: i64) -> Result<Task, TaskError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE tasks SET status = 'cancelled', finished_ms = $2, updated_ms = $2 \
             WHERE id = $1 AND status = 'queued' RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(id).bind(now).fetch_optional(&self.pool).await? {
            self.changed(id);
            return task_from_row(&row);
        }
        let task = self.get(id).await?;
        Err(TaskError::FailedPrecondition(format!(
            "task {id} is {}; only a queued task can be cancelled",
            task.status.as_str()
        )))
    }

    /// Takes the next task (highest priority, then oldest) for `worker`, with
    /// a lease of `lease`. `None` when nothing is queued.
    pub async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<Task>, TaskError> {
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_ms = $1, \
                 updated_ms = $1, worker = $2, lease_until_ms = $3 \
             WHERE id = (SELECT id FROM tasks WHERE status = 'queued' \
                         ORDER BY priority DESC, id LIMIT 1 {lock}) \
               AND status = 'queued' \
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(now)
            .bind(worker)
            .bind(now + lease.as_millis() as i64)
            .fetch_optional(&self.pool)
            .await?;
        let task = row.as_ref().map(task_from_row).transpose()?;
        if let Some(t) = &task {
            self.changed(t.id);
        }
        Ok(task)
    }

    /// Extends the lease of a task this worker still holds. False when the
    /// worker lost it (its lease expired and the task was queued again).
    pub async fn renew(&self, id: i64, worker: &str, lease: Duration) -> Result<bool, TaskError> {
        let done =
            sqlx::query("UPDATE tasks SET lease_until_ms = $3 WHERE id = $1 AND worker = $2 AND status = 'running'")
                .bind(id)
                .bind(worker)
                .bind(now_ms() + lease.as_millis() as i64)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how a run ended, if `worker` still holds the task.
    pub async fn finish(&self, id: i64, worker: &str, outcome: Outcome) -> Result<bool, TaskError> {
        let (status, result, error) = match outcome {
            Outcome::Succeeded(v) => (Status::Succeeded, Some(v.to_string()), None),
            Outcome::Failed(e) => (Status::Failed, None, Some(e)),
        };
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE tasks SET status = $3, result = $4, error = $5, finished_ms = $6, updated_ms = $6, \
                 lease_until_ms = NULL \
             WHERE id = $1 AND worker = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(worker)
        .bind(status.as_str())
        .bind(result)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.changed(id);
        Ok(done.rows_affected() == 1)
    }

    /// Queues again every running task whose lease has expired (its worker
    /// died or hung). Returns how many.
    pub async fn requeue_expired(&self) -> Result<u64, TaskError> {
        let done = sqlx::query(
            "UPDATE tasks SET status = 'queued', worker = NULL, lease_until_ms = NULL, updated_ms = $1 \
             WHERE status = 'running' AND lease_until_ms < $1",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            self.submitted.notify_waiters();
        }
        Ok(done.rows_affected())
    }

    /// Puts back every task that the workers of process `worker_prefix` still
    /// run (when it shuts down before they finish), so another can take them at once.
    pub async fn release(&self, worker_prefix: &str) -> Result<u64, TaskError> {
        let done = sqlx::query(
            "UPDATE tasks SET status = 'queued', worker = NULL, lease_until_ms = NULL, updated_ms = $2 \
             WHERE worker LIKE $1 AND status = 'running'",
        )
        .bind(format!("{worker_prefix}-%"))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
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
