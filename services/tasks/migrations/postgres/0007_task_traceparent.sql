-- The W3C traceparent of the call that queued a task (its span in the tasks
-- service, or the caller's), so the span of each attempt, on any replica and
-- after any restart, links back to the request that queued it. NULL for
-- tasks queued before this migration or by a caller that sent no trace.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS traceparent TEXT;
