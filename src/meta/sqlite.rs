//! The embedded metadata backend: SQLite in WAL mode through `rusqlite`.
//!
//! One writer connection (SQLite allows one writer at a time; `BEGIN IMMEDIATE` makes every write
//! transaction take the lock up front, so transactions never deadlock or need a retry) and a small
//! pool of reader connections, which WAL lets run alongside the writer. Every call runs on the
//! blocking thread pool so no async worker waits on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

mod identity;

use super::changes::{self, Change, finished_change};
use super::content;
use super::migrate::{Migration, SQLITE};
use super::queue::{self, Op, OpMode, Out};
use super::sql::{Db, Engine, SqlError, SqlResult, SqlRow, Val, sqlite_placeholders};
use super::{
    BlobCommit, BlobRow, Delete, Error, ManifestRow, MetaStore, NewBlob, NewManifest, PutManifest,
    ReferrerRow, Result, StaleUpload, UploadPart, UploadRow, now_millis,
};
use crate::oci::{Digest, Reference, RepoName, Tag};

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// Prepared statements each connection keeps; more than the store has distinct queries, so no
/// hot query is ever parsed twice.
const STATEMENT_CACHE: usize = 256;

/// Single statements through the connection's prepared-statement cache: rusqlite's
/// `Connection::query_row` and `execute` parse their SQL on every call, which cost half of a
/// manifest GET's instructions.
trait CachedSql {
    /// `query_row` with a cached statement.
    fn qrow<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
    /// `execute` with a cached statement.
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl CachedSql for Connection {
    fn qrow<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// The SQLite metadata store.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn db_err(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DiskFull
            ) =>
        {
            Error::Unavailable(e.to_string())
        }
        _ => Error::Database(Box::new(e)),
    }
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(db_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .map_err(db_err)?;
    Ok(conn)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_digest(s: String) -> Result<Digest> {
    s.parse()
        .map_err(|e| Error::Corrupt(format!("stored digest {s:?}: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let mut writer = open(&path)?;
            apply_migrations(&mut writer, SQLITE)?;
            Ok(SqliteStore {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(writer),
                    readers: Mutex::new(Vec::new()),
                }),
            })
        })
        .await
        .map_err(|e| Error::Database(Box::new(e)))?
    }

    /// Moves an upload session's last activity `by_ms` into the past (tests: a session left idle
    /// for that long, without waiting).
    #[cfg(test)]
    pub(crate) async fn backdate_upload(&self, id: &str, by_ms: i64) -> Result<()> {
        let id = id.to_owned();
        self.write(move |tx| {
            tx.execute(
                "UPDATE uploads SET updated_at = updated_at - ?1 WHERE id = ?2",
                params![by_ms, id],
            )
            .map(|_| ())
        })
        .await
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        metrics::counter!("aerugo_db_queries_total", "op" => "read").increment(1);
        self.read_uncounted(f).await
    }

    /// [`Self::read`] without the request-query count (the background jobs' queries are
    /// counted apart).
    async fn read_uncounted<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().map_err(poisoned)?.pop();
            let conn = match pooled {
                Some(c) => c,
                None => open(&inner.path)?,
            };
            let out = f(&conn).map_err(db_err);
            let mut idle = inner.readers.lock().map_err(poisoned)?;
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| Error::Database(Box::new(e)))?
    }

    /// Runs `f` in an immediate write transaction on the blocking pool; commits when `f` succeeds.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        metrics::counter!("aerugo_db_queries_total", "op" => "write").increment(1);
        self.write_uncounted(f).await
    }

    /// [`Self::write`] without the request-query count.
    async fn write_uncounted<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(poisoned)?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let out = f(&tx).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
        .map_err(|e| Error::Database(Box::new(e)))?
    }
}

/// The shared-SQL seam over a SQLite connection (a transaction derefs to one).
pub(super) struct LiteDb<'a>(&'a Connection);

