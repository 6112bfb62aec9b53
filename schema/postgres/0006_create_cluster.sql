-- The identity of the deployment this database belongs to: one row, created by the first node
-- that starts (a random id it generates, INSERT ... ON CONFLICT DO NOTHING, so concurrent first
-- starts agree) and read by every node at startup. Nodes sharing this database are one cluster;
-- the id goes into the Redis key prefix and invalidation channel, so two deployments on one Redis
-- never share cache entries, even with the same `cache.key_prefix`. Times are INT8 milliseconds.
CREATE TABLE IF NOT EXISTS cluster (
    singleton   INT8 PRIMARY KEY CHECK (singleton = 1),
    id          TEXT NOT NULL,
    created_at  INT8 NOT NULL
);
