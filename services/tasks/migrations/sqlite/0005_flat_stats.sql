-- QueueStats in time that follows the queue, not the day's history (see the
-- PostgreSQL migration): live counts from a partial index of live rows, ended
-- counts from task_ends, kept exact by triggers.
CREATE INDEX IF NOT EXISTS tasks_live ON tasks (queue, status, priority, run_at_ms, queued_ms)
  WHERE status IN ('queued', 'running');

CREATE TABLE IF NOT EXISTS task_ends (
  queue TEXT NOT NULL,
  status TEXT NOT NULL,
  shard INTEGER NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (queue, status, shard)
);

INSERT INTO task_ends (queue, status, shard, n)
  SELECT queue, status, id % 16, COUNT(*) FROM tasks
  WHERE status IN ('succeeded', 'failed', 'cancelled')
  GROUP BY queue, status, id % 16;

CREATE TRIGGER IF NOT EXISTS task_ends_insert AFTER INSERT ON tasks
  WHEN NEW.status IN ('succeeded', 'failed', 'cancelled')
BEGIN
  INSERT OR IGNORE INTO task_ends (queue, status, shard, n) VALUES (NEW.queue, NEW.status, NEW.id % 16, 0);
  UPDATE task_ends SET n = n + 1 WHERE queue = NEW.queue AND status = NEW.status AND shard = NEW.id % 16;
END;

CREATE TRIGGER IF NOT EXISTS task_ends_leave AFTER UPDATE OF status, queue ON tasks
  WHEN OLD.status IN ('succeeded', 'failed', 'cancelled')
   AND (NEW.status IS NOT OLD.status OR NEW.queue IS NOT OLD.queue)
BEGIN
  UPDATE task_ends SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status AND shard = OLD.id % 16;
END;

CREATE TRIGGER IF NOT EXISTS task_ends_enter AFTER UPDATE OF status, queue ON tasks
  WHEN NEW.status IN ('succeeded', 'failed', 'cancelled')
   AND (NEW.status IS NOT OLD.status OR NEW.queue IS NOT OLD.queue)
BEGIN
  INSERT OR IGNORE INTO task_ends (queue, status, shard, n) VALUES (NEW.queue, NEW.status, NEW.id % 16, 0);
  UPDATE task_ends SET n = n + 1 WHERE queue = NEW.queue AND status = NEW.status AND shard = NEW.id % 16;
END;

CREATE TRIGGER IF NOT EXISTS task_ends_delete AFTER DELETE ON tasks
  WHEN OLD.status IN ('succeeded', 'failed', 'cancelled')
BEGIN
  UPDATE task_ends SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status AND shard = OLD.id % 16;
END;
