-- The identity of the deployment this database belongs to: one row, created by the first node
-- that starts (a random id it generates) and read by every node at startup. Nodes sharing this
-- database are one cluster; the id goes into the Redis key prefix and invalidation channel, so two
-- deployments on one Redis never share cache entries, even with the same `cache.key_prefix`.
CREATE TABLE cluster (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    id          TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
