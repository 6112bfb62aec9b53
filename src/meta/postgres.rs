//! The distributed metadata backend: PostgreSQL or CockroachDB through `tokio-postgres`, pooled by
//! `deadpool-postgres`.
//!
//! Every call runs in one transaction inside one retry helper ([`PostgresStore::run`]): writes are
//! `SERIALIZABLE` (set explicitly, since PostgreSQL defaults to READ COMMITTED), reads are
//! `REPEATABLE READ, READ ONLY` (one consistent snapshot; CockroachDB runs them SERIALIZABLE).
//! A transaction that fails with SQLSTATE 40001 (serialization failure, CockroachDB's "restart
//! transaction") or 40P01 (deadlock) is rolled back and its body re-run from scratch, after a
//! jittered exponential backoff, at most [`MAX_ATTEMPTS`] times; every retry is counted
//! ([`PostgresStore::retries`]) and logged with the `db.retries_total` field. Bodies are therefore
//! idempotent: they read what they need and decide again on every attempt.
//!
//! Invariants: the same as the SQLite store's, in the same transactions, with the same answers in
//! every edge case (the conformance tests in `meta::conformance` run against both). Connection
//! failures of any kind (unreachable, pool or statement timeout, connection closed, server shutting
//! down) become [`Error::Unavailable`], so callers answer 503; no request waits on a lost database
//! longer than the configured timeouts. The password in `database.url` is never logged.
//!
//! SQL is the subset PostgreSQL and CockroachDB share; names are stored as BYTEA so listings are in
//! byte order on both (see `schema/postgres/0001_create_registry.sql`).
//!
//! Must not depend on `service`, `storage` or `api`.

mod identity;
mod tls;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures::future::BoxFuture;
use rand::Rng as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::changes::{self, Change, finished_change};
use super::content;
use super::migrate::{Migration, POSTGRES};
use super::queue::{self, Op, OpMode, Out};
use super::sql::{Db, Engine, SqlError, SqlResult, SqlRow, Val};
use super::{
    BlobCommit, BlobRow, Delete, Error, ManifestRow, MetaStore, NewBlob, NewManifest, PutManifest,
    ReferrerRow, Result, StaleUpload, UploadPart, UploadRow, now_millis,
};
use crate::config::{DatabaseConfig, redact_url};
use crate::oci::{Digest, Reference, RepoName, Tag};

/// Attempts of one transaction before giving up with [`Error::Unavailable`].
///
/// Sized by measurement on PostgreSQL: 3 stores × 20 tasks pushing manifests to one tag without
/// pause needed up to 12 attempts (10 attempts with a 5 ms base failed 2–15 % of the pushes). The
/// backoffs add up to at most about 15 s, well inside the request timeout.
pub const MAX_ATTEMPTS: u32 = 15;
/// Backoff before the first retry; doubled for each further one, up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(10);
/// Largest backoff between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How long one transaction attempt may take at least, whatever the connect timeout. A lost
/// database (packets dropped, no reset) fails the attempt here instead of hanging the request.
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the migration lease lasts without renewal; a node that dies while migrating blocks
/// the others at most this long.
const LEASE_MILLIS: i64 = 60_000;
/// How often a node waiting for another node's migrations looks again.
const LEASE_POLL: Duration = Duration::from_millis(500);
/// Most repositories or manifests a `Delete::Referenced` answer names (as SQLite does).
const REFERENCED_LIMIT: usize = 10;

type PgError = tokio_postgres::Error;
type PgResult<T> = std::result::Result<T, PgError>;
type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// The PostgreSQL/CockroachDB metadata store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// `database.url` with the password replaced, for logs and `Debug`.
    target: String,
    attempt_timeout: Duration,
    /// [`MAX_ATTEMPTS`], lowered by tests that exhaust it.
    max_attempts: u32,
    retries: AtomicU64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.inner.target)
            .field("max_connections", &self.inner.pool.status().max_size)
            .field("retries", &self.retries())
            .finish()
    }
}

/// What a transaction may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// SERIALIZABLE, read-write.
    Write,
    /// REPEATABLE READ, read-only: one snapshot, no serializable bookkeeping on PostgreSQL.
    Read,
    /// READ COMMITTED, read-write: the work queue's claims and completions, short transactions
    /// whose claimers skip each other's rows (`FOR UPDATE SKIP LOCKED`) instead of aborting each
    /// other as SERIALIZABLE would. CockroachDB runs them SERIALIZABLE unless READ COMMITTED is
    /// enabled (v23.2+), and the retry loop absorbs the difference.
    Queue,
}

/// What a transaction body may fail with: the driver's error, or the shared-SQL seam's (which
/// wraps the driver's, so serialization failures are still recognised and retried).
trait BodyError: From<PgError> + Send {
    /// The driver error to classify (retry or fail), or a store error to fail with.
    fn split(self) -> std::result::Result<PgError, Error>;
}

impl BodyError for PgError {
    fn split(self) -> std::result::Result<PgError, Error> {
        Ok(self)
    }
}

impl BodyError for SqlError {
    fn split(self) -> std::result::Result<PgError, Error> {
        match self {
            SqlError::Postgres(e) => Ok(e),
            other => Err(Error::Corrupt(other.to_string())),
        }
    }
}

/// How one failed attempt ends.
enum Failure {
    /// Roll back and run the body again.
    Retry(PgError),
    /// Give up with this error.
    Fail(Error),
}

/// Where in an attempt an error happened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Starting the transaction: nothing has run yet.
    Begin,
    /// The body or the commit.
    Work,
}

fn is_retryable(e: &PgError) -> bool {
    e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
        || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
}

/// The `reason` label of a retry: what made the attempt fail.
fn retry_reason(e: &PgError) -> &'static str {
    if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) {
        "serialization_failure"
    } else if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) {
        "deadlock"
    } else {
        "connection_lost"
    }
}

/// Whether `e` means the database (or the way to it) is gone, rather than a bad statement.
fn is_connection_error(e: &PgError) -> bool {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 53: insufficient resources (too many connections, disk full);
        // 57P: admin/crash shutdown, cannot connect now; 57014: statement timeout or cancel;
        // 40003: CockroachDB's "statement completion unknown" (ambiguous commit).
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "57014"
            || code == "40003";
    }
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().starts_with("timeout")
}

/// `e` and its causes, `: `-separated. The driver's own message is only the kind of failure
/// ("db error", "error connecting to server"); the reason is in the causes.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Maps a driver error to the store's error.
fn pg_err(e: PgError) -> Error {
    if is_connection_error(&e) || is_retryable(&e) {
        Error::Unavailable(describe(&e))
    } else {
        Error::Database(Box::new(e))
    }
}

fn pool_err(e: PoolError) -> Error {
    match e {
        PoolError::Timeout(kind) => Error::Unavailable(format!(
            "timed out getting a database connection ({kind:?})"
        )),
        PoolError::Backend(e) => {
            Error::Unavailable(format!("cannot connect to the database: {}", describe(&e)))
        }
        PoolError::Closed => Error::Unavailable("the database pool is closed".into()),
        other => Error::Unavailable(other.to_string()),
    }
}

/// The backoff before attempt `attempt + 1`: half of the exponential step fixed, half random, so
/// contenders spread out but every one waits a little longer each time.
fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    let half = step / 2;
    let jitter_micros = rand::rng().random_range(0..=half.as_micros().max(1));
    half + Duration::from_micros(u64::try_from(jitter_micros).unwrap_or(0))
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

fn digests(rows: Vec<String>) -> Result<Vec<Digest>> {
    rows.into_iter().map(parse_digest).collect()
}

fn name_of(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::Corrupt(format!("stored name is not UTF-8: {e}")))
}

/// Runs a cached prepared statement and returns at most one row.
async fn opt(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PgResult<Option<Row>> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query_opt(&stmt, params).await
}

/// Runs a cached prepared statement and returns every row.
async fn all(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PgResult<Vec<Row>> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query(&stmt, params).await
}

/// Runs a cached prepared statement and returns the number of rows it changed.
async fn exec(tx: &Tx<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PgResult<u64> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.execute(&stmt, params).await
}

/// The shared-SQL seam over a PostgreSQL transaction.
struct PgDb<'a, 't>(&'a Tx<'t>);

impl Db for PgDb<'_, '_> {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    async fn exec(&mut self, sql: &str, params: &[Val]) -> SqlResult<u64> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        Ok(exec(self.0, sql, &refs).await?)
    }

    async fn query(&mut self, sql: &str, params: &[Val]) -> SqlResult<Vec<SqlRow>> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = all(self.0, sql, &refs).await?;
        rows.iter().map(pg_row).collect()
    }
}

