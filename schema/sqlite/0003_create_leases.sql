-- Leases let exactly one node at a time run a background job (the purge of abandoned uploads).
-- A node takes a lease when it is free or expired, or renews its own; the row names the holder
-- and when the lease lapses if the holder stops renewing it (a crashed node frees it that way).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- The purge looks for sessions that have not moved for a long time.
CREATE INDEX uploads_by_updated_at ON uploads (updated_at);
