-- The registry's core tables: repositories, content-addressed blobs and their links to
-- repositories, manifests with their references, tags, and resumable upload sessions.
-- Times are milliseconds since the Unix epoch.

CREATE TABLE repositories (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- One row per distinct blob content, shared by every repository that links it.
-- storage_key records where the bytes live, so a finished upload never needs a copy.
CREATE TABLE blobs (
    digest       TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    storage_key  TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

-- Which repositories may serve a blob.
CREATE TABLE repository_blobs (
    repo_id     TEXT NOT NULL REFERENCES repositories (id),
    digest      TEXT NOT NULL REFERENCES blobs (digest),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
);

-- Manifests and indexes, stored byte-exact.
CREATE TABLE manifests (
    repo_id         TEXT NOT NULL REFERENCES repositories (id),
    digest          TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    payload         BLOB NOT NULL,
    size            INTEGER NOT NULL,
    subject_digest  TEXT,
    artifact_type   TEXT,
    annotations     TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
);

CREATE INDEX manifests_by_subject ON manifests (repo_id, subject_digest);

-- Blobs (config, layers) a manifest references; a referenced blob cannot be unlinked.
CREATE TABLE manifest_blobs (
    repo_id          TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    blob_digest      TEXT NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, blob_digest)
);

CREATE INDEX manifest_blobs_by_blob ON manifest_blobs (repo_id, blob_digest);

-- Child manifests an index references; a referenced child cannot be deleted.
CREATE TABLE manifest_children (
    repo_id          TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    child_digest     TEXT NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, child_digest)
);

CREATE INDEX manifest_children_by_child ON manifest_children (repo_id, child_digest);

CREATE TABLE tags (
    repo_id          TEXT NOT NULL REFERENCES repositories (id),
    name             TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name)
);

CREATE INDEX tags_by_manifest ON tags (repo_id, manifest_digest);

-- Upload sessions: the byte offset and the serialized hash state after the last accepted chunk,
-- so any node (or a restarted one) can take the next chunk.
CREATE TABLE uploads (
    id           TEXT PRIMARY KEY,
    repo_id      TEXT NOT NULL REFERENCES repositories (id),
    byte_offset  INTEGER NOT NULL,
    hash_state   BLOB NOT NULL,
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- The stored objects that make up an upload so far, in offset order.
CREATE TABLE upload_parts (
    upload_id     TEXT NOT NULL REFERENCES uploads (id),
    start_offset  INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    storage_key   TEXT NOT NULL,
    PRIMARY KEY (upload_id, start_offset)
);
