-- Every write records what it changed (change records) and the work those changes cause (work
-- items) in the same transaction; see src/meta/changes.rs and src/meta/queue.rs.
-- Same tables as schema/postgres/0004_create_work_items.sql. Times are INTEGER milliseconds, taken
-- from the caller's clock parameter (database time in production), never from now() in SQL.

-- One durable work queue for every consumer (topic). A (topic, key) pair is queued at most once:
-- an enqueue that meets a queued item merges into it, one that meets a claimed item bumps its
-- version (re-arms it), so the claimer's completion (which removes only the version it claimed)
-- leaves the newer work in place. A claim is a lease: claimed_until lapses if the claimer dies.
-- buried_at is set when an item failed max attempts times (a dead letter, kept for inspection).
CREATE TABLE IF NOT EXISTS work_items (
    topic          TEXT NOT NULL,
    item_key       TEXT NOT NULL,
    payload        TEXT NOT NULL,
    version        INTEGER NOT NULL,
    available_at   INTEGER NOT NULL,
    enqueued_at    INTEGER NOT NULL,
    claimed_by     TEXT,
    claimed_until  INTEGER,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    buried_at      INTEGER,
    PRIMARY KEY (topic, item_key)
);

-- Claims scan a topic's due items in time order.
CREATE INDEX IF NOT EXISTS work_items_due ON work_items (topic, available_at);

-- The change log: what each committed write changed, typed (kind) with a JSON body. Kept for
-- change_retention (audit, debugging, later consumers); pruned by a periodic job.
CREATE TABLE IF NOT EXISTS changes (
    id           TEXT PRIMARY KEY,
    recorded_at  INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    repository   TEXT,
    body         TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS changes_by_time ON changes (recorded_at);

-- "Is this blob linked anywhere" is an index lookup (blob reuse on upload finish, GC).
CREATE INDEX IF NOT EXISTS repository_blobs_by_digest ON repository_blobs (digest);
