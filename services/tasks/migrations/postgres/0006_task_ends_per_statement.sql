-- task_ends (0005) kept per statement instead of per row.
--
-- A row trigger updates one counter row per changed task, in whatever order
-- the statement changes them. Replicas now record many ends in one
-- statement, so two such statements could lock the same counter rows in
-- opposite orders and deadlock. Each trigger below adds up its statement's
-- changes per (queue, status, shard) and writes them in one upsert, in key
-- order: every statement locks counter rows in the same order, so they
-- queue behind each other instead of deadlocking, and a batch of 500 ends
-- costs a handful of counter writes instead of 500.

DROP TRIGGER IF EXISTS task_ends_track ON tasks;
DROP FUNCTION IF EXISTS task_ends_track();

CREATE OR REPLACE FUNCTION task_ends_apply_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO task_ends (queue, status, shard, n)
    SELECT queue, status, (id % 16)::INTEGER AS shard, COUNT(*) FROM new_rows
    WHERE status IN ('succeeded', 'failed', 'cancelled')
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
  ON CONFLICT (queue, status, shard) DO UPDATE SET n = task_ends.n + EXCLUDED.n;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION task_ends_apply_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO task_ends (queue, status, shard, n)
    SELECT queue, status, (id % 16)::INTEGER AS shard, -COUNT(*) FROM old_rows
    WHERE status IN ('succeeded', 'failed', 'cancelled')
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
  ON CONFLICT (queue, status, shard) DO UPDATE SET n = task_ends.n + EXCLUDED.n;
  RETURN NULL;
END
$$;

-- An update changes no id, so a row that stays in one ended state (and
-- queue) counts once in each table and cancels out: the change per key is
-- the new ended rows minus the old, with no join of the two tables.
CREATE OR REPLACE FUNCTION task_ends_apply_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO task_ends (queue, status, shard, n)
    SELECT queue, status, shard, SUM(d) FROM (
      SELECT queue, status, (id % 16)::INTEGER AS shard, 1 AS d FROM new_rows
        WHERE status IN ('succeeded', 'failed', 'cancelled')
      UNION ALL
      SELECT queue, status, (id % 16)::INTEGER, -1 FROM old_rows
        WHERE status IN ('succeeded', 'failed', 'cancelled')
    ) changes
    GROUP BY queue, status, shard HAVING SUM(d) <> 0 ORDER BY queue, status, shard
  ON CONFLICT (queue, status, shard) DO UPDATE SET n = task_ends.n + EXCLUDED.n;
  RETURN NULL;
END
$$;

-- Transition tables allow one event per trigger and no column list.
DROP TRIGGER IF EXISTS task_ends_inserted ON tasks;
CREATE TRIGGER task_ends_inserted AFTER INSERT ON tasks
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION task_ends_apply_inserted();

DROP TRIGGER IF EXISTS task_ends_deleted ON tasks;
CREATE TRIGGER task_ends_deleted AFTER DELETE ON tasks
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION task_ends_apply_deleted();

DROP TRIGGER IF EXISTS task_ends_updated ON tasks;
CREATE TRIGGER task_ends_updated AFTER UPDATE ON tasks
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION task_ends_apply_updated();
