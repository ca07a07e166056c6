-- Retries, time limits, scheduling with aging, named queues, idempotent
-- submission, an attempt log, progress and cooperative cancellation.
ALTER TABLE tasks ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN timeout_ms BIGINT;
ALTER TABLE tasks ADD COLUMN run_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN queued_ms BIGINT NOT NULL DEFAULT 0;
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
-- Claiming is a seek in this partial index: one queue, highest effective
-- priority, then the task ready longest.
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (queue, eff_priority DESC, queued_ms, id) WHERE status = 'queued';
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks (idempotency_key);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_ms) WHERE status IN ('succeeded', 'failed', 'cancelled');
