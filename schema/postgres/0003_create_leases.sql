-- Leases let exactly one node at a time run a background job (the purge of abandoned uploads).
-- A node takes a lease when it is free or expired, or renews its own, with one
-- INSERT ... ON CONFLICT DO UPDATE ... WHERE (accepted by PostgreSQL and CockroachDB); the row
-- names the holder and when the lease lapses if the holder stops renewing it (a crashed node frees
-- it that way). No advisory locks: CockroachDB has none. Times are INT8 milliseconds.
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INT8 NOT NULL
);

-- The purge looks for sessions that have not moved for a long time.
CREATE INDEX IF NOT EXISTS uploads_by_updated_at ON uploads (updated_at);