impl Db for LiteDb<'_> {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn exec(&mut self, sql: &str, params: &[Val]) -> SqlResult<u64> {
        let n = self.0.exec(
            &sqlite_placeholders(sql),
            rusqlite::params_from_iter(params.iter()),
        )?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    async fn query(&mut self, sql: &str, params: &[Val]) -> SqlResult<Vec<SqlRow>> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.0.prepare_cached(&sqlite_placeholders(sql))?;
        let columns = stmt.column_count();
        let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            (0..columns)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => Val::Null,
                        ValueRef::Integer(v) => Val::Int(v),
                        #[expect(
                            clippy::cast_possible_truncation,
                            reason = "shared SQL reads no fractional columns; a cast result is whole"
                        )]
                        ValueRef::Real(v) => Val::Int(v as i64),
                        ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                    })
                })
                .collect::<rusqlite::Result<Vec<Val>>>()
                .map(SqlRow)
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<SqlRow>>>()?)
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Val::Bytes(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

/// Drives shared SQL on a [`LiteDb`] to completion. Its futures never wait (rusqlite is
/// synchronous), so this thread (one of the blocking pool's) simply runs them.
fn block<T>(work: impl std::future::Future<Output = SqlResult<T>>) -> rusqlite::Result<T> {
    futures::executor::block_on(work).map_err(|e| match e {
        SqlError::Sqlite(e) => e,
        other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
    })
}

/// Records a write's changes (and their work) in its transaction.
fn record(tx: &Connection, changes: &[Change]) -> rusqlite::Result<()> {
    block(changes::record(&mut LiteDb(tx), changes, now_millis()))
}

impl SqliteStore {
    /// Runs `f` like [`Self::write`], recording `change` in the same transaction when `changed`
    /// says the write changed something (the helper the identity store's writes share).
    async fn write_changed<T, F>(&self, change: Change, changed: fn(&T) -> bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write(move |tx| {
            let out = f(tx)?;
            if changed(&out) {
                record(tx, std::slice::from_ref(&change))?;
            }
            Ok(out)
        })
        .await
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Unavailable("a database connection was poisoned by a panic".into())
}

/// Applies the migrations not yet recorded. `BEGIN IMMEDIATE` serializes concurrent starters.
fn apply_migrations(conn: &mut Connection, migrations: &[Migration]) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .map_err(db_err)?;
    for m in migrations {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let done: Option<i64> = tx
            .qrow(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [m.version],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if done.is_none() {
            tx.execute_batch(m.sql).map_err(db_err)?;
            tx.exec(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![m.version, m.name, now_millis()],
            )
            .map_err(db_err)?;
            tracing::info!(migration = m.name, "applied migration");
        }
        tx.commit().map_err(db_err)?;
    }
    Ok(())
}

fn repo_id(conn: &Connection, repo: &str) -> rusqlite::Result<Option<String>> {
    conn.qrow("SELECT id FROM repositories WHERE name = ?1", [repo], |r| {
        r.get(0)
    })
    .optional()
}

/// The repository's id, creating it (and recording that) when missing.
fn ensure_repo(tx: &Connection, repo: &str, changes: &mut Vec<Change>) -> rusqlite::Result<String> {
    if let Some(id) = repo_id(tx, repo)? {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    tx.exec(
        "INSERT INTO repositories (id, name, created_at) VALUES (?1, ?2, ?3)",
        params![id, repo, now_millis()],
    )?;
    changes.push(Change::RepositoryCreated {
        repo: repo.to_owned(),
    });
    Ok(id)
}

fn link_blob(tx: &Connection, repo_id: &str, digest: &str) -> rusqlite::Result<()> {
    tx.exec(
        "INSERT INTO repository_blobs (repo_id, digest, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (repo_id, digest) DO NOTHING",
        params![repo_id, digest, now_millis()],
    )?;
    Ok(())
}

type RawBlob = (String, i64, String);

fn blob_row(raw: RawBlob) -> Result<BlobRow> {
    Ok(BlobRow {
        digest: parse_digest(raw.0)?,
        size: to_u64(raw.1),
        storage_key: raw.2,
    })
}

fn upload_parts(conn: &Connection, id: &str) -> rusqlite::Result<Vec<UploadPart>> {
    let mut stmt = conn.prepare_cached(
        "SELECT start_offset, size, storage_key FROM upload_parts
         WHERE upload_id = ?1 ORDER BY start_offset",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(UploadPart {
            start: to_u64(r.get(0)?),
            size: to_u64(r.get(1)?),
            storage_key: r.get(2)?,
        })
    })?;
    rows.collect()
}

