-- Credentials die together and namespaces cannot be claimed over existing repositories.
--
-- users.credential_generation counts password changes and resets: every registry and management
-- token carries the generation it was minted at, and a token from an older generation is refused.
-- namespaces.deleted_at marks a tombstone: the owner (user or organization) was deleted while the
-- namespace still held repositories, so the name stays reserved until they are gone or a site
-- admin adopts it. refresh_tokens gain the client that asked for them and when they were last used,
-- for GET /api/v1/user/refresh-tokens.
ALTER TABLE users ADD COLUMN credential_generation INTEGER NOT NULL DEFAULT 0;

ALTER TABLE namespaces ADD COLUMN deleted_at INTEGER;

ALTER TABLE refresh_tokens ADD COLUMN client_id TEXT NOT NULL DEFAULT '';

ALTER TABLE refresh_tokens ADD COLUMN last_used_at INTEGER;
