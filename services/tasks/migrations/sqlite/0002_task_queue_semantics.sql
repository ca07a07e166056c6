-- Retries, time limits, scheduling with aging, named queues, idempotent
-- submission, an attempt log, progress and cooperative cancellation.
ALTER TABLE tasks ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN timeout_ms BIGINT;
-- Not before this time (countdowns, retry back-off).
ALTER TABLE tasks ADD COLUMN run_at_ms BIGINT NOT NULL DEFAULT 0;
-- When the task became ready to run: FIFO order, and the start of aging.
ALTER TABLE tasks ADD COLUMN queued_ms BIGINT NOT NULL DEFAULT 0;
-- priority + 1 per aging step waited, up to 9: what workers order by.
ALTER TABLE tasks ADD COLUMN eff_priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE tasks ADD COLUMN idempotency_key TEXT;
ALTER TABLE tasks ADD COLUMN attempt_log TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tasks ADD COLUMN progress_percent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN progress_message TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN detail TEXT NOT NULL DEFAULT '';
UPDATE tasks SET queued_ms = created_ms, eff_priority = priority;
DROP INDEX IF EXISTS tasks_claim;
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (queue, status, eff_priority DESC, queued_ms, id);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks (idempotency_key);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (status, finished_ms);
