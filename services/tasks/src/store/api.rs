//! What clients call (through `service.rs`): submit, get, list, cancel,
//! retry, and the queue's counts; the limits on what they may ask for.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_sql::now_ms;
use serde_json::Value;
use sqlx::Row;

use super::rows::{COLUMNS, task_from_row};
use super::{CANCELLED, FAILED, MAX_PRIORITY, MIN_PRIORITY, QUEUED, RUNNING, Status, Task, TaskStore};
use crate::error::TaskError;

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
pub const MAX_ATTEMPTS: u32 = 100;

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
    /// When the request was read (its `created` time): a countdown counts
    /// from here, however long the insert then waits for a connection.
    pub submitted_ms: i64,
    pub queue: String,
    pub idempotency_key: Option<String>,
    /// With a key: what the request asked for, so a reuse of the key with a
    /// different request can be told apart from a retry.
    pub fingerprint: Option<String>,
    /// The W3C `traceparent` of the call that queued it (kept so that each
    /// attempt's span links back to that request).
    pub traceparent: Option<String>,
}

#[derive(Debug)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub next_token: Option<String>,
}

/// Queue depth, for `QueueStats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub queued_by_priority: BTreeMap<i32, u64>,
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub oldest_queued_ms: Option<i64>,
}

impl TaskStore {
    /// Validates and queues a task (`kind` must already be known to be
    /// valid). With an idempotency key that was seen before, returns the task
    /// the first submit created, and `false`.
    pub async fn submit(&self, new: NewTask) -> Result<(Task, bool), TaskError> {
        let prepared = prepare(new)?;
        let mut conn = self.pool.acquire().await?;
        let (task, created) = insert(&mut conn, prepared).await?;
        drop(conn);
        if created {
            self.announce(task.run_at_ms.max(task.created_ms)).await;
            self.changed(task.id);
        }
        Ok((task, created))
    }

    /// Queues every task of a batch, or none: all are checked first, then
    /// inserted in one transaction. An error names the task's index; a
    /// reused idempotency key with another request refuses the batch too.
    /// A task whose key was seen before (with the same request) is answered
    /// with the existing task, as [`TaskStore::submit`] does.
    pub async fn submit_many(&self, batch: Vec<NewTask>) -> Result<Vec<(Task, bool)>, TaskError> {
        let prepared = batch
            .into_iter()
            .enumerate()
            .map(|(i, new)| prepare(new).map_err(|e| e.in_batch(i)))
            .collect::<Result<Vec<_>, _>>()?;
        // Keyed tasks go in in key order, so two batches sharing keys take
        // the unique index's locks in one order and cannot deadlock; the
        // answer keeps the request's order.
        // Tasks without a key go in with one statement.
        let mut order: Vec<(usize, Prepared)> = prepared.into_iter().enumerate().collect();
        order.sort_by(|(_, a), (_, b)| a.new.idempotency_key.cmp(&b.new.idempotency_key));
        let keyed_from = order.partition_point(|(_, p)| p.new.idempotency_key.is_none());
        let keyed = order.split_off(keyed_from);
        let mut tx = self.pool.begin().await?;
        let mut out: Vec<Option<(Task, bool)>> = (0..keyed.len() + order.len()).map(|_| None).collect();
        for (i, task) in self.insert_unkeyed(&mut tx, order).await? {
            out[i] = Some((task, true));
        }
        for (i, p) in keyed {
            out[i] = Some(insert(&mut tx, p).await.map_err(|e| e.in_batch(i))?);
        }
        tx.commit().await?;
        let out: Vec<(Task, bool)> = out.into_iter().flatten().collect();
        let created = out.iter().filter(|(_, created)| *created);
        // Workers wake for what is ready now, and the others learn when the
        // first of the later ones becomes ready (they look again then).
        let now = now_ms();
        let ready: Vec<i64> = created.clone().map(|(t, _)| t.run_at_ms).collect();
        if ready.iter().any(|at| *at <= now) {
            self.announce(now).await;
        }
        if let Some(later) = ready.iter().copied().filter(|at| *at > now).min() {
            self.announce(later).await;
        }
        for (task, _) in created {
            self.changed(task.id);
        }
        Ok(out)
    }

