//! The seam under SQL written once: statements shared by both backends run over [`Db`], a thin
//! adapter each backend implements on its own transaction type.
//!
//! Shared statements use `$1`-style placeholders (the SQLite adapter rewrites them to `?1`), bind
//! [`Val`]s and read [`SqlRow`]s, and keep to SQL that SQLite, PostgreSQL and CockroachDB all
//! accept. Where the dialects part (row locks for claims, the current time), the shared code asks
//! the adapter's [`Engine`]. Each backend keeps only what is truly its own: the pool, TLS, the retry
//! loop, how a transaction starts, and the migration runner.
//!
//! The SQLite adapter's futures never wait (rusqlite is synchronous), so the SQLite store drives
//! shared code with `futures::executor::block_on` on its blocking-pool thread.

use std::future::Future;

/// Which engine runs a statement, for the few dialect hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The embedded SQLite store (one writer at a time).
    Sqlite,
    /// PostgreSQL or CockroachDB.
    Postgres,
}

/// A value bound to, or read from, a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Val {
    /// SQL NULL.
    Null,
    /// Any integer column (`INT8`/`INTEGER`; booleans read as 0/1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (`BYTEA`/`BLOB`).
    Bytes(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// A failure of a shared statement: the engine's own error (kept whole, so the PostgreSQL retry
/// loop still recognises serialization failures) or a value of an unexpected shape.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqlError {
    /// PostgreSQL/CockroachDB.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A column held something the shared code did not expect.
    #[error("unexpected value in column {0}")]
    Shape(usize),
}

/// The result of a shared statement.
pub(crate) type SqlResult<T> = std::result::Result<T, SqlError>;

/// One result row.
#[derive(Clone, Debug)]
pub(crate) struct SqlRow(pub(crate) Vec<Val>);

impl SqlRow {
    fn at(&self, i: usize) -> SqlResult<&Val> {
        self.0.get(i).ok_or(SqlError::Shape(i))
    }

    /// An integer column.
    pub(crate) fn int(&self, i: usize) -> SqlResult<i64> {
        match self.at(i)? {
            Val::Int(v) => Ok(*v),
            _ => Err(SqlError::Shape(i)),
        }
    }

    /// A nullable integer column.
    pub(crate) fn opt_int(&self, i: usize) -> SqlResult<Option<i64>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            _ => Err(SqlError::Shape(i)),
        }
    }

    /// A text column (bytes columns holding UTF-8, such as PostgreSQL's names, read too).
    pub(crate) fn text(&self, i: usize) -> SqlResult<String> {
        match self.at(i)? {
            Val::Text(v) => Ok(v.clone()),
            Val::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| SqlError::Shape(i)),
            _ => Err(SqlError::Shape(i)),
        }
    }

    /// A nullable text column.
    pub(crate) fn opt_text(&self, i: usize) -> SqlResult<Option<String>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// A transaction of one engine, as shared SQL sees it.
pub(crate) trait Db {
    /// The engine, for dialect hooks.
    fn engine(&self) -> Engine;

    /// Runs a statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> impl Future<Output = SqlResult<u64>>;

    /// Runs a query; its rows.
    fn query(&mut self, sql: &str, params: &[Val]) -> impl Future<Output = SqlResult<Vec<SqlRow>>>;

    /// A repository name as the engine's name columns store it (`BYTEA` on PostgreSQL, so
    /// listings sort byte-wise; `TEXT` on SQLite, whose BINARY collation already does).
    fn name(&self, name: &str) -> Val {
        match self.engine() {
            Engine::Postgres => Val::Bytes(name.as_bytes().to_vec()),
            Engine::Sqlite => Val::Text(name.to_owned()),
        }
    }
}

/// The current time of the database, in milliseconds since the Unix epoch: the one clock of
/// leases and claims, so nodes whose clocks disagree still agree on who holds what.
pub(crate) async fn database_now<D: Db>(db: &mut D) -> SqlResult<i64> {
    let sql = match db.engine() {
        Engine::Postgres => "SELECT CAST(EXTRACT(EPOCH FROM now()) * 1000 AS INT8)",
        Engine::Sqlite => "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    };
    let rows = db.query(sql, &[]).await?;
    rows.first().ok_or(SqlError::Shape(0))?.int(0)
}

/// Rewrites `$N` placeholders to SQLite's `?N` (both mean the N-th parameter; SQLite would read
/// `$1` as a named parameter numbered by first appearance).
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_for_sqlite() {
        assert_eq!(
            sqlite_placeholders("SELECT a FROM t WHERE b = $2 AND c = $10 AND d = '$x'"),
            "SELECT a FROM t WHERE b = ?2 AND c = ?10 AND d = '$x'"
        );
    }
}
