-- Tenancy and access control: users and organizations share one namespace table; repositories
-- gain a visibility; grants go to users or teams; API keys and refresh tokens are stored hashed;
-- failed logins are counted per user and address so any node can throttle them.

-- One name space for users and organizations. A user's namespace has the user's name.
CREATE TABLE namespaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'org')),
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    namespace_id   TEXT NOT NULL UNIQUE REFERENCES namespaces (id),
    username       TEXT NOT NULL UNIQUE,
    email          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    is_admin       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE org_members (
    org_id      TEXT NOT NULL REFERENCES namespaces (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (org_id, user_id)
);

CREATE INDEX org_members_by_user ON org_members (user_id);

CREATE TABLE teams (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES namespaces (id),
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE team_members (
    team_id     TEXT NOT NULL REFERENCES teams (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE INDEX team_members_by_user ON team_members (user_id);

-- NULL means the repository predates visibility; it is treated as private.
ALTER TABLE repositories ADD COLUMN visibility TEXT;

-- Grants on one repository to a user or a team.
CREATE TABLE repo_permissions (
    repo_id       TEXT NOT NULL REFERENCES repositories (id),
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('user', 'team')),
    subject_id    TEXT NOT NULL,
    permission    TEXT NOT NULL CHECK (permission IN ('read', 'write', 'admin')),
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repo_id, subject_kind, subject_id)
);

CREATE INDEX repo_permissions_by_subject ON repo_permissions (subject_kind, subject_id);

-- API keys (robot credentials): scoped to one repository or one namespace, with a permission cap.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    name         TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    scope_kind   TEXT NOT NULL CHECK (scope_kind IN ('all', 'namespace', 'repository')),
    scope_name   TEXT NOT NULL,
    permission   TEXT NOT NULL CHECK (permission IN ('read', 'write', 'admin')),
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    created_at   INTEGER NOT NULL,
    UNIQUE (user_id, name)
);

-- Refresh tokens from `docker login` (offline tokens), bound to a user and a service.
CREATE TABLE refresh_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    service      TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    expires_at   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);

-- Failed login counters per (username, client address), in fixed windows.
CREATE TABLE login_failures (
    key           TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL,
    window_start  INTEGER NOT NULL
);