/// Reads a row of the shared SQL's column types into [`Val`]s.
fn pg_row(row: &Row) -> SqlResult<SqlRow> {
    use tokio_postgres::types::Type;
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_().clone();
            Ok(if ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?
                    .map_or(Val::Null, Val::Int)
            } else if ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?
                    .map_or(Val::Null, |v| Val::Int(v.into()))
            } else if ty == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)?
                    .map_or(Val::Null, |v| Val::Int(v.into()))
            } else if ty == Type::BOOL {
                row.try_get::<_, Option<bool>>(i)?
                    .map_or(Val::Null, |v| Val::Int(v.into()))
            } else if ty == Type::BYTEA {
                row.try_get::<_, Option<Vec<u8>>>(i)?
                    .map_or(Val::Null, Val::Bytes)
            } else if ty == Type::TEXT || ty == Type::VARCHAR || ty == Type::NAME {
                row.try_get::<_, Option<String>>(i)?
                    .map_or(Val::Null, Val::Text)
            } else {
                return Err(SqlError::Shape(i));
            })
        })
        .collect::<SqlResult<Vec<Val>>>()
        .map(SqlRow)
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use tokio_postgres::types::{IsNull, Type};
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Val::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Val::Int(v) => v.to_sql(ty, out),
            Val::Text(v) => v.to_sql(ty, out),
            Val::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl PostgresStore {
    /// Connects to `config.url` (`postgres://user:password@host:port/db`), sizes the pool by
    /// `config.max_connections`, and applies pending migrations. An unreachable database is
    /// [`Error::Unavailable`].
    pub async fn open(config: &DatabaseConfig) -> Result<Self> {
        let store = Self::connect(config)?;
        // The pool connects lazily; fail here, clearly, when the database is not there.
        store.ping().await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the pool without connecting or migrating.
    fn connect(config: &DatabaseConfig) -> Result<Self> {
        let target = redact_url(&config.url);
        let tls = tls::TlsSettings::from_url(&config.url)
            .map_err(|e| Error::Database(format!("database.url {target}: {e}").into()))?;
        let mut pg: tokio_postgres::Config = tls.url.parse().map_err(|e| {
            Error::Database(format!("database.url {target} is not a PostgreSQL URL: {e}").into())
        })?;
        pg.ssl_mode(tls.driver_mode());
        let connector = tls
            .connector()
            .map_err(|e| Error::Database(format!("database.url {target}: {e}").into()))?;
        let timeout = Duration::from_secs(config.connect_timeout_seconds.max(1));
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(timeout);
        }
        if pg.get_tcp_user_timeout().is_none() {
            // Unacknowledged writes fail the connection after this long, so a database that
            // vanished without a reset is noticed by the kernel, not only by our timeouts.
            pg.tcp_user_timeout(timeout.max(Duration::from_secs(5)));
        }
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(30));
        if pg.get_application_name().is_none() {
            pg.application_name("aerugo");
        }
        let manager = Manager::from_config(
            pg,
            connector,
            ManagerConfig {
                // Checking `is_closed` on checkout is free; a connection that died while idle
                // is caught at BEGIN and retried on a fresh one (see `attempt`).
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| Error::Database(Box::new(e)))?;
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                target,
                attempt_timeout: MIN_ATTEMPT_TIMEOUT.max(timeout * 2),
                max_attempts: MAX_ATTEMPTS,
                retries: AtomicU64::new(0),
            }),
        })
    }

    /// Transactions re-run because of a serialization failure, a deadlock or a connection that
    /// died while idle, since the store was opened.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Publishes the pool's gauges: connections open, idle and free to hand out, tasks waiting
    /// for one, and the configured maximum.
    pub fn record_pool_gauges(&self) {
        let status = self.inner.pool.status();
        let gauge = |name: &'static str, v: f64| {
            metrics::gauge!(name, "backend" => "postgres").set(v);
        };
        #[expect(clippy::cast_precision_loss, reason = "pool sizes are small")]
        {
            gauge("aerugo_db_pool_max_size", status.max_size as f64);
            gauge("aerugo_db_pool_size", status.size as f64);
            gauge("aerugo_db_pool_available", status.available as f64);
            gauge("aerugo_db_pool_waiting", status.waiting as f64);
        }
    }

    /// Runs `body` in a transaction of `mode`, committing when it succeeds, and re-runs it from
    /// scratch on 40001/40P01 with jittered exponential backoff (the one retry helper every query
    /// goes through). The body gets the caller's data as `ctx` rather than capturing it, because a
    /// boxed future borrowing captures could not be `Send` for every transaction lifetime.
    async fn run<C, T, E, F>(&self, op: &'static str, mode: Mode, ctx: C, body: F) -> Result<T>
    where
        C: Sync,
        E: BodyError,
        F: for<'t> Fn(&'t Tx<'t>, &'t C) -> BoxFuture<'t, std::result::Result<T, E>> + Sync,
    {
        // Counted once per use (not per retry), so tests can show a path does no database work;
        // the background jobs' queue, lease and clock queries are counted apart.
        if mode == Mode::Queue || queue::is_background_op(op) {
            metrics::counter!("aerugo_db_queue_queries_total", "op" => op).increment(1);
        } else {
            metrics::counter!("aerugo_db_queries_total", "op" => op).increment(1);
        }
        let mut attempt = 0;
        let kind = match mode {
            Mode::Write => "write",
            Mode::Read => "read",
            Mode::Queue => "queue",
        };
        let finished = |outcome: &'static str| {
            metrics::counter!(
                "aerugo_db_transactions_total",
                "backend" => "postgres", "mode" => kind, "outcome" => outcome
            )
            .increment(1);
        };
        loop {
            attempt += 1;
            let failure = match self.attempt(mode, &ctx, &body).await {
                Ok(out) => {
                    finished("committed");
                    return Ok(out);
                }
                Err(failure) => failure,
            };
            match failure {
                Failure::Fail(e) => {
                    finished(match e {
                        Error::Unavailable(_) => "unavailable",
                        _ => "failed",
                    });
                    return Err(e);
                }
                Failure::Retry(e) if attempt >= self.inner.max_attempts => {
                    finished("gave_up");
                    tracing::warn!(
                        db.op = op,
                        db.attempts = attempt,
                        db.retries_total = self.retries(),
                        error = %describe(&e),
                        "{op} transaction gave up after {attempt} attempts"
                    );
                    return Err(Error::Unavailable(format!(
                        "{op}: gave up after {attempt} attempts: {}",
                        describe(&e)
                    )));
                }
                Failure::Retry(e) => {
                    let total = self.inner.retries.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::counter!(
                        "aerugo_db_transaction_retries_total",
                        "backend" => "postgres", "reason" => retry_reason(&e)
                    )
                    .increment(1);
                    let delay = backoff(attempt);
                    tracing::debug!(
                        db.op = op,
                        db.attempt = attempt,
                        db.retries_total = total,
                        db.sqlstate = e.code().map(SqlState::code).unwrap_or(""),
                        backoff_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "retrying {op} transaction: {}",
                        describe(&e)
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One attempt of [`Self::run`].
    async fn attempt<C, T, E, F>(
        &self,
        mode: Mode,
        ctx: &C,
        body: &F,
    ) -> std::result::Result<T, Failure>
    where
        C: Sync,
        E: BodyError,
        F: for<'t> Fn(&'t Tx<'t>, &'t C) -> BoxFuture<'t, std::result::Result<T, E>> + Sync,
    {
        let mut client = self
            .inner
            .pool
            .get()
            .await
            .map_err(|e| Failure::Fail(pool_err(e)))?;
        let work = async {
            let builder = client.build_transaction();
            let tx = match mode {
                Mode::Write => builder.isolation_level(IsolationLevel::Serializable),
                Mode::Queue => builder.isolation_level(IsolationLevel::ReadCommitted),
                Mode::Read => builder
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true),
            }
            .start()
            .await
            .map_err(|e| (Stage::Begin, e))?;
            let out = match body(&tx, ctx).await {
                Ok(out) => out,
                // Dropping the transaction rolls it back.
                Err(e) => match e.split() {
                    Ok(driver) => return Err((Stage::Work, driver)),
                    Err(fail) => return Ok(Err(fail)),
                },
            };
            tx.commit().await.map_err(|e| (Stage::Work, e))?;
            Ok::<std::result::Result<T, Error>, (Stage, PgError)>(Ok(out))
        };
        match tokio::time::timeout(self.inner.attempt_timeout, work).await {
            Ok(Ok(Ok(out))) => Ok(out),
            Ok(Ok(Err(e))) => Err(Failure::Fail(e)),
            // A pooled connection that died while idle fails at BEGIN, before anything ran: try
            // again on another one (the pool drops closed connections on checkout).
            Ok(Err((Stage::Begin, e))) if is_connection_error(&e) => Err(Failure::Retry(e)),
            Ok(Err((_, e))) if is_retryable(&e) => Err(Failure::Retry(e)),
            Ok(Err((_, e))) => Err(Failure::Fail(pg_err(e))),
            Err(_) => {
                // The connection may be stuck mid-statement: never hand it out again.
                drop(Object::take(client));
                Err(Failure::Fail(Error::Unavailable(format!(
                    "the database did not answer within {} s",
                    self.inner.attempt_timeout.as_secs()
                ))))
            }
        }
    }

    /// Runs a read-only body on `ctx` (what it needs from the caller; see [`Self::run`]).
    async fn read<C, T, F>(&self, op: &'static str, ctx: C, body: F) -> Result<T>
    where
        C: Sync,
        F: for<'t> Fn(&'t Tx<'t>, &'t C) -> BoxFuture<'t, PgResult<T>> + Sync,
    {
        self.run(op, Mode::Read, ctx, body).await
    }

    /// Runs a read-write body on `ctx`, SERIALIZABLE.
    async fn write<C, T, F>(&self, op: &'static str, ctx: C, body: F) -> Result<T>
    where
        C: Sync,
        F: for<'t> Fn(&'t Tx<'t>, &'t C) -> BoxFuture<'t, PgResult<T>> + Sync,
    {
        self.run(op, Mode::Write, ctx, body).await
    }

    /// Runs a read-write body written over the shared-SQL seam (it records changes or runs
    /// queue statements), SERIALIZABLE like [`Self::write`].
    async fn write_sql<C, T, F>(&self, op: &'static str, ctx: C, body: F) -> Result<T>
    where
        C: Sync,
        F: for<'t> Fn(&'t Tx<'t>, &'t C) -> BoxFuture<'t, SqlResult<T>> + Sync,
    {
        self.run(op, Mode::Write, ctx, body).await
    }

    /// Runs `body` like [`Self::write`], recording `change` in the same transaction when
    /// `changed` says the write changed something (the helper the identity store's writes share).
    async fn write_changed<C, T, F>(
        &self,
        change: Change,
        changed: fn(&T) -> bool,
        op: &'static str,
        ctx: C,
        body: F,
    ) -> Result<T>
    where
        C: Sync,
        T: Send + 'static,
        F: for<'t> Fn(&'t Tx<'t>, &'t C) -> BoxFuture<'t, PgResult<T>> + Sync,
    {
        self.write_sql(
            op,
            (ctx, change, &body, changed),
            |tx, (ctx, change, body, changed)| {
                Box::pin(async move {
                    let out = body(tx, ctx).await?;
                    if changed(&out) {
                        record(tx, std::slice::from_ref(change)).await?;
                    }
                    Ok(out)
                })
            },
        )
        .await
    }

    /// Applies the migrations not yet recorded.
    ///
    /// Several nodes may start at once. They take turns through a lease row
    /// (`schema_migrations_lease`, one row, taken by an upsert that succeeds only when the row is
    /// free or expired), and each migration's version row is written after its DDL with a unique
    /// key, so a node that lost the race (or outlived its lease) sees the row and skips the
    /// migration. PostgreSQL applies a file and its version row in one transaction; CockroachDB
    /// commits DDL on its own (`autocommit_before_ddl`, and DDL may not follow writes in a
    /// transaction), which is why the DDL comes first in the transaction, every migration is
    /// idempotent (`IF NOT EXISTS`, enforced by `meta::migrate`'s tests), and the version row is
    /// written last: an interrupted migration is simply applied again. No advisory locks, which
    /// CockroachDB lacks.
    async fn migrate(&self) -> Result<()> {
        self.bootstrap().await?;
        if self.pending(POSTGRES).await?.is_empty() {
            return Ok(());
        }
        let holder = uuid::Uuid::new_v4().to_string();
        if !self.acquire_lease(&holder).await? {
            // Another node applied everything while we waited.
            return Ok(());
        }
        let applied = self.apply_pending(&holder, POSTGRES).await;
        let released = self
            .write("release_migration_lease", holder.as_str(), |tx, &holder| {
                Box::pin(async move {
                    exec(
                        tx,
                        "DELETE FROM schema_migrations_lease WHERE id = 1 AND holder = $1",
                        &[&holder],
                    )
                    .await
                })
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(
                error = %e,
                "could not release the migration lease; it expires by itself"
            );
        }
        applied
    }

    /// Creates the two tables the migration runner itself needs, one statement at a time, outside
    /// any transaction (CockroachDB runs DDL best on its own). Concurrent starters can collide on
    /// PostgreSQL's catalog even with IF NOT EXISTS; the loser tries again.
    async fn bootstrap(&self) -> Result<()> {
        const STATEMENTS: &[&str] = &[
            "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INT8 PRIMARY KEY, name TEXT NOT NULL, applied_at INT8 NOT NULL)",
            "CREATE TABLE IF NOT EXISTS schema_migrations_lease (
             id INT8 PRIMARY KEY, holder TEXT NOT NULL, expires_at INT8 NOT NULL)",
        ];
        let client = self.inner.pool.get().await.map_err(pool_err)?;
        for sql in STATEMENTS {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match client.batch_execute(sql).await {
                    Ok(()) => break,
                    Err(e) if attempt < MAX_ATTEMPTS && is_concurrent_ddl(&e) => {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(e) => return Err(pg_err(e)),
                }
            }
        }
        Ok(())
    }

    /// The migrations of `all` not recorded in `schema_migrations`.
    async fn pending(&self, all: &'static [Migration]) -> Result<Vec<&'static Migration>> {
        let done: HashSet<i64> = self
            .read("pending_migrations", (), |tx, _| {
                Box::pin(async move {
                    let rows = all_rows(tx, "SELECT version FROM schema_migrations").await?;
                    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
                })
            })
            .await?;
        Ok(all.iter().filter(|m| !done.contains(&m.version)).collect())
    }

    /// Takes the migration lease, waiting while another live node holds it. `false` when the
    /// migrations were applied by someone else meanwhile.
    async fn acquire_lease(&self, holder: &str) -> Result<bool> {
        let mut logged = false;
        loop {
            let taken = self
                .write("acquire_migration_lease", holder, |tx, &holder| {
                    Box::pin(async move {
                        let now = now_millis();
                        let row = opt(
                            tx,
                            "INSERT INTO schema_migrations_lease (id, holder, expires_at)
                             VALUES (1, $1, $2)
                             ON CONFLICT (id) DO UPDATE
                                 SET holder = excluded.holder, expires_at = excluded.expires_at
                                 WHERE schema_migrations_lease.expires_at < $3
                                    OR schema_migrations_lease.holder = $1
                             RETURNING holder",
                            &[&holder, &(now + LEASE_MILLIS), &now],
                        )
                        .await?;
                        Ok(row.is_some())
                    })
                })
                .await?;
            if taken {
                return Ok(true);
            }
            if self.pending(POSTGRES).await?.is_empty() {
                return Ok(false);
            }
            if !logged {
                tracing::info!("another node is applying migrations; waiting for it");
                logged = true;
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Applies each pending migration, renewing the lease before each one.
    async fn apply_pending(&self, holder: &str, all: &'static [Migration]) -> Result<()> {
        for m in self.pending(all).await? {
            self.write("renew_migration_lease", holder, |tx, &holder| {
                Box::pin(async move {
                    exec(
                        tx,
                        "UPDATE schema_migrations_lease SET expires_at = $2
                         WHERE id = 1 AND holder = $1",
                        &[&holder, &(now_millis() + LEASE_MILLIS)],
                    )
                    .await
                })
            })
            .await?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = self
                    .write("apply_migration", m, |tx, &m| {
                        Box::pin(async move {
                            // Reads only before the DDL: CockroachDB refuses DDL after a write.
                            let done = tx
                                .query_opt(
                                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                                    &[&m.version],
                                )
                                .await?;
                            if done.is_some() {
                                return Ok(false);
                            }
                            tx.batch_execute(m.sql).await?;
                            tx.execute(
                                "INSERT INTO schema_migrations (version, name, applied_at)
                                 VALUES ($1, $2, $3)",
                                &[&m.version, &m.name, &now_millis()],
                            )
                            .await?;
                            Ok(true)
                        })
                    })
                    .await;
                match result {
                    Ok(true) => {
                        tracing::info!(migration = m.name, "applied migration");
                        break;
                    }
                    Ok(false) => break,
                    // A node that raced us (after our lease expired) created the same objects
                    // or version row first: look again.
                    Err(Error::Database(e))
                        if attempt < MAX_ATTEMPTS
                            && e.downcast_ref::<PgError>().is_some_and(is_concurrent_ddl) =>
                    {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(Error::Database(e)) => {
                        return Err(Error::Database(
                            format!("migration {} failed: {}", m.name, describe(&*e)).into(),
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Errors a concurrent creator of the same object or version row causes.
fn is_concurrent_ddl(e: &PgError) -> bool {
    [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
        SqlState::T_R_SERIALIZATION_FAILURE,
    ]
    .iter()
    .any(|c| e.code() == Some(c))
}

/// Runs a statement without parameters and returns every row.
async fn all_rows(tx: &Tx<'_>, sql: &str) -> PgResult<Vec<Row>> {
    all(tx, sql, &[]).await
}

async fn repo_id(tx: &Tx<'_>, repo: &str) -> PgResult<Option<String>> {
    Ok(opt(
        tx,
        "SELECT id FROM repositories WHERE name = $1",
        &[&repo.as_bytes()],
    )
    .await?
    .map(|r| r.get(0)))
}

/// The repository's id, creating it (and recording that) when missing.
async fn ensure_repo(tx: &Tx<'_>, repo: &str, changes: &mut Vec<Change>) -> PgResult<String> {
    if let Some(id) = repo_id(tx, repo).await? {
        return Ok(id);
    }
    // A concurrent creator of the same name makes this a serialization failure on both databases
    // (the name was read as absent), so the retried body finds the row.
    let id = uuid::Uuid::new_v4().to_string();
    exec(
        tx,
        "INSERT INTO repositories (id, name, created_at) VALUES ($1, $2, $3)",
        &[&id, &repo.as_bytes(), &now_millis()],
    )
    .await?;
    changes.push(Change::RepositoryCreated {
        repo: repo.to_owned(),
    });
    Ok(id)
}

/// Records a write's changes (and their work) in its transaction.
async fn record(tx: &Tx<'_>, changes: &[Change]) -> SqlResult<()> {
    changes::record(&mut PgDb(tx), changes, now_millis()).await
}

/// Deletes a session that ends without a blob (cancelled, mismatched, purged), records that (its
/// objects are queued for deletion), and drops its repository if the session was all it held.
async fn end_upload_without_blob(tx: &Tx<'_>, repo: &str, id: &str) -> SqlResult<()> {
    let repo_id = repo_id(tx, repo).await?;
    remove_upload(tx, id).await?;
    let mut changes = vec![Change::UploadDeleted {
        repo: repo.to_owned(),
        upload: id.to_owned(),
    }];
    if let Some(repo_id) = repo_id {
        content::drop_if_unused(&mut PgDb(tx), &repo_id, repo, &mut changes).await?;
    }
    record(tx, &changes).await
}

async fn link_blob(tx: &Tx<'_>, repo_id: &str, digest: &str) -> PgResult<()> {
    exec(
        tx,
        "INSERT INTO repository_blobs (repo_id, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repo_id, digest) DO NOTHING",
        &[&repo_id, &digest, &now_millis()],
    )
    .await?;
    Ok(())
}

type RawBlob = (String, i64, String);

fn raw_blob(row: &Row) -> RawBlob {
    (row.get(0), row.get(1), row.get(2))
}

fn blob_row(raw: RawBlob) -> Result<BlobRow> {
    Ok(BlobRow {
        digest: parse_digest(raw.0)?,
        size: to_u64(raw.1),
        storage_key: raw.2,
    })
}

const BLOB_IN_REPO: &str = "SELECT b.digest, b.size, b.storage_key FROM blobs b
                            JOIN repository_blobs rb ON rb.digest = b.digest
                            JOIN repositories r ON r.id = rb.repo_id
                            WHERE r.name = $1 AND b.digest = $2";

async fn load_upload(tx: &Tx<'_>, repo: &str, id: &str) -> PgResult<Option<UploadRow>> {
    let row = opt(
        tx,
        "SELECT u.byte_offset, u.hash_state FROM uploads u
         JOIN repositories r ON r.id = u.repo_id
         WHERE u.id = $1 AND r.name = $2",
        &[&id, &repo.as_bytes()],
    )
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let parts = all(
        tx,
        "SELECT start_offset, size, storage_key FROM upload_parts
         WHERE upload_id = $1 ORDER BY start_offset",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| UploadPart {
        start: to_u64(r.get(0)),
        size: to_u64(r.get(1)),
        storage_key: r.get(2),
    })
    .collect();
    Ok(Some(UploadRow {
        id: id.to_owned(),
        offset: to_u64(row.get(0)),
        hash_state: row.get(1),
        parts,
    }))
}

async fn remove_upload(tx: &Tx<'_>, id: &str) -> PgResult<()> {
    exec(tx, "DELETE FROM upload_parts WHERE upload_id = $1", &[&id]).await?;
    exec(tx, "DELETE FROM uploads WHERE id = $1", &[&id]).await?;
    Ok(())
}

/// The first [`REFERENCED_LIMIT`] values of `rows`' first column in byte order. Sorted here rather
/// than by `ORDER BY`, because TEXT ordering follows the database's (locale) collation.
fn first_referencing(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    out.sort_unstable();
    out.dedup();
    out.truncate(REFERENCED_LIMIT);
    out
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

/// Distinct values, first occurrence order kept.
fn distinct(items: &[Digest]) -> Vec<&str> {
    let mut seen = HashSet::new();
    items
        .iter()
        .map(Digest::as_str)
        .filter(|d| seen.insert(*d))
        .collect()
}

/// The body of `put_manifest`: the references `m` lacks in `repo` (blobs, then children), or
/// nothing after storing the manifest, its references and its tag. `blobs` and `children` are
/// `m`'s, without repeats.
async fn put_manifest_tx(
    tx: &Tx<'_>,
    repo: &str,
    m: &NewManifest,
    blobs: &[&str],
    children: &[&str],
) -> SqlResult<Vec<String>> {
    // Check references before writing anything, so a refused push leaves no trace (not even a
    // new repository row).
    let existing_id = repo_id(tx, repo).await?;
    let (mut have_blobs, mut have_children) = (HashSet::new(), HashSet::new());
    if let Some(id) = &existing_id {
        if !blobs.is_empty() {
            let sql = "SELECT digest FROM repository_blobs WHERE repo_id = $1 AND digest = ANY($2)";
            for r in all(tx, sql, &[id, &blobs]).await? {
                have_blobs.insert(r.get::<_, String>(0));
            }
        }
        if !children.is_empty() {
            let sql = "SELECT digest FROM manifests WHERE repo_id = $1 AND digest = ANY($2)";
            for r in all(tx, sql, &[id, &children]).await? {
                have_children.insert(r.get::<_, String>(0));
            }
        }
    }
    let missing_blobs = m.blobs.iter().filter(|d| !have_blobs.contains(d.as_str()));
    let missing_children = m
        .children
        .iter()
        .filter(|d| !have_children.contains(d.as_str()));
    let missing: Vec<String> = missing_blobs
        .chain(missing_children)
        .map(|d| d.as_str().to_owned())
        .collect();
    if !missing.is_empty() {
        return Ok(missing);
    }
    let mut changes = Vec::new();
    let repo_id = match existing_id {
        Some(id) => id,
        None => ensure_repo(tx, repo, &mut changes).await?,
    };
    let now = now_millis();
    let digest = m.digest.as_str();
    let inserted = exec(
        tx,
        "INSERT INTO manifests (repo_id, digest, media_type, payload, size,
            subject_digest, artifact_type, annotations, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (repo_id, digest) DO NOTHING",
        &[
            &repo_id,
            &digest,
            &m.media_type,
            &m.payload,
            &to_i64(m.payload.len() as u64),
            &m.subject.as_ref().map(Digest::as_str),
            &m.artifact_type,
            &m.annotations,
            &now,
        ],
    )
    .await?;
    if inserted > 0 {
        if !blobs.is_empty() {
            exec(
                tx,
                "INSERT INTO manifest_blobs (repo_id, manifest_digest, blob_digest)
                 SELECT $1, $2, d FROM unnest($3::TEXT[]) AS d
                 ON CONFLICT DO NOTHING",
                &[&repo_id, &digest, &blobs],
            )
            .await?;
        }
        if !children.is_empty() {
            exec(
                tx,
                "INSERT INTO manifest_children (repo_id, manifest_digest, child_digest)
                 SELECT $1, $2, d FROM unnest($3::TEXT[]) AS d
                 ON CONFLICT DO NOTHING",
                &[&repo_id, &digest, &children],
            )
            .await?;
        }
    }
    let mut previous = None;
    if let Some(tag) = &m.tag {
        let name = tag.as_str().as_bytes();
        previous = opt(
            tx,
            "SELECT manifest_digest FROM tags WHERE repo_id = $1 AND name = $2",
            &[&repo_id, &name],
        )
        .await?
        .map(|r| r.get::<_, String>(0))
        .filter(|d| d != digest);
        exec(
            tx,
            "INSERT INTO tags (repo_id, name, manifest_digest, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (repo_id, name)
             DO UPDATE SET manifest_digest = excluded.manifest_digest,
                           updated_at = excluded.updated_at",
            &[&repo_id, &name, &digest, &now],
        )
        .await?;
    }
    changes.push(Change::ManifestPut {
        repo: repo.to_owned(),
        digest: digest.to_owned(),
        tag: m.tag.as_ref().map(ToString::to_string),
        previous,
    });
    record(tx, &changes).await?;
    Ok(Vec::new())
}

#[async_trait]
impl MetaStore for PostgresStore {
    async fn ping(&self) -> Result<()> {
        self.read("ping", (), |tx, _| {
            Box::pin(async move {
                tx.simple_query("SELECT 1").await?;
                Ok(())
            })
        })
        .await
    }

    fn record_gauges(&self) {
        self.record_pool_gauges();
    }

    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        let repo = repo.as_str();
        self.read("repository_exists", repo, |tx, &repo| {
            Box::pin(async move { Ok(repo_id(tx, repo).await?.is_some()) })
        })
        .await
    }

    async fn list_repositories(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>> {
        let after = after.unwrap_or("").as_bytes();
        let names: Vec<Vec<u8>> = self
            .read(
                "list_repositories",
                (after, limit),
                |tx, &(after, limit)| {
                    Box::pin(async move {
                        let rows = all(
                            tx,
                            "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
                            &[&after, &i64::from(limit)],
                        )
                        .await?;
                        Ok(rows.iter().map(|r| r.get(0)).collect())
                    })
                },
            )
            .await?;
        names.into_iter().map(name_of).collect()
    }

    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobRow>> {
        let (repo, digest) = (repo.as_str().as_bytes(), digest.as_str());
        let raw = self
            .read("blob_in_repo", (repo, digest), |tx, &(repo, digest)| {
                Box::pin(async move {
                    Ok(opt(tx, BLOB_IN_REPO, &[&repo, &digest])
                        .await?
                        .as_ref()
                        .map(raw_blob))
                })
            })
            .await?;
        raw.map(blob_row).transpose()
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRow>> {
        let digest = digest.as_str();
        let raw = self
            .read("blob", digest, |tx, &digest| {
                Box::pin(async move {
                    Ok(opt(
                        tx,
                        "SELECT digest, size, storage_key FROM blobs WHERE digest = $1",
                        &[&digest],
                    )
                    .await?
                    .as_ref()
                    .map(raw_blob))
                })
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
        let (from, to, digest) = (from.as_str(), to.as_str(), digest.as_str());
        let raw = self
            .write_sql(
                "mount_blob",
                (from, to, digest),
                |tx, &(from, to, digest)| {
                    Box::pin(async move {
                        let raw = opt(tx, BLOB_IN_REPO, &[&from.as_bytes(), &digest])
                            .await?
                            .as_ref()
                            .map(raw_blob);
                        if raw.is_some() {
                            let mut changes = Vec::new();
                            let to_id = ensure_repo(tx, to, &mut changes).await?;
                            link_blob(tx, &to_id, digest).await?;
                            changes.push(Change::BlobLinked {
                                repo: to.to_owned(),
                                digest: digest.to_owned(),
                                via: "mount".into(),
                            });
                            record(tx, &changes).await?;
                        }
                        Ok(raw)
                    })
                },
            )
            .await?;
        raw.map(blob_row).transpose()
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Delete> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        let (outcome, referencing) = self
            .write_sql("unlink_blob", (repo, digest), |tx, &(repo, digest)| {
                Box::pin(async move {
                    let Some(id) = repo_id(tx, repo).await? else {
                        return Ok((Delete::NotFound, Vec::new()));
                    };
                    let rows = all(
                        tx,
                        "SELECT manifest_digest FROM manifest_blobs
                         WHERE repo_id = $1 AND blob_digest = $2",
                        &[&id, &digest],
                    )
                    .await?;
                    let referencing = first_referencing(&rows);
                    if !referencing.is_empty() {
                        return Ok((Delete::Deleted, referencing));
                    }
                    let n = exec(
                        tx,
                        "DELETE FROM repository_blobs WHERE repo_id = $1 AND digest = $2",
                        &[&id, &digest],
                    )
                    .await?;
                    if n > 0 {
                        let change = Change::BlobUnlinked {
                            repo: repo.to_owned(),
                            digest: digest.to_owned(),
                        };
                        record(tx, &[change]).await?;
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
            })
            .await?;
        if referencing.is_empty() {
            Ok(outcome)
        } else {
            Ok(Delete::Referenced(digests(referencing)?))
        }
    }

    async fn create_upload(&self, repo: &RepoName, id: &str, hash_state: &[u8]) -> Result<()> {
        let repo = repo.as_str();
        self.write_sql(
            "create_upload",
            (repo, id, hash_state),
            |tx, &(repo, id, hash_state)| {
                Box::pin(async move {
                    let mut changes = Vec::new();
                    let repo_id = ensure_repo(tx, repo, &mut changes).await?;
                    let now = now_millis();
                    exec(
                        tx,
                        "INSERT INTO uploads
                             (id, repo_id, byte_offset, hash_state, started_at, updated_at)
                         VALUES ($1, $2, 0, $3, $4, $4)",
                        &[&id, &repo_id, &hash_state, &now],
                    )
                    .await?;
                    record(tx, &changes).await
                })
            },
        )
        .await
    }

    async fn upload(&self, repo: &RepoName, id: &str) -> Result<Option<UploadRow>> {
        let repo = repo.as_str();
        self.read("upload", (repo, id), |tx, &(repo, id)| {
            Box::pin(load_upload(tx, repo, id))
        })
        .await
    }

    async fn advance_upload(
        &self,
        id: &str,
        expected_offset: u64,
        part: &UploadPart,
        hash_state: &[u8],
    ) -> Result<bool> {
        self.write(
            "advance_upload",
            (id, expected_offset, part, hash_state),
            |tx, &(id, expected_offset, part, hash_state)| {
                Box::pin(async move {
                    let n = exec(
                        tx,
                        "UPDATE uploads SET byte_offset = $1, hash_state = $2, updated_at = $3
                         WHERE id = $4 AND byte_offset = $5",
                        &[
                            &to_i64(part.start.saturating_add(part.size)),
                            &hash_state,
                            &now_millis(),
                            &id,
                            &to_i64(expected_offset),
                        ],
                    )
                    .await?;
                    if n == 0 {
                        return Ok(false);
                    }
                    exec(
                        tx,
                        "INSERT INTO upload_parts (upload_id, start_offset, size, storage_key)
                         VALUES ($1, $2, $3, $4)",
                        &[
                            &id,
                            &to_i64(part.start),
                            &to_i64(part.size),
                            &part.storage_key,
                        ],
                    )
                    .await?;
                    Ok(true)
                })
            },
        )
        .await
    }

    async fn delete_upload(&self, repo: &RepoName, id: &str) -> Result<Option<UploadRow>> {
        let repo = repo.as_str();
        self.write_sql("delete_upload", (repo, id), |tx, &(repo, id)| {
            Box::pin(async move {
                let row = load_upload(tx, repo, id).await?;
                if row.is_some() {
                    end_upload_without_blob(tx, repo, id).await?;
                }
                Ok(row)
            })
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
        let repo = repo.as_str();
        let raw = self
            .write_sql(
                "finish_upload",
                (repo, id, expected_offset, blob),
                |tx, &(repo, id, expected_offset, blob)| {
                    Box::pin(async move {
                        let parts = match load_upload(tx, repo, id).await? {
                            Some(row) if row.offset == expected_offset => row.parts,
                            _ => return Ok(None),
                        };
                        // Decided here, in the finishing transaction (SERIALIZABLE): a blob row
                        // read outside it could be gone by now, and a concurrent delete of the
                        // row conflicts with this read instead of racing it.
                        let digest = blob.digest.as_str();
                        let existing = opt(
                            tx,
                            "SELECT digest, size, storage_key FROM blobs WHERE digest = $1",
                            &[&digest],
                        )
                        .await?
                        .as_ref()
                        .map(raw_blob);
                        if existing.is_none() && blob.storage_key.is_none() {
                            return Ok(Some(Finish::NeedsBytes));
                        }
                        remove_upload(tx, id).await?;
                        let mut changes = Vec::new();
                        let repo_id = ensure_repo(tx, repo, &mut changes).await?;
                        let keep = match (&existing, &blob.storage_key) {
                            (None, Some(key)) => {
                                // A concurrent insert of the same digest is a serialization
                                // failure here (the digest was read as absent); the retry then
                                // sees the existing row.
                                exec(
                                    tx,
                                    "INSERT INTO blobs (digest, size, storage_key, created_at)
                                     VALUES ($1, $2, $3, $4)",
                                    &[&digest, &to_i64(blob.size), key, &now_millis()],
                                )
                                .await?;
                                Some(key.clone())
                            }
                            _ => None,
                        };
                        link_blob(tx, &repo_id, digest).await?;
                        changes.push(Change::BlobLinked {
                            repo: repo.to_owned(),
                            digest: digest.to_owned(),
                            via: "upload".into(),
                        });
                        changes.push(finished_change(repo, id, blob, &parts, keep));
                        record(tx, &changes).await?;
                        Ok(Some(match existing {
                            None => Finish::Inserted,
                            Some(raw) => Finish::Present(raw),
                        }))
                    })
                },
            )
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
        let (blobs, children) = (distinct(&m.blobs), distinct(&m.children));
        let ctx = (repo.as_str(), m, blobs.as_slice(), children.as_slice());
        let missing = self
            .write_sql("put_manifest", ctx, |tx, &(repo, m, blobs, children)| {
                Box::pin(put_manifest_tx(tx, repo, m, blobs, children))
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
        let repo = repo.as_str().as_bytes();
        let raw: Option<(String, String, Vec<u8>)> = self
            .read("manifest", (repo, reference), |tx, &(repo, reference)| {
                Box::pin(async move {
                    let row = match reference {
                        Reference::Digest(d) => {
                            opt(
                                tx,
                                "SELECT m.digest, m.media_type, m.payload FROM manifests m
                                 JOIN repositories r ON r.id = m.repo_id
                                 WHERE r.name = $1 AND m.digest = $2",
                                &[&repo, &d.as_str()],
                            )
                            .await?
                        }
                        Reference::Tag(t) => {
                            opt(
                                tx,
                                "SELECT m.digest, m.media_type, m.payload FROM tags t
                                 JOIN repositories r ON r.id = t.repo_id
                                 JOIN manifests m
                                 ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest
                                 WHERE r.name = $1 AND t.name = $2",
                                &[&repo, &t.as_str().as_bytes()],
                            )
                            .await?
                        }
                    };
                    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
                })
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
        let (repo, tag) = (repo.as_str(), tag.as_str());
        self.write_sql("delete_tag", (repo, tag), |tx, &(repo, tag)| {
            Box::pin(async move {
                let Some(id) = repo_id(tx, repo).await? else {
                    return Ok(false);
                };
                let Some(row) = opt(
                    tx,
                    "DELETE FROM tags WHERE repo_id = $1 AND name = $2 RETURNING manifest_digest",
                    &[&id, &tag.as_bytes()],
                )
                .await?
                else {
                    return Ok(false);
                };
                let change = Change::TagDeleted {
                    repo: repo.to_owned(),
                    tag: tag.to_owned(),
                    digest: row.get(0),
                };
                record(tx, &[change]).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Delete> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        let (outcome, referencing) = self
            .write_sql("delete_manifest", (repo, digest), |tx, &(repo, digest)| {
                Box::pin(async move {
                    let Some(id) = repo_id(tx, repo).await? else {
                        return Ok((Delete::NotFound, Vec::new()));
                    };
                    let rows = all(
                        tx,
                        "SELECT manifest_digest FROM manifest_children
                         WHERE repo_id = $1 AND child_digest = $2",
                        &[&id, &digest],
                    )
                    .await?;
                    let referencing = first_referencing(&rows);
                    if !referencing.is_empty() {
                        return Ok((Delete::Deleted, referencing));
                    }
                    let n = exec(
                        tx,
                        "DELETE FROM manifests WHERE repo_id = $1 AND digest = $2",
                        &[&id, &digest],
                    )
                    .await?;
                    if n == 0 {
                        return Ok((Delete::NotFound, Vec::new()));
                    }
                    let mut tags = all(
                        tx,
                        "DELETE FROM tags WHERE repo_id = $1 AND manifest_digest = $2
                         RETURNING name",
                        &[&id, &digest],
                    )
                    .await?
                    .iter()
                    .map(|r| name_of(r.get(0)))
                    .collect::<Result<Vec<String>>>()
                    .unwrap_or_default();
                    tags.sort();
                    for sql in [
                        "DELETE FROM manifest_blobs WHERE repo_id = $1 AND manifest_digest = $2",
                        "DELETE FROM manifest_children WHERE repo_id = $1 AND manifest_digest = $2",
                    ] {
                        exec(tx, sql, &[&id, &digest]).await?;
                    }
                    let change = Change::ManifestDeleted {
                        repo: repo.to_owned(),
                        digest: digest.to_owned(),
                        tags,
                    };
                    record(tx, &[change]).await?;
                    Ok((Delete::Deleted, Vec::new()))
                })
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
        let (repo, after) = (repo.as_str(), after.unwrap_or("").as_bytes());
        let names: Option<Vec<Vec<u8>>> = self
            .read(
                "list_tags",
                (repo, after, limit),
                |tx, &(repo, after, limit)| {
                    Box::pin(async move {
                        let Some(id) = repo_id(tx, repo).await? else {
                            return Ok(None);
                        };
                        let rows = all(
                            tx,
                            "SELECT name FROM tags WHERE repo_id = $1 AND name > $2
                             ORDER BY name LIMIT $3",
                            &[&id, &after, &i64::from(limit)],
                        )
                        .await?;
                        Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
                    })
                },
            )
            .await?;
        names
            .map(|names| names.into_iter().map(name_of).collect())
            .transpose()
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<ReferrerRow>>> {
        let (repo, subject) = (repo.as_str(), subject.as_str());
        type Raw = (String, String, i64, Option<String>, Option<String>);
        let raw: Option<Vec<Raw>> = self
            .read(
                "referrers",
                (repo, subject, artifact_type),
                |tx, &(repo, subject, artifact_type)| {
                    Box::pin(async move {
                        let Some(id) = repo_id(tx, repo).await? else {
                            return Ok(None);
                        };
                        let rows = all(
                            tx,
                            "SELECT digest, media_type, size, artifact_type, annotations
                             FROM manifests
                             WHERE repo_id = $1 AND subject_digest = $2
                               AND ($3::TEXT IS NULL OR artifact_type = $3::TEXT)",
                            &[&id, &subject, &artifact_type],
                        )
                        .await?;
                        Ok(Some(
                            rows.iter()
                                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                                .collect(),
                        ))
                    })
                },
            )
            .await?;
        raw.map(|mut rows| {
            // Byte order, like SQLite's, whatever the database's collation.
            rows.sort_by(|a, b| a.0.cmp(&b.0));
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
        let mode = match op.mode() {
            OpMode::Read => Mode::Read,
            OpMode::Queue => Mode::Queue,
            OpMode::Write => Mode::Write,
        };
        self.run(op.name(), mode, op, |tx, op| {
            Box::pin(async move { queue::run(&mut PgDb(tx), op).await })
        })
        .await
    }

    async fn cluster_id(&self, candidate: &str) -> Result<String> {
        self.write("cluster_id", candidate, |tx, &candidate| {
            Box::pin(async move {
                exec(
                    tx,
                    "INSERT INTO cluster (singleton, id, created_at) VALUES (1, $1, $2)
                     ON CONFLICT (singleton) DO NOTHING",
                    &[&candidate, &now_millis()],
                )
                .await?;
                let row = opt(tx, "SELECT id FROM cluster WHERE singleton = 1", &[]).await?;
                Ok(row.map(|r| r.get::<_, String>(0)))
            })
        })
        .await?
        .ok_or_else(|| Error::Corrupt("the cluster row is missing after its insert".into()))
    }

    async fn stale_uploads(&self, before: i64, limit: u32) -> Result<Vec<StaleUpload>> {
        type Raw = (Vec<u8>, String, i64);
        let raw: Vec<Raw> = self
            .read("stale_uploads", (before, limit), |tx, &(before, limit)| {
                Box::pin(async move {
                    let rows = all(
                        tx,
                        "SELECT r.name, u.id, u.updated_at FROM uploads u
                         JOIN repositories r ON r.id = u.repo_id
                         WHERE u.updated_at < $1 ORDER BY u.updated_at LIMIT $2",
                        &[&before, &i64::from(limit)],
                    )
                    .await?;
                    Ok(rows
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect())
                })
            })
            .await?;
        raw.into_iter()
            .map(|(repo, id, updated_at)| {
                Ok(StaleUpload {
                    repo: name_of(repo)?,
                    id,
                    updated_at,
                })
            })
            .collect()
    }

    async fn delete_stale_upload(&self, id: &str, before: i64) -> Result<bool> {
        self.write_sql("delete_stale_upload", (id, before), |tx, &(id, before)| {
            Box::pin(async move {
                let repo = opt(
                    tx,
                    "SELECT r.name FROM uploads u JOIN repositories r ON r.id = u.repo_id
                     WHERE u.id = $1 AND u.updated_at < $2",
                    &[&id, &before],
                )
                .await?
                .map(|r| String::from_utf8_lossy(&r.get::<_, Vec<u8>>(0)).into_owned());
                match repo {
                    Some(repo) => {
                        end_upload_without_blob(tx, &repo, id).await?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            })
        })
        .await
    }

    async fn delete_repository(&self, repo: &RepoName) -> Result<bool> {
        self.write_sql("delete_repository", repo.as_str(), |tx, &repo| {
            Box::pin(
                async move { content::delete_repository(&mut PgDb(tx), repo, now_millis()).await },
            )
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
        let repo = repo.as_str();
        let max_active = i64::try_from(max_active).unwrap_or(i64::MAX);
        // The count is read in a snapshot of its own, outside the SERIALIZABLE insert: counting
        // inside it put every session of the owner into the insert's read set, so concurrent
        // starts and chunks of one user (a CI robot pushing layers in parallel) aborted each
        // other until they gave up. Starts racing at the boundary may overshoot it by their
        // number; SQLite, with its single writer, stays exact.
        let (active, oldest) = self
            .read(
                "count_active_uploads",
                (owner, active_since),
                |tx, &(owner, active_since)| {
                    Box::pin(async move {
                        let row = opt(
                            tx,
                            "SELECT COUNT(*), MIN(updated_at) FROM uploads
                             WHERE owner = $1 AND updated_at >= $2",
                            &[&owner, &active_since],
                        )
                        .await?;
                        Ok(row.map_or((0, None), |r| (r.get::<_, i64>(0), r.get(1))))
                    })
                },
            )
            .await?;
        if active >= max_active {
            return Ok(super::UploadAdmission::Full {
                oldest_updated_at: oldest.unwrap_or(active_since),
            });
        }
        self.write_sql(
            "create_upload_bounded",
            (repo, id, hash_state, owner),
            |tx, &(repo, id, hash_state, owner)| {
                Box::pin(async move {
                    let mut changes = Vec::new();
                    let repo_id = ensure_repo(tx, repo, &mut changes).await?;
                    let now = now_millis();
                    exec(
                        tx,
                        "INSERT INTO uploads
                             (id, repo_id, byte_offset, hash_state, started_at, updated_at, owner)
                         VALUES ($1, $2, 0, $3, $4, $4, $5)",
                        &[&id, &repo_id, &hash_state, &now, &owner],
                    )
                    .await?;
                    record(tx, &changes).await?;
                    Ok(super::UploadAdmission::Created)
                })
            },
        )
        .await
    }

    async fn upload_progress(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Option<super::UploadProgress>> {
        let repo = repo.as_str();
        self.read("upload_progress", (repo, id), |tx, &(repo, id)| {
            Box::pin(async move {
                let row = opt(
                    tx,
                    "SELECT u.byte_offset, u.hash_state,
                            (SELECT COUNT(*) FROM upload_parts p WHERE p.upload_id = u.id)
                     FROM uploads u JOIN repositories r ON r.id = u.repo_id
                     WHERE u.id = $1 AND r.name = $2",
                    &[&id, &repo.as_bytes()],
                )
                .await?;
                Ok(row.map(|r| super::UploadProgress {
                    id: id.to_owned(),
                    offset: to_u64(r.get(0)),
                    hash_state: r.get(1),
                    parts: to_u64(r.get(2)),
                }))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    use super::*;
    use crate::meta::conformance::{pg_config, postgres_store};

    /// A body that fails with `sqlstate` on its first `failures` runs, then succeeds.
    async fn flaky(store: &PostgresStore, sqlstate: &str, failures: u32) -> (Result<()>, u32) {
        let runs = AtomicU32::new(0);
        let raise =
            format!("DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$");
        let result = store
            .write(
                "flaky",
                (&runs, raise.as_str(), failures),
                |tx, &(runs, raise, failures)| {
                    Box::pin(async move {
                        if runs.fetch_add(1, Ordering::SeqCst) < failures {
                            tx.batch_execute(raise).await?;
                        }
                        Ok(())
                    })
                },
            )
            .await;
        (result, runs.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn serialization_failures_and_deadlocks_are_retried_and_counted() {
        let (mut store, db) = postgres_store().await;
        // Fewer attempts keep the exhaustion case below quick; the bound works the same.
        let attempts = 4;
        Arc::get_mut(&mut store.inner).unwrap().max_attempts = attempts;
        let before = store.retries();
        let (result, runs) = flaky(&store, "40001", 2).await;
        result.unwrap();
        assert_eq!(runs, 3, "the body re-ran from scratch after each failure");
        assert_eq!(store.retries() - before, 2);

        let (result, runs) = flaky(&store, "40P01", 1).await;
        result.unwrap();
        assert_eq!(runs, 2);
        assert_eq!(store.retries() - before, 3);

        // Bounded: a transaction that never gets through gives up with 503 material.
        let (result, runs) = flaky(&store, "40001", u32::MAX).await;
        assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
        assert_eq!(runs, attempts);
        assert_eq!(store.retries() - before, 3 + u64::from(attempts) - 1);

        // Other errors are not retried.
        let (result, runs) = flaky(&store, "22012", u32::MAX).await;
        assert!(matches!(result, Err(Error::Database(_))), "{result:?}");
        assert_eq!(runs, 1);
        drop(store);
        db.drop_now().await.unwrap();
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 1..=MAX_ATTEMPTS + 5 {
            let step = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            let d = backoff(attempt);
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} vs {step:?}"
            );
        }
        assert!(backoff(30) <= BACKOFF_CAP);
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable_quickly() {
        // Nothing listens on port 1.
        let config = DatabaseConfig {
            url: "postgres://aerugo:hunter2@127.0.0.1:1/aerugo".into(),
            connect_timeout_seconds: 1,
            ..DatabaseConfig::default()
        };
        let started = Instant::now();
        let err = PostgresStore::open(&config).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(
            err.to_string().contains("refused"),
            "the cause is named: {err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A server that accepts connections but never answers must not hang us either.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let config = DatabaseConfig {
            url: format!("postgres://aerugo:hunter2@127.0.0.1:{port}/aerugo"),
            connect_timeout_seconds: 1,
            ..DatabaseConfig::default()
        };
        let started = Instant::now();
        let err = PostgresStore::open(&config).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        hold.abort();
    }

    #[tokio::test]
    async fn debug_output_never_shows_the_password() {
        let config = DatabaseConfig {
            url: "postgres://aerugo:hunter2@db.invalid:5432/aerugo".into(),
            ..DatabaseConfig::default()
        };
        let store = PostgresStore::connect(&config).unwrap();
        let shown = format!("{store:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.invalid"), "{shown}");
    }

    #[tokio::test]
    async fn a_busy_pool_answers_unavailable_after_the_wait_timeout() {
        let (store, db) = postgres_store().await;
        let config = DatabaseConfig {
            max_connections: 1,
            connect_timeout_seconds: 1,
            ..pg_config(db.url())
        };
        let small = PostgresStore::open(&config).await.unwrap();
        let held = small.inner.pool.get().await.unwrap();
        let started = Instant::now();
        let err = small.ping().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
        drop(held);
        small.ping().await.unwrap();
        drop((small, store));
        db.drop_now().await.unwrap();
    }

    #[tokio::test]
    async fn connections_killed_by_the_server_are_replaced_without_errors() {
        let (store, db) = postgres_store().await;
        let r: RepoName = "killed/conn".parse().unwrap();
        store.create_upload(&r, "k1", b"s").await.unwrap();
        let admin = PostgresStore::connect(&DatabaseConfig {
            url: aerugo_testkit::postgres::admin_url(),
            ..DatabaseConfig::default()
        })
        .unwrap();
        let name = db.name().to_owned();
        // Every pooled connection of the store dies, as in a database restart or failover.
        admin
            .write("terminate", name.as_str(), |tx, &name| {
                Box::pin(async move {
                    tx.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&name],
                    )
                    .await
                })
            })
            .await
            .unwrap();
        for _ in 0..3 {
            assert!(store.upload(&r, "k1").await.unwrap().is_some());
        }
        drop((store, admin));
        db.drop_now().await.unwrap();
    }

    async fn count(store: &PostgresStore, sql: &'static str) -> i64 {
        store
            .read("count", sql, |tx, &sql| {
                Box::pin(async move { Ok(tx.query_one(sql, &[]).await?.get::<_, i64>(0)) })
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_starting_together_migrate_once() {
        let db = aerugo_testkit::postgres::TestDatabase::create()
            .await
            .unwrap();
        let config = DatabaseConfig {
            url: db.url().to_owned(),
            max_connections: 2,
            ..DatabaseConfig::default()
        };
        let mut starters = Vec::new();
        for _ in 0..6 {
            let config = config.clone();
            starters.push(tokio::spawn(
                async move { PostgresStore::open(&config).await },
            ));
        }
        let mut stores = Vec::new();
        for s in starters {
            stores.push(s.await.unwrap().unwrap());
        }
        let store = &stores[0];
        let applied = count(store, "SELECT count(*) FROM schema_migrations").await;
        assert_eq!(applied, i64::try_from(POSTGRES.len()).unwrap());
        assert_eq!(
            count(store, "SELECT count(*) FROM schema_migrations_lease").await,
            0
        );
        // Every node sees a working schema.
        for (i, s) in stores.iter().enumerate() {
            let r: RepoName = format!("node{i}/app").parse().unwrap();
            s.create_upload(&r, &format!("n{i}"), b"s").await.unwrap();
        }
        // Opening again is a no-op.
        drop(PostgresStore::open(&config).await.unwrap());
        assert_eq!(
            count(store, "SELECT count(*) FROM schema_migrations").await,
            applied
        );
        drop(stores);
        db.drop_now().await.unwrap();
    }

    #[tokio::test]
    async fn an_interrupted_migration_is_applied_again() {
        let db = aerugo_testkit::postgres::TestDatabase::create()
            .await
            .unwrap();
        let config = DatabaseConfig {
            url: db.url().to_owned(),
            ..DatabaseConfig::default()
        };
        // As on CockroachDB, where DDL commits on its own: the first migration's objects exist,
        // but the node died before recording the version. And a dead node's lease is left over.
        let raw = PostgresStore::connect(&config).unwrap();
        raw.bootstrap().await.unwrap();
        let client = raw.inner.pool.get().await.unwrap();
        client.batch_execute(POSTGRES[0].sql).await.unwrap();
        client
            .execute(
                "INSERT INTO schema_migrations_lease (id, holder, expires_at)
                 VALUES (1, 'dead', $1)",
                &[&(now_millis() - 1)],
            )
            .await
            .unwrap();
        drop(client);
        let store = PostgresStore::open(&config).await.unwrap();
        let recorded = count(&store, "SELECT count(*) FROM schema_migrations").await;
        assert_eq!(recorded, i64::try_from(POSTGRES.len()).unwrap());
        drop((raw, store));
        db.drop_now().await.unwrap();
    }

    #[tokio::test]
    async fn a_live_lease_is_waited_for() {
        let db = aerugo_testkit::postgres::TestDatabase::create()
            .await
            .unwrap();
        let config = DatabaseConfig {
            url: db.url().to_owned(),
            ..DatabaseConfig::default()
        };
        let raw = PostgresStore::connect(&config).unwrap();
        raw.bootstrap().await.unwrap();
        let client = raw.inner.pool.get().await.unwrap();
        client
            .execute(
                "INSERT INTO schema_migrations_lease (id, holder, expires_at)
                 VALUES (1, 'busy', $1)",
                &[&(now_millis() + 1_500)],
            )
            .await
            .unwrap();
        drop(client);
        let started = Instant::now();
        let store = PostgresStore::open(&config).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(1_000),
            "waited for the lease"
        );
        let recorded = count(&store, "SELECT count(*) FROM schema_migrations").await;
        assert_eq!(recorded, i64::try_from(POSTGRES.len()).unwrap());
        drop((raw, store));
        db.drop_now().await.unwrap();
    }

    /// A CA that signed nothing the test server uses.
    const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBezCCASOgAwIBAgIUVNOmVZZPyp7KZJ6p78bjOVSatIwwCgYIKoZIzj0EAwIw\n\
EzERMA8GA1UEAwwIb3RoZXItY2EwIBcNMjYxMTI4MDM1NjIwWhgPMjEyNjExMDQw\n\
MzU2MjBaMBMxETAPBgNVBAMMCG90aGVyLWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0D\n\
AQcDQgAEIh8qrE+ftOuGYe69AaVBRQYB9HN20poT/FkcGsPOEUbcz28171SA1R5b\n\
r35qsQgGbBhvLt3ykgUX+vD1D5PdAqNTMFEwHQYDVR0OBBYEFCGpBsSBfYrFyQE8\n\
Y57IYrLHumzlMB8GA1UdIwQYMBaAFCGpBsSBfYrFyQE8Y57IYrLHumzlMA8GA1Ud\n\
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRgAwQwIgI/I6bUeqQponSmX3VN402ALu\n\
hkSP6afX7a/PBJ0F7R0CHxepjS1hhSUuQcUm58Av/XENtnQ5YSkpMR78fTY4P+c=\n\
-----END CERTIFICATE-----\n\
";

    /// The local server's certificate (Debian's snakeoil: `CN=localhost`, self-signed).
    const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

    /// Whether a connection made with `params` (appended to the test server's URL) runs over
    /// TLS, as the server sees it.
    async fn uses_tls(params: &str) -> Result<bool> {
        let base = aerugo_testkit::postgres::admin_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let store = PostgresStore::connect(&pg_config(&format!("{base}{sep}{params}")))?;
        let client = store.inner.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get::<_, bool>(0))
    }

    #[tokio::test]
    async fn sslmode_decides_tls_and_verification() {
        assert!(
            std::path::Path::new(SNAKEOIL).exists(),
            "this test needs the local PostgreSQL with ssl=on and Debian's snakeoil certificate \
             ({SNAKEOIL}); see .ci/run"
        );
        assert!(
            !uses_tls("sslmode=disable").await.unwrap(),
            "disable: plain"
        );
        assert!(uses_tls("sslmode=require").await.unwrap(), "require: TLS");
        assert!(
            uses_tls("sslmode=prefer").await.unwrap(),
            "prefer: TLS when offered"
        );
        // The snakeoil certificate is its own root and names `localhost`, not 127.0.0.1: the
        // chain verifies, the host name does not.
        let root = format!("sslrootcert={SNAKEOIL}");
        assert!(
            uses_tls(&format!("sslmode=verify-ca&{root}"))
                .await
                .unwrap(),
            "verify-ca: chain only"
        );
        let err = uses_tls(&format!("sslmode=verify-full&{root}"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certificate not valid for name \"127.0.0.1\""),
            "verify-full must refuse a certificate for another name: {err}"
        );
        // A root that did not sign the server's certificate fails verify-ca too.
        let other = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(other.path(), OTHER_CA).unwrap();
        let err = uses_tls(&format!(
            "sslmode=verify-ca&sslrootcert={}",
            other.path().display()
        ))
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("invalid peer certificate") && !err.contains("not valid for name"),
            "unknown issuer: {err}"
        );
        let err = uses_tls("sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslrootcert=/nonexistent.pem"), "{err}");
    }
}
