-- The registry's core tables for PostgreSQL and CockroachDB: repositories, content-addressed blobs
-- and their links to repositories, manifests with their references, tags, and resumable upload
-- sessions. The same tables as schema/sqlite/0001_create_registry.sql.
--
-- Portability rules (checked by the forbidden-construct test in src/meta/migrate.rs):
-- - Only SQL that both PostgreSQL and CockroachDB accept: explicit primary keys (TEXT ids made by
--   the application, digests), no serial columns or sequences, no triggers, no LISTEN/NOTIFY, no
--   advisory locks, no extensions, no PostgreSQL-only partitioning.
-- - Every statement is idempotent (IF NOT EXISTS). CockroachDB commits DDL outside the surrounding
--   transaction (autocommit_before_ddl is on by default since v25.1, and older versions do not make
--   several schema changes in one transaction atomic), so a migration interrupted half-way must be
--   safe to run again. On PostgreSQL the runner applies the file and records its version in one
--   transaction.
-- - Times are INT8 milliseconds since the Unix epoch; payloads and hash states are BYTEA.
--
-- Repository and tag names are BYTEA (their UTF-8 bytes), not TEXT. Listings page by keyset
-- (`name > $after ORDER BY name`) and must come out in byte-wise lexical order, like SQLite's BINARY
-- collation. TEXT compares with the database's collation, which on PostgreSQL is locale-dependent
-- (en_US.UTF-8 sorts 'B' between 'a' and 'c' and ignores punctuation at first), and the fix
-- PostgreSQL offers, a column declared COLLATE "C", is rejected by CockroachDB ("invalid locale C";
-- cockroachdb/cockroach#108657: only expressions, not columns, accept "C", and only since v22.2).
-- BYTEA compares byte by byte on both databases, so the primary key and unique index serve the
-- ordered keyset scans directly. Read a name in psql with convert_from(name, 'UTF8').

CREATE TABLE IF NOT EXISTS repositories (
    id          TEXT PRIMARY KEY,
    name        BYTEA NOT NULL,
    created_at  INT8 NOT NULL,
    CONSTRAINT repositories_name_key UNIQUE (name)
);

-- One row per distinct blob content, shared by every repository that links it.
-- storage_key records where the bytes live, so a finished upload never needs a copy.
CREATE TABLE IF NOT EXISTS blobs (
    digest       TEXT PRIMARY KEY,
    size         INT8 NOT NULL,
    storage_key  TEXT NOT NULL,
    created_at   INT8 NOT NULL
);

-- Which repositories may serve a blob.
CREATE TABLE IF NOT EXISTS repository_blobs (
    repo_id     TEXT NOT NULL REFERENCES repositories (id),
    digest      TEXT NOT NULL REFERENCES blobs (digest),
    created_at  INT8 NOT NULL,
    PRIMARY KEY (repo_id, digest)
);

-- Manifests and indexes, stored byte-exact.
CREATE TABLE IF NOT EXISTS manifests (
    repo_id         TEXT NOT NULL REFERENCES repositories (id),
    digest          TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    size            INT8 NOT NULL,
    subject_digest  TEXT,
    artifact_type   TEXT,
    annotations     TEXT,
    created_at      INT8 NOT NULL,
    PRIMARY KEY (repo_id, digest)
);

CREATE INDEX IF NOT EXISTS manifests_by_subject ON manifests (repo_id, subject_digest);

-- Blobs (config, layers) a manifest references; a referenced blob cannot be unlinked.
CREATE TABLE IF NOT EXISTS manifest_blobs (
    repo_id          TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    blob_digest      TEXT NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, blob_digest)
);

CREATE INDEX IF NOT EXISTS manifest_blobs_by_blob ON manifest_blobs (repo_id, blob_digest);

-- Child manifests an index references; a referenced child cannot be deleted.
CREATE TABLE IF NOT EXISTS manifest_children (
    repo_id          TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    child_digest     TEXT NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, child_digest)
);

CREATE INDEX IF NOT EXISTS manifest_children_by_child ON manifest_children (repo_id, child_digest);

-- Tags; the primary key (repo_id, name) serves the ordered tag listing.
CREATE TABLE IF NOT EXISTS tags (
    repo_id          TEXT NOT NULL REFERENCES repositories (id),
    name             BYTEA NOT NULL,
    manifest_digest  TEXT NOT NULL,
    updated_at       INT8 NOT NULL,
    PRIMARY KEY (repo_id, name)
);

CREATE INDEX IF NOT EXISTS tags_by_manifest ON tags (repo_id, manifest_digest);

-- Upload sessions: the byte offset and the serialized hash state after the last accepted chunk,
-- so any node (or a restarted one) can take the next chunk.
CREATE TABLE IF NOT EXISTS uploads (
    id           TEXT PRIMARY KEY,
    repo_id      TEXT NOT NULL REFERENCES repositories (id),
    byte_offset  INT8 NOT NULL,
    hash_state   BYTEA NOT NULL,
    started_at   INT8 NOT NULL,
    updated_at   INT8 NOT NULL
);

-- The stored objects that make up an upload so far, in offset order.
CREATE TABLE IF NOT EXISTS upload_parts (
    upload_id     TEXT NOT NULL REFERENCES uploads (id),
    start_offset  INT8 NOT NULL,
    size          INT8 NOT NULL,
    storage_key   TEXT NOT NULL,
    PRIMARY KEY (upload_id, start_offset)
);
