-- Credentials die together and namespaces cannot be claimed over existing repositories.
-- The same columns as schema/sqlite/0005_add_credential_revocation.sql; every statement is
-- idempotent (CockroachDB commits schema changes outside the runner's transaction).
--
-- users.credential_generation counts password changes and resets: every registry and management
-- token carries the generation it was minted at, and a token from an older generation is refused.
-- namespaces.deleted_at marks a tombstone: the owner (user or organization) was deleted while the
-- namespace still held repositories, so the name stays reserved until they are gone or a site
-- admin adopts it. refresh_tokens gain the client that asked for them and when they were last used,
-- for GET /api/v1/user/refresh-tokens.
ALTER TABLE users ADD COLUMN IF NOT EXISTS credential_generation INT8 NOT NULL DEFAULT 0;

ALTER TABLE namespaces ADD COLUMN IF NOT EXISTS deleted_at INT8;

ALTER TABLE refresh_tokens ADD COLUMN IF NOT EXISTS client_id TEXT NOT NULL DEFAULT '';

ALTER TABLE refresh_tokens ADD COLUMN IF NOT EXISTS last_used_at INT8;
