-- What a submit with an idempotency key asked for (SHA-256 of its fields), so
-- a reuse of the key with a different request is refused instead of answered
-- with the first task. NULL for tasks submitted before this column existed.
ALTER TABLE tasks ADD COLUMN request_fingerprint TEXT;