fn load_upload(conn: &Connection, repo: &str, id: &str) -> rusqlite::Result<Option<UploadRow>> {
    let row: Option<(i64, Vec<u8>)> = conn
        .qrow(
            "SELECT u.byte_offset, u.hash_state FROM uploads u
             JOIN repositories r ON r.id = u.repo_id
             WHERE u.id = ?1 AND r.name = ?2",
            [id, repo],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((offset, hash_state)) = row else {
        return Ok(None);
    };
    Ok(Some(UploadRow {
        id: id.to_owned(),
        offset: to_u64(offset),
        hash_state,
        parts: upload_parts(conn, id)?,
    }))
}

fn remove_upload(tx: &Connection, id: &str) -> rusqlite::Result<()> {
    tx.exec("DELETE FROM upload_parts WHERE upload_id = ?1", [id])?;
    tx.exec("DELETE FROM uploads WHERE id = ?1", [id])?;
    Ok(())
}

/// Deletes a session that ends without a blob (cancelled, mismatched, purged), records that (its
/// objects are queued for deletion), and drops its repository if the session was all it held.
fn end_upload_without_blob(tx: &Connection, repo: &str, id: &str) -> rusqlite::Result<()> {
    let repo_id = repo_id(tx, repo)?;
    remove_upload(tx, id)?;
    let mut changes = vec![Change::UploadDeleted {
        repo: repo.to_owned(),
        upload: id.to_owned(),
    }];
    if let Some(repo_id) = repo_id {
        block(content::drop_if_unused(
            &mut LiteDb(tx),
            &repo_id,
            repo,
            &mut changes,
        ))?;
    }
    record(tx, &changes)
}

/// What a finishing transaction decided.
enum Finish {
    /// The blob is new and recorded with the caller's storage key.
    Inserted,
    /// The blob existed; the upload's bytes are redundant.
    Present(RawBlob),
    /// The blob does not exist and the caller gave no storage key yet.
    NeedsBytes,
}

fn digests(rows: Vec<String>) -> Result<Vec<Digest>> {
    rows.into_iter().map(parse_digest).collect()
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.read(|c| c.qrow("SELECT 1", [], |_| Ok(()))).await
    }

    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        let repo = repo.as_str().to_owned();
        self.read(move |c| Ok(repo_id(c, &repo)?.is_some())).await
    }

    async fn list_repositories(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>> {
        let after = after.unwrap_or("").to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name FROM repositories WHERE name > ?1 ORDER BY name LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobRow>> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        let raw: Option<RawBlob> = self
            .read(move |c| {
                c.qrow(
                    "SELECT b.digest, b.size, b.storage_key FROM blobs b
                     JOIN repository_blobs rb ON rb.digest = b.digest
                     JOIN repositories r ON r.id = rb.repo_id
                     WHERE r.name = ?1 AND b.digest = ?2",
                    [repo, digest],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })
            .await?;
        raw.map(blob_row).transpose()
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRow>> {
        let digest = digest.as_str().to_owned();
        let raw: Option<RawBlob> = self
            .read(move |c| {
                c.qrow(
                    "SELECT digest, size, storage_key FROM blobs WHERE digest = ?1",
                    [digest],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })
            .await?;
        raw.map(blob_row).transpose()
    }

    async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRow>> {
        let (from, to, digest) = (
            from.as_str().to_owned(),
            to.as_str().to_owned(),
            digest.as_str().to_owned(),
        );
        let raw: Option<RawBlob> = self
            .write(move |tx| {
                let raw: Option<RawBlob> = tx
                    .qrow(
                        "SELECT b.digest, b.size, b.storage_key FROM blobs b
                         JOIN repository_blobs rb ON rb.digest = b.digest
                         JOIN repositories r ON r.id = rb.repo_id
                         WHERE r.name = ?1 AND b.digest = ?2",
                        [&from, &digest],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if raw.is_some() {
                    let mut changes = Vec::new();
                    let to_id = ensure_repo(tx, &to, &mut changes)?;
                    link_blob(tx, &to_id, &digest)?;
                    changes.push(Change::BlobLinked {
                        repo: to.clone(),
                        digest: digest.clone(),
                        via: "mount".into(),
                    });
                    record(tx, &changes)?;
                }
                Ok(raw)
            })
            .await?;
        raw.map(blob_row).transpose()
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Delete> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        let (outcome, referencing) = self
            .write(move |tx| {
                let Some(id) = repo_id(tx, &repo)? else {
                    return Ok((Delete::NotFound, Vec::new()));
                };
                let mut stmt = tx.prepare_cached(
                    "SELECT manifest_digest FROM manifest_blobs
                     WHERE repo_id = ?1 AND blob_digest = ?2 ORDER BY manifest_digest LIMIT 10",
                )?;
                let referencing: Vec<String> = stmt
                    .query_map([&id, &digest], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                if !referencing.is_empty() {
                    return Ok((Delete::Deleted, referencing));
                }
                let n = tx.exec(
                    "DELETE FROM repository_blobs WHERE repo_id = ?1 AND digest = ?2",
                    [&id, &digest],
                )?;
                if n > 0 {
                    record(
                        tx,
                        &[Change::BlobUnlinked {
                            repo: repo.clone(),
                            digest: digest.clone(),
                        }],
                    )?;
                }
                Ok((
                    if n > 0 {
                        Delete::Deleted
                    } else {
                        Delete::NotFound
                    },
                    Vec::new(),
                ))
            })
            .await?;
        if referencing.is_empty() {
            Ok(outcome)
        } else {
            Ok(Delete::Referenced(digests(referencing)?))
        }
    }

    async fn create_upload(&self, repo: &RepoName, id: &str, hash_state: &[u8]) -> Result<()> {
        let (repo, id, state) = (repo.as_str().to_owned(), id.to_owned(), hash_state.to_vec());
        self.write(move |tx| {
            let mut changes = Vec::new();
            let repo_id = ensure_repo(tx, &repo, &mut changes)?;
            let now = now_millis();
            tx.exec(
                "INSERT INTO uploads (id, repo_id, byte_offset, hash_state, started_at, updated_at)
                 VALUES (?1, ?2, 0, ?3, ?4, ?4)",
                params![id, repo_id, state, now],
            )?;
            record(tx, &changes)
        })
        .await
    }

    async fn upload(&self, repo: &RepoName, id: &str) -> Result<Option<UploadRow>> {
        let (repo, id) = (repo.as_str().to_owned(), id.to_owned());
        self.read(move |c| load_upload(c, &repo, &id)).await
    }

    async fn advance_upload(
        &self,
        id: &str,
        expected_offset: u64,
        part: &UploadPart,
        hash_state: &[u8],
    ) -> Result<bool> {
        let (id, part, state) = (id.to_owned(), part.clone(), hash_state.to_vec());
        self.write(move |tx| {
            let n = tx.exec(
                "UPDATE uploads SET byte_offset = ?1, hash_state = ?2, updated_at = ?3
                 WHERE id = ?4 AND byte_offset = ?5",
                params![
                    to_i64(part.start.saturating_add(part.size)),
                    state,
                    now_millis(),
                    id,
                    to_i64(expected_offset)
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.exec(
                "INSERT INTO upload_parts (upload_id, start_offset, size, storage_key)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, to_i64(part.start), to_i64(part.size), part.storage_key],
            )?;
            Ok(true)
        })
        .await
    }

    async fn delete_upload(&self, repo: &RepoName, id: &str) -> Result<Option<UploadRow>> {
        let (repo, id) = (repo.as_str().to_owned(), id.to_owned());
        self.write(move |tx| {
            let row = load_upload(tx, &repo, &id)?;
            if row.is_some() {
                end_upload_without_blob(tx, &repo, &id)?;
            }
            Ok(row)
        })
        .await
    }

    async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        expected_offset: u64,
        blob: &NewBlob,
    ) -> Result<Option<BlobCommit>> {
        let (repo, id, blob) = (repo.as_str().to_owned(), id.to_owned(), blob.clone());
        let raw = self
            .write(move |tx| {
                let parts = match load_upload(tx, &repo, &id)? {
                    Some(row) if row.offset == expected_offset => row.parts,
                    _ => return Ok(None),
                };
                // Decided here, in the finishing transaction: a blob row read outside it could
                // be gone by now (and its bytes with it).
                let existing: Option<RawBlob> = tx
                    .qrow(
                        "SELECT digest, size, storage_key FROM blobs WHERE digest = ?1",
                        [blob.digest.as_str()],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if existing.is_none() && blob.storage_key.is_none() {
                    return Ok(Some(Finish::NeedsBytes));
                }
                remove_upload(tx, &id)?;
                let mut changes = Vec::new();
                let repo_id = ensure_repo(tx, &repo, &mut changes)?;
                let keep = match (&existing, &blob.storage_key) {
                    (None, Some(key)) => {
                        tx.exec(
                            "INSERT INTO blobs (digest, size, storage_key, created_at)
                             VALUES (?1, ?2, ?3, ?4)",
                            params![blob.digest.as_str(), to_i64(blob.size), key, now_millis()],
                        )?;
                        Some(key.clone())
                    }
                    _ => None,
                };
                link_blob(tx, &repo_id, blob.digest.as_str())?;
                changes.push(Change::BlobLinked {
                    repo: repo.clone(),
                    digest: blob.digest.to_string(),
                    via: "upload".into(),
                });
                changes.push(finished_change(&repo, &id, &blob, &parts, keep));
                record(tx, &changes)?;
                Ok(Some(match existing {
                    None => Finish::Inserted,
                    Some(raw) => Finish::Present(raw),
                }))
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(Finish::NeedsBytes) => Ok(Some(BlobCommit::NeedsBytes)),
            Some(Finish::Inserted) => Ok(Some(BlobCommit::Inserted)),
            Some(Finish::Present(existing)) => {
                Ok(Some(BlobCommit::AlreadyPresent(blob_row(existing)?)))
            }
        }
    }

    async fn put_manifest(&self, repo: &RepoName, m: &NewManifest) -> Result<PutManifest> {
        let (repo, m) = (repo.as_str().to_owned(), m.clone());
        let missing: Vec<String> = self
            .write(move |tx| {
                // Check references before writing anything, so a refused push leaves no trace
                // (not even a new repository row).
                let existing_id = repo_id(tx, &repo)?;
                let mut missing = Vec::new();
                {
                    let mut blob_q = tx.prepare_cached(
                        "SELECT 1 FROM repository_blobs WHERE repo_id = ?1 AND digest = ?2",
                    )?;
                    let mut child_q = tx.prepare_cached(
                        "SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2",
                    )?;
                    let id = existing_id.as_deref().unwrap_or("");
                    for d in &m.blobs {
                        if !blob_q.exists([id, d.as_str()])? {
                            missing.push(d.as_str().to_owned());
                        }
                    }
                    for d in &m.children {
                        if !child_q.exists([id, d.as_str()])? {
                            missing.push(d.as_str().to_owned());
                        }
                    }
                }
                if !missing.is_empty() {
                    return Ok(missing);
                }
                let mut changes = Vec::new();
                let repo_id = match existing_id {
                    Some(id) => id,
                    None => ensure_repo(tx, &repo, &mut changes)?,
                };
                let now = now_millis();
                let inserted = tx.exec(
                    "INSERT INTO manifests (repo_id, digest, media_type, payload, size,
                        subject_digest, artifact_type, annotations, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (repo_id, digest) DO NOTHING",
                    params![
                        repo_id,
                        m.digest.as_str(),
                        m.media_type,
                        m.payload,
                        to_i64(m.payload.len() as u64),
                        m.subject.as_ref().map(|d| d.as_str().to_owned()),
                        m.artifact_type,
                        m.annotations,
                        now
                    ],
                )?;
                if inserted > 0 {
                    for d in &m.blobs {
                        tx.exec(
                            "INSERT INTO manifest_blobs (repo_id, manifest_digest, blob_digest)
                             VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                            params![repo_id, m.digest.as_str(), d.as_str()],
                        )?;
                    }
                    for d in &m.children {
                        tx.exec(
                            "INSERT INTO manifest_children (repo_id, manifest_digest, child_digest)
                             VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                            params![repo_id, m.digest.as_str(), d.as_str()],
                        )?;
                    }
                }
                let mut previous = None;
                if let Some(tag) = &m.tag {
                    previous = tx
                        .qrow(
                            "SELECT manifest_digest FROM tags WHERE repo_id = ?1 AND name = ?2",
                            [repo_id.as_str(), tag.as_str()],
                            |r| r.get::<_, String>(0),
                        )
                        .optional()?
                        .filter(|d| d != m.digest.as_str());
                    tx.exec(
                        "INSERT INTO tags (repo_id, name, manifest_digest, updated_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (repo_id, name)
                         DO UPDATE SET manifest_digest = excluded.manifest_digest,
                                       updated_at = excluded.updated_at",
                        params![repo_id, tag.as_str(), m.digest.as_str(), now],
                    )?;
                }
                changes.push(Change::ManifestPut {
                    repo: repo.clone(),
                    digest: m.digest.to_string(),
                    tag: m.tag.as_ref().map(ToString::to_string),
                    previous,
                });
                record(tx, &changes)?;
                Ok(Vec::new())
            })
            .await?;
        if missing.is_empty() {
            Ok(PutManifest::Stored)
        } else {
            Ok(PutManifest::MissingReferences(digests(missing)?))
        }
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<ManifestRow>> {
        let repo = repo.as_str().to_owned();
        let reference = reference.clone();
        let raw: Option<(String, String, Vec<u8>)> = self
            .read(move |c| {
                let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
                match reference {
                    Reference::Digest(d) => c
                        .qrow(
                            "SELECT m.digest, m.media_type, m.payload FROM manifests m
                             JOIN repositories r ON r.id = m.repo_id
                             WHERE r.name = ?1 AND m.digest = ?2",
                            [repo.as_str(), d.as_str()],
                            map,
                        )
                        .optional(),
                    Reference::Tag(t) => c
                        .qrow(
                            "SELECT m.digest, m.media_type, m.payload FROM tags t
                             JOIN repositories r ON r.id = t.repo_id
                             JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest
                             WHERE r.name = ?1 AND t.name = ?2",
                            [repo.as_str(), t.as_str()],
                            map,
                        )
                        .optional(),
                }
            })
            .await?;
        raw.map(|(digest, media_type, payload)| {
            Ok(ManifestRow {
                digest: parse_digest(digest)?,
                media_type,
                payload,
            })
        })
        .transpose()
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let (repo, tag) = (repo.as_str().to_owned(), tag.as_str().to_owned());
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo)? else {
                return Ok(false);
            };
            let digest: Option<String> = tx
                .qrow(
                    "DELETE FROM tags WHERE repo_id = ?1 AND name = ?2 RETURNING manifest_digest",
                    [&id, &tag],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(digest) = digest else {
                return Ok(false);
            };
            record(tx, &[Change::TagDeleted { repo, tag, digest }])?;
            Ok(true)
        })
        .await
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Delete> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        let (outcome, referencing) = self
            .write(move |tx| {
                let Some(id) = repo_id(tx, &repo)? else {
                    return Ok((Delete::NotFound, Vec::new()));
                };
                let mut stmt = tx.prepare_cached(
                    "SELECT manifest_digest FROM manifest_children
                     WHERE repo_id = ?1 AND child_digest = ?2 ORDER BY manifest_digest LIMIT 10",
                )?;
                let referencing: Vec<String> = stmt
                    .query_map([&id, &digest], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                if !referencing.is_empty() {
                    return Ok((Delete::Deleted, referencing));
                }
                let n = tx.exec(
                    "DELETE FROM manifests WHERE repo_id = ?1 AND digest = ?2",
                    [&id, &digest],
                )?;
                if n == 0 {
                    return Ok((Delete::NotFound, Vec::new()));
                }
                let tags: Vec<String> = tx
                    .prepare_cached(
                        "DELETE FROM tags WHERE repo_id = ?1 AND manifest_digest = ?2
                         RETURNING name",
                    )?
                    .query_map([&id, &digest], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                tx.exec(
                    "DELETE FROM manifest_blobs WHERE repo_id = ?1 AND manifest_digest = ?2",
                    [&id, &digest],
                )?;
                tx.exec(
                    "DELETE FROM manifest_children WHERE repo_id = ?1 AND manifest_digest = ?2",
                    [&id, &digest],
                )?;
                let mut tags = tags;
                tags.sort();
                record(
                    tx,
                    &[Change::ManifestDeleted {
                        repo: repo.clone(),
                        digest: digest.clone(),
                        tags,
                    }],
                )?;
                Ok((Delete::Deleted, Vec::new()))
            })
            .await?;
        if referencing.is_empty() {
            Ok(outcome)
        } else {
            Ok(Delete::Referenced(digests(referencing)?))
        }
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Option<Vec<String>>> {
        let (repo, after) = (repo.as_str().to_owned(), after.unwrap_or("").to_owned());
        self.read(move |c| {
            let Some(id) = repo_id(c, &repo)? else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT name FROM tags WHERE repo_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![id, after, limit], |r| r.get(0))?;
            Ok(Some(rows.collect::<rusqlite::Result<Vec<String>>>()?))
        })
        .await
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<ReferrerRow>>> {
        let (repo, subject) = (repo.as_str().to_owned(), subject.as_str().to_owned());
        let filter = artifact_type.map(str::to_owned);
        type Raw = (String, String, i64, Option<String>, Option<String>);
        let raw: Option<Vec<Raw>> = self
            .read(move |c| {
                let Some(id) = repo_id(c, &repo)? else {
                    return Ok(None);
                };
                let mut stmt = c.prepare_cached(
                    "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
                     WHERE repo_id = ?1 AND subject_digest = ?2
                       AND (?3 IS NULL OR artifact_type = ?3)
                     ORDER BY digest",
                )?;
                let rows = stmt.query_map(params![id, subject, filter], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
                Ok(Some(rows.collect::<rusqlite::Result<Vec<Raw>>>()?))
            })
            .await?;
        raw.map(|rows| {
            rows.into_iter()
                .map(|(digest, media_type, size, artifact_type, annotations)| {
                    Ok(ReferrerRow {
                        digest: parse_digest(digest)?,
                        media_type,
                        size: to_u64(size),
                        artifact_type,
                        annotations,
                    })
                })
                .collect()
        })
        .transpose()
    }

    async fn queue(&self, op: Op) -> Result<Out> {
        metrics::counter!("aerugo_db_queue_queries_total", "op" => op.name()).increment(1);
        if op.mode() == OpMode::Read {
            self.read_uncounted(move |c| block(queue::run(&mut LiteDb(c), &op)))
                .await
        } else {
            self.write_uncounted(move |tx| block(queue::run(&mut LiteDb(tx), &op)))
                .await
        }
    }

    async fn delete_repository(&self, repo: &RepoName) -> Result<bool> {
        let repo = repo.as_str().to_owned();
        self.write(move |tx| {
            block(content::delete_repository(
                &mut LiteDb(tx),
                &repo,
                now_millis(),
            ))
        })
        .await
    }

    async fn cluster_id(&self, candidate: &str) -> Result<String> {
        let candidate = candidate.to_owned();
        self.write(move |tx| {
            tx.exec(
                "INSERT INTO cluster (singleton, id, created_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (singleton) DO NOTHING",
                params![candidate, now_millis()],
            )?;
            tx.qrow("SELECT id FROM cluster WHERE singleton = 1", [], |r| {
                r.get(0)
            })
        })
        .await
    }

    async fn stale_uploads(&self, before: i64, limit: u32) -> Result<Vec<StaleUpload>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT r.name, u.id, u.updated_at FROM uploads u
                 JOIN repositories r ON r.id = u.repo_id
                 WHERE u.updated_at < ?1 ORDER BY u.updated_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before, limit], |r| {
                Ok(StaleUpload {
                    repo: r.get(0)?,
                    id: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_stale_upload(&self, id: &str, before: i64) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |tx| {
            let repo: Option<String> = tx
                .qrow(
                    "SELECT r.name FROM uploads u JOIN repositories r ON r.id = u.repo_id
                     WHERE u.id = ?1 AND u.updated_at < ?2",
                    params![id, before],
                    |r| r.get(0),
                )
                .optional()?;
            match repo {
                Some(repo) => {
                    end_upload_without_blob(tx, &repo, &id)?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await
    }
    async fn create_upload_bounded(
        &self,
        repo: &RepoName,
        id: &str,
        hash_state: &[u8],
        owner: &str,
        active_since: i64,
        max_active: u64,
    ) -> Result<super::UploadAdmission> {
        let (repo, id, state, owner) = (
            repo.as_str().to_owned(),
            id.to_owned(),
            hash_state.to_vec(),
            owner.to_owned(),
        );
        self.write(move |tx| {
            let (active, oldest): (i64, Option<i64>) = tx.qrow(
                "SELECT COUNT(*), MIN(updated_at) FROM uploads
                 WHERE owner = ?1 AND updated_at >= ?2",
                params![owner, active_since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if to_u64(active) >= max_active {
                return Ok(super::UploadAdmission::Full {
                    oldest_updated_at: oldest.unwrap_or(active_since),
                });
            }
            let mut changes = Vec::new();
            let repo_id = ensure_repo(tx, &repo, &mut changes)?;
            let now = now_millis();
            tx.exec(
                "INSERT INTO uploads
                     (id, repo_id, byte_offset, hash_state, started_at, updated_at, owner)
                 VALUES (?1, ?2, 0, ?3, ?4, ?4, ?5)",
                params![id, repo_id, state, now, owner],
            )?;
            record(tx, &changes)?;
            Ok(super::UploadAdmission::Created)
        })
        .await
    }

    async fn upload_progress(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Option<super::UploadProgress>> {
        let (repo, id) = (repo.as_str().to_owned(), id.to_owned());
        self.read(move |c| {
            c.qrow(
                "SELECT u.byte_offset, u.hash_state,
                        (SELECT COUNT(*) FROM upload_parts p WHERE p.upload_id = u.id)
                 FROM uploads u JOIN repositories r ON r.id = u.repo_id
                 WHERE u.id = ?1 AND r.name = ?2",
                [&id, &repo],
                |r| {
                    Ok(super::UploadProgress {
                        id: id.clone(),
                        offset: to_u64(r.get(0)?),
                        hash_state: r.get(1)?,
                        parts: to_u64(r.get(2)?),
                    })
                },
            )
            .optional()
        })
        .await
    }
}
