//! The queue in SQL, split by who calls it; no tonic anywhere below here.
//!
//! - `api`: what clients call: submit, get, list, cancel, retry, stats;
//! - `lease`: what workers call: claim in batches under leases, give back,
//!   renew, progress, finish in batches, release at shutdown;
//! - `reaper`: expired leases, priority aging, retention purge;
//! - `rows`: the columns read back and the row -> [`Task`] decoding;
//! - `backoff`: how long a failed attempt waits before the next.
//!
//! This file owns what they share: the [`Task`] record and its [`Status`] (the
//! one place the stored state names are spelled), the [`TaskStore`] handle,
//! and the in-process wake-ups (new work for idle workers, the next due time,
//! changes for watchers). The children's public items are re-exported here,
//! so callers write `store::X` whichever file holds it.

mod api;
mod backoff;
mod lease;
mod reaper;
mod rows;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_sql::{Backend, now_ms};
use serde_json::Value;
use sqlx::AnyPool;
use tokio::sync::{Notify, broadcast};

use crate::error::TaskError;

pub use api::{DEFAULT_PAGE, MAX_ATTEMPTS, MAX_PAGE, MAX_PAYLOAD_BYTES, NewTask, Page, QueueStats, validate_queue};
pub use backoff::Backoff;
pub use lease::{Finished, Outcome, Rank};
pub use reaper::LOST_WORKER_ALLOWANCE;

pub const MIN_PRIORITY: i32 = 0;
/// How many cancels of running tasks a process remembers for its workers.
const CANCEL_NOTES: usize = 1024;
pub const MAX_PRIORITY: i32 = 9;

/// The SQLite migrations, embedded.
pub fn sqlite_migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/sqlite")
}

/// The PostgreSQL migrations, embedded.
pub fn postgres_migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/postgres")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    /// Every state (`as_str` below is the exhaustive list: a new state goes
    /// in both; a unit test checks that each reads back as itself).
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The name stored in the `status` column. Rows and the migrations'
    /// partial indexes hold these names: never rename one.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self, TaskError> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| TaskError::Internal(format!("unknown stored status {s:?}")))
    }

    /// Succeeded, failed and cancelled tasks never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

// The state names for SQL text. They go into a statement as literals, never
// as bound parameters: PostgreSQL uses a partial index (`WHERE status =
// 'queued'`) only when it can see the value when it plans.
const QUEUED: &str = Status::Queued.as_str();
const RUNNING: &str = Status::Running.as_str();
const SUCCEEDED: &str = Status::Succeeded.as_str();
const FAILED: &str = Status::Failed.as_str();
const CANCELLED: &str = Status::Cancelled.as_str();

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
    /// The W3C `traceparent` of the call that queued it, if it came with one.
    pub traceparent: Option<String>,
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
    /// When its replica claimed the task (it may wait in the replica's
    /// local queue before a worker starts it); absent in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_ms: Option<i64>,
    pub started_ms: i64,
    pub finished_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
}

#[derive(Clone)]
pub struct TaskStore {
    pool: AnyPool,
    backend: Backend,
    /// Wakes idle local workers when a task is submitted here. Workers also
    /// poll, for tasks submitted through other replicas.
    submitted: Arc<Notify>,
    /// On PostgreSQL, the channel every replica LISTENs on (see
    /// `crate::wakeups`): a queued task is announced there too, so idle
    /// workers of other replicas start it without waiting for their poll.
    channel: Option<Arc<str>>,
    /// The earliest future `run_at` this process scheduled (a countdown, a
    /// retry's back-off), so idle workers wake for it on time rather than at
    /// their next poll.
    due: Arc<Mutex<Option<i64>>>,
    /// Serialises this process's multi-row writes to the rows it claimed
    /// (renewals, recorded ends, give-backs): run at once on two connections,
    /// two such statements could lock the same rows in different orders.
    claimed_rows: Arc<tokio::sync::Mutex<()>>,
    /// Running tasks whose cancel was asked for through this process (the
    /// latest `CANCEL_NOTES`), so a worker that pops one from its local queue
    /// stops it before it starts.
    cancels: Arc<Mutex<VecDeque<i64>>>,
    /// Ids of tasks this process changed, so watchers answer at once.
    /// (Changes made by other replicas are seen by the watchers' polling.)
    changes: broadcast::Sender<i64>,
}

impl TaskStore {
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self {
            pool,
            backend,
            submitted: Arc::new(Notify::new()),
            channel: None,
            due: Default::default(),
            cancels: Default::default(),
            claimed_rows: Default::default(),
            changes: broadcast::channel(1024).0,
        }
    }

    /// Announces queued tasks on `channel` too (PostgreSQL's NOTIFY).
    pub fn with_channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.into());
        self
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

    /// Notes that a cancel was asked for running task `id` (through this process).
    fn note_cancel(&self, id: i64) {
        let mut notes = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() == CANCEL_NOTES {
            notes.pop_front();
        }
        notes.push_back(id);
    }

    /// Whether a cancel was asked for running task `id` through this
    /// process (forgetting the note).
    pub fn take_cancel_note(&self, id: i64) -> bool {
        let mut notes = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        match notes.iter().position(|n| *n == id) {
            Some(at) => {
                notes.remove(at);
                true
            }
            None => false,
        }
    }

    fn wake(&self) {
        self.submitted.notify_waiters();
        self.submitted.notify_one();
    }

    /// A task becomes ready at `ready_at_ms`: wakes this process's idle
    /// workers and, on PostgreSQL, every replica's (`pg_notify`, delivered
    /// once the task's row is committed, as it already is here). A failed
    /// NOTIFY costs only time: the others find the task at their next poll.
    async fn announce(&self, ready_at_ms: i64) {
        if ready_at_ms > now_ms() {
            self.due_at(ready_at_ms);
        }
        self.wake();
        if let Some(channel) = &self.channel {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel.as_ref())
                .bind(ready_at_ms.to_string())
                .execute(&self.pool)
                .await;
            if let Err(err) = sent {
                tracing::warn!(error = %err, "cannot NOTIFY the other replicas; they find the task at their next poll");
            }
        }
    }

    /// Another replica (or this one) announced a task that becomes ready at
    /// `ready_at_ms` (0: now).
    pub fn heard(&self, ready_at_ms: i64) {
        if ready_at_ms > now_ms() {
            self.due_at(ready_at_ms);
        }
        self.wake();
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

    /// Learns from the table when the next scheduled task becomes ready:
    /// only one due time is kept in memory, so once it has passed, a later
    /// one (queued here or elsewhere) is looked up rather than left to the
    /// poll. An index range read of the live rows (`tasks_live`).
    pub async fn refresh_due(&self) -> Result<(), TaskError> {
        let now = now_ms();
        let next: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(run_at_ms) FROM tasks WHERE status = '{QUEUED}' AND run_at_ms > $1"
        ))
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        if let Some(at) = next {
            self.due_at(at);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_itself() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()).ok(), Some(status));
        }
        assert!(Status::parse("done").is_err());
    }
}
