-- Attempts cut short because the worker's process died (its lease expired):
-- not counted against max_attempts, but limited on their own (a task that
-- keeps killing its workers must not loop forever).
ALTER TABLE tasks ADD COLUMN lost_attempts INTEGER NOT NULL DEFAULT 0;
