-- Tenancy and access control for PostgreSQL and CockroachDB: users and organizations share one
-- namespace table; repositories gain a visibility; grants go to users or teams; API keys and
-- refresh tokens are stored hashed; failed logins are counted per user and address so any node can
-- throttle them. The same tables as schema/sqlite/0002_create_identity.sql.
--
-- The rules of 0001_create_registry.sql hold: only SQL both databases accept, every statement
-- idempotent (IF NOT EXISTS), times as INT8 milliseconds, hashes as BYTEA. Names that are listed
-- in order or paged by keyset (namespace, user, team and API key names) are BYTEA (their UTF-8
-- bytes), like repository and tag names, so they sort byte-wise as in SQLite.

-- One name space for users and organizations. A user's namespace has the user's name.
CREATE TABLE IF NOT EXISTS namespaces (
    id          TEXT PRIMARY KEY,
    name        BYTEA NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'org')),
    created_at  INT8 NOT NULL,
    CONSTRAINT namespaces_name_key UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS users (
    id             TEXT PRIMARY KEY,
    namespace_id   TEXT NOT NULL REFERENCES namespaces (id),
    username       BYTEA NOT NULL,
    email          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    is_admin       BOOL NOT NULL DEFAULT false,
    created_at     INT8 NOT NULL,
    updated_at     INT8 NOT NULL,
    CONSTRAINT users_namespace_id_key UNIQUE (namespace_id),
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE IF NOT EXISTS org_members (
    org_id      TEXT NOT NULL REFERENCES namespaces (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at  INT8 NOT NULL,
    PRIMARY KEY (org_id, user_id)
);

CREATE INDEX IF NOT EXISTS org_members_by_user ON org_members (user_id);

CREATE TABLE IF NOT EXISTS teams (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES namespaces (id),
    name        BYTEA NOT NULL,
    created_at  INT8 NOT NULL,
    CONSTRAINT teams_org_id_name_key UNIQUE (org_id, name)
);

CREATE TABLE IF NOT EXISTS team_members (
    team_id     TEXT NOT NULL REFERENCES teams (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    created_at  INT8 NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE INDEX IF NOT EXISTS team_members_by_user ON team_members (user_id);

-- NULL means the repository predates visibility; it is treated as private.
ALTER TABLE repositories ADD COLUMN IF NOT EXISTS visibility TEXT;

-- Grants on one repository to a user or a team.
CREATE TABLE IF NOT EXISTS repo_permissions (
    repo_id       TEXT NOT NULL REFERENCES repositories (id),
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('user', 'team')),
    subject_id    TEXT NOT NULL,
    permission    TEXT NOT NULL CHECK (permission IN ('read', 'write', 'admin')),
    created_at    INT8 NOT NULL,
    PRIMARY KEY (repo_id, subject_kind, subject_id)
);

CREATE INDEX IF NOT EXISTS repo_permissions_by_subject ON repo_permissions (subject_kind, subject_id);

-- API keys (robot credentials): scoped to one repository or one namespace, with a permission cap.
CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id),
    name          BYTEA NOT NULL,
    secret_hash   BYTEA NOT NULL,
    scope_kind    TEXT NOT NULL CHECK (scope_kind IN ('all', 'namespace', 'repository')),
    scope_name    TEXT NOT NULL,
    permission    TEXT NOT NULL CHECK (permission IN ('read', 'write', 'admin')),
    expires_at    INT8,
    revoked_at    INT8,
    last_used_at  INT8,
    created_at    INT8 NOT NULL,
    CONSTRAINT api_keys_user_id_name_key UNIQUE (user_id, name)
);

-- Refresh tokens from `docker login` (offline tokens), bound to a user and a service.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    service      TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL,
    expires_at   INT8 NOT NULL,
    created_at   INT8 NOT NULL
);

CREATE INDEX IF NOT EXISTS refresh_tokens_by_user ON refresh_tokens (user_id);

-- Failed login counters per (username, client address), in fixed windows.
CREATE TABLE IF NOT EXISTS login_failures (
    key           TEXT PRIMARY KEY,
    failures      INT8 NOT NULL,
    window_start  INT8 NOT NULL
);
