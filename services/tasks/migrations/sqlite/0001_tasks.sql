-- The queue. A worker claims the queued row with the highest priority and the
-- lowest id (FIFO within a priority), and holds it under a lease that it
-- renews while it runs; a row whose lease expired is queued again.
CREATE TABLE IF NOT EXISTS tasks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT    NOT NULL,
    payload        TEXT    NOT NULL,          -- JSON
    priority       INTEGER NOT NULL,
    status         TEXT    NOT NULL,          -- queued | running | succeeded | failed | cancelled
    attempts       INTEGER NOT NULL DEFAULT 0,
    result         TEXT,                      -- JSON, when succeeded
    error          TEXT,                      -- when failed
    created_ms     BIGINT  NOT NULL,
    started_ms     BIGINT,
    finished_ms    BIGINT,
    updated_ms     BIGINT  NOT NULL,
    worker         TEXT,
    lease_until_ms BIGINT
);
CREATE INDEX IF NOT EXISTS tasks_claim ON tasks (status, priority DESC, id);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (status, lease_until_ms);
