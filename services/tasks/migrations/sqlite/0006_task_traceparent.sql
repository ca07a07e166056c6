-- The W3C traceparent of the call that queued a task (see the PostgreSQL
-- migration): each attempt's span links back to the request that queued it.
ALTER TABLE tasks ADD COLUMN traceparent TEXT;
