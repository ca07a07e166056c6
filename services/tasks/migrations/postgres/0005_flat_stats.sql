-- QueueStats in time that follows the queue, not the day's history.
-- The live counts (queued, scheduled, running, by priority, the oldest ready
-- task) come from this partial index alone: live rows only.
CREATE INDEX IF NOT EXISTS tasks_live ON tasks (queue, status, priority, run_at_ms, queued_ms)
  WHERE status IN ('queued', 'running');

-- The ended counts come from task_ends, which a trigger keeps exact as rows
-- enter an ended state, leave it (RetryTask), or are deleted (retention).
-- 16 shards per queue and state (by task id), so completions on many
-- workers rarely wait on one counter row.
CREATE TABLE IF NOT EXISTS task_ends (
  queue TEXT NOT NULL,
  status TEXT NOT NULL,
  shard INTEGER NOT NULL,
  n BIGINT NOT NULL,
  PRIMARY KEY (queue, status, shard)
);

INSERT INTO task_ends (queue, status, shard, n)
  SELECT queue, status, (id % 16)::INTEGER, COUNT(*) FROM tasks
  WHERE status IN ('succeeded', 'failed', 'cancelled')
  GROUP BY queue, status, (id % 16)::INTEGER;

-- SET search_path FROM CURRENT: `task_ends` is this schema's, whatever the
-- search_path of the session that changes a task.
CREATE OR REPLACE FUNCTION task_ends_track() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP <> 'INSERT' AND OLD.status IN ('succeeded', 'failed', 'cancelled')
     AND (TG_OP = 'DELETE' OR NEW.status IS DISTINCT FROM OLD.status OR NEW.queue IS DISTINCT FROM OLD.queue) THEN
    UPDATE task_ends SET n = n - 1
      WHERE queue = OLD.queue AND status = OLD.status AND shard = (OLD.id % 16)::INTEGER;
  END IF;
  IF TG_OP <> 'DELETE' AND NEW.status IN ('succeeded', 'failed', 'cancelled')
     AND (TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status OR NEW.queue IS DISTINCT FROM OLD.queue) THEN
    INSERT INTO task_ends (queue, status, shard, n) VALUES (NEW.queue, NEW.status, (NEW.id % 16)::INTEGER, 1)
      ON CONFLICT (queue, status, shard) DO UPDATE SET n = task_ends.n + 1;
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS task_ends_track ON tasks;
CREATE TRIGGER task_ends_track AFTER INSERT OR DELETE OR UPDATE OF status, queue ON tasks
  FOR EACH ROW EXECUTE FUNCTION task_ends_track();