    /// Inserts tasks without an idempotency key in one statement (their rows
    /// as JSON, so one statement text whatever the count); returns each with
    /// its index in the batch.
    async fn insert_unkeyed(
        &self,
        conn: &mut sqlx::AnyConnection,
        tasks: Vec<(usize, Prepared)>,
    ) -> Result<Vec<(usize, Task)>, TaskError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(serde::Serialize)]
        struct Row<'a> {
            ord: usize,
            kind: &'a str,
            payload: &'a str,
            priority: i32,
            created: i64,
            max_attempts: i32,
            timeout_ms: Option<i64>,
            ready_at: i64,
            queue: &'a str,
            traceparent: Option<&'a str>,
        }
        let now = now_ms();
        let rows: Vec<Row> = tasks
            .iter()
            .enumerate()
            .map(|(ord, (_, p))| {
                let created = if p.new.submitted_ms > 0 {
                    p.new.submitted_ms
                } else {
                    now
                };
                Row {
                    ord,
                    kind: &p.new.kind,
                    payload: &p.payload_text,
                    priority: p.new.priority,
                    created,
                    max_attempts: p.new.max_attempts.max(1) as i32,
                    timeout_ms: p.timeout_ms,
                    ready_at: p.new.run_at_ms.max(created),
                    queue: &p.new.queue,
                    traceparent: p.new.traceparent.as_deref(),
                }
            })
            .collect();
        let json = serde_json::to_string(&rows).map_err(|e| TaskError::Internal(e.to_string()))?;
        let source = match self.backend {
            mesh_sql::Backend::Postgres => {
                "SELECT * FROM json_to_recordset(CAST($1 AS JSON)) AS r(ord INTEGER, kind TEXT, payload TEXT, \
                     priority INTEGER, created BIGINT, max_attempts INTEGER, timeout_ms BIGINT, ready_at BIGINT, \
                     queue TEXT, traceparent TEXT)"
            }
            mesh_sql::Backend::Sqlite => {
                "SELECT json_extract(value, '$.ord') AS ord, json_extract(value, '$.kind') AS kind, \
                        json_extract(value, '$.payload') AS payload, json_extract(value, '$.priority') AS priority, \
                        json_extract(value, '$.created') AS created, \
                        json_extract(value, '$.max_attempts') AS max_attempts, \
                        json_extract(value, '$.timeout_ms') AS timeout_ms, \
                        json_extract(value, '$.ready_at') AS ready_at, json_extract(value, '$.queue') AS queue, \
                        json_extract(value, '$.traceparent') AS traceparent \
                 FROM json_each($1)"
            }
        };
        // Rows go in in the batch's order (ORDER BY ord), so their ids rise in
        // that order: the returned rows, sorted by id, match it.
        let sql = format!(
            "INSERT INTO tasks (kind, payload, priority, status, attempts, created_ms, updated_ms, max_attempts, \
                 timeout_ms, run_at_ms, queued_ms, eff_priority, queue, traceparent) \
             SELECT kind, payload, priority, '{QUEUED}', 0, created, created, max_attempts, timeout_ms, \
                 ready_at, ready_at, priority, queue, traceparent FROM ({source}) AS r ORDER BY ord \
             RETURNING {COLUMNS}"
        );
        let rows = sqlx::query(&sql).bind(json).fetch_all(&mut *conn).await?;
        let mut inserted = rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?;
        if inserted.len() != tasks.len() {
            return Err(TaskError::Internal(format!(
                "inserted {} of {} tasks",
                inserted.len(),
                tasks.len()
            )));
        }
        inserted.sort_by_key(|t| t.id);
        Ok(tasks.into_iter().map(|(i, _)| i).zip(inserted).collect())
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
            "UPDATE tasks SET status = '{CANCELLED}', finished_ms = $2, updated_ms = $2, \
                 detail = 'cancelled while queued' \
             WHERE id = $1 AND status = '{QUEUED}' RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(id).bind(now).fetch_optional(&self.pool).await? {
            self.changed(id);
            return task_from_row(&row);
        }
        let sql = format!(
            "UPDATE tasks SET cancel_requested = 1, updated_ms = $2 \
             WHERE id = $1 AND status = '{RUNNING}' RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(id).bind(now).fetch_optional(&self.pool).await? {
            self.note_cancel(id);
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
            "UPDATE tasks SET status = '{QUEUED}', attempts = 0, result = NULL, error = NULL, finished_ms = NULL, \
                 run_at_ms = $2, queued_ms = $2, updated_ms = $2, eff_priority = priority, worker = NULL, \
                 lease_until_ms = NULL, cancel_requested = 0, progress_percent = 0, progress_message = '', \
                 detail = 're-queued by RetryTask' \
             WHERE id = $1 AND status IN ('{FAILED}', '{CANCELLED}') RETURNING {COLUMNS}"
        );
        if let Some(row) = sqlx::query(&sql).bind(id).bind(now).fetch_optional(&self.pool).await? {
            self.announce(now).await;
            self.changed(id);
            return task_from_row(&row);
        }
        let task = self.get(id).await?;
        Err(TaskError::FailedPrecondition(format!(
            "task {id} is {}; only a failed or cancelled task can be retried",
            task.status.as_str()
        )))
    }

    /// Tasks ready to run now, per queue and priority (for the metrics).
    pub async fn ready_by_queue(&self) -> Result<Vec<(String, i32, u64)>, TaskError> {
        let rows = sqlx::query(&format!(
            "SELECT queue, priority, COUNT(*) AS n FROM tasks \
             WHERE status = '{QUEUED}' AND run_at_ms <= $1 GROUP BY queue, priority"
        ))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n")?;
                Ok((row.try_get("queue")?, row.try_get("priority")?, n.max(0) as u64))
            })
            .collect()
    }

    /// Counts per status (and per priority for ready tasks).
    /// The queue's counts. Costs what is queued and running, not what
    /// ended: the live counts read the `tasks_live` partial index only, and
    /// the ended counts the `task_ends` table that triggers keep (migration
    /// 0005), however many ended rows the retention keeps.
    pub async fn stats(&self, queue: Option<&str>) -> Result<QueueStats, TaskError> {
        let now = now_ms();
        // Both reads in one snapshot, so the live and the ended counts agree
        // (a task that ends between them is counted once). PostgreSQL's
        // default isolation takes a snapshot per statement: this one, per
        // transaction; SQLite's read transaction already is one.
        let mut tx = self.pool.begin().await?;
        if self.backend == mesh_sql::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let live = sqlx::query(&format!(
            "SELECT status, priority, CASE WHEN run_at_ms > $1 THEN 1 ELSE 0 END AS later, \
                    COUNT(*) AS n, MIN(queued_ms) AS oldest \
             FROM tasks WHERE status IN ('{QUEUED}', '{RUNNING}') AND (CAST($2 AS TEXT) IS NULL OR queue = $2) \
             GROUP BY status, priority, CASE WHEN run_at_ms > $1 THEN 1 ELSE 0 END"
        ))
        .bind(now)
        .bind(queue)
        .fetch_all(&mut *tx)
        .await?;
        let ended = sqlx::query(
            "SELECT status, CAST(SUM(n) AS BIGINT) AS n FROM task_ends \
             WHERE (CAST($1 AS TEXT) IS NULL OR queue = $1) GROUP BY status",
        )
        .bind(queue)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut stats = QueueStats::default();
        for row in live {
            let n = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            let later = row.try_get::<i32, _>("later")? == 1;
            match Status::parse(&row.try_get::<String, _>("status")?)? {
                Status::Queued if later => stats.scheduled += n,
                Status::Queued => {
                    stats.queued += n;
                    *stats.queued_by_priority.entry(row.try_get("priority")?).or_default() += n;
                    let oldest: i64 = row.try_get("oldest")?;
                    stats.oldest_queued_ms = Some(stats.oldest_queued_ms.map_or(oldest, |o| o.min(oldest)));
                }
                Status::Running => stats.running += n,
                // Not selected: ended tasks are counted in task_ends.
                Status::Succeeded | Status::Failed | Status::Cancelled => {}
            }
        }
        for row in ended {
            let n = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            match Status::parse(&row.try_get::<String, _>("status")?)? {
                Status::Succeeded => stats.succeeded += n,
                Status::Failed => stats.failed += n,
                Status::Cancelled => stats.cancelled += n,
                Status::Queued | Status::Running => {}
            }
        }
        Ok(stats)
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

fn encode_token(id: i64) -> String {
    format!("before-{id}")
}

fn decode_token(token: &str) -> Result<i64, TaskError> {
    if token.is_empty() {
        return Ok(i64::MAX);
    }
    token
        .strip_prefix("before-")
        .and_then(mesh_sql::positive_id)
        .ok_or_else(|| TaskError::invalid("page_token", "not a token this service issued"))
}

/// A task checked and ready to insert.
struct Prepared {
    new: NewTask,
    timeout_ms: Option<i64>,
    payload_text: String,
}

/// Every check a task passes before it is inserted.
fn prepare(new: NewTask) -> Result<Prepared, TaskError> {
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
    Ok(Prepared {
        new,
        timeout_ms,
        payload_text,
    })
}

/// Inserts one prepared task on `conn` (a pooled connection or a batch's
/// transaction). With a key seen before: the task it created and `false`,
/// or `IdempotencyKeyReused` if that was a different request.
async fn insert(conn: &mut sqlx::AnyConnection, p: Prepared) -> Result<(Task, bool), TaskError> {
    let Prepared {
        new,
        timeout_ms,
        payload_text,
    } = p;
    let now = if new.submitted_ms > 0 {
        new.submitted_ms
    } else {
        now_ms()
    };
    let ready_at = new.run_at_ms.max(now);
    let sql = format!(
        "INSERT INTO tasks (kind, payload, priority, status, attempts, created_ms, updated_ms, max_attempts, \
             timeout_ms, run_at_ms, queued_ms, eff_priority, queue, idempotency_key, request_fingerprint, \
             traceparent) \
         VALUES ($1, $2, $3, '{QUEUED}', 0, $4, $4, $5, $6, $7, $7, $3, $8, $9, $10, $11) \
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
        .bind(new.traceparent.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        // The key was used before (the insert did nothing, so no second
        // row exists): answer with the task it created, if this is the
        // same request again.
        let sql = format!("SELECT {COLUMNS}, request_fingerprint FROM tasks WHERE idempotency_key = $1");
        let row = sqlx::query(&sql)
            .bind(new.idempotency_key.as_deref())
            .fetch_one(&mut *conn)
            .await?;
        let first: Option<String> = row.try_get("request_fingerprint")?;
        if first.is_some() && first != new.fingerprint {
            return Err(TaskError::IdempotencyKeyReused);
        }
        return Ok((task_from_row(&row)?, false));
    };
    Ok((task_from_row(&row)?, true))
}
