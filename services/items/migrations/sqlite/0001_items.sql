-- Items: ids come from SQLite's rowid, so they only grow and never repeat.
CREATE TABLE IF NOT EXISTS items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    price_cents BIGINT  NOT NULL CHECK (price_cents >= 0),
    tags        TEXT    NOT NULL DEFAULT '[]', -- JSON array of strings
    created_ms  BIGINT  NOT NULL,
    updated_ms  BIGINT  NOT NULL,
    version     BIGINT  NOT NULL DEFAULT 1
);
