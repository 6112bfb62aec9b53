//! A fresh PostgreSQL database per test (or per test binary), dropped afterwards.
//!
//! [`TestDatabase::create`] connects to the server named by `AERUGO_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth, as on the development machines and
//! in CI), creates a database with a unique name, and hands out its URL for Aerugo
//! (`AERUGO_DATABASE__URL`) or for a store under test. The database sorts TEXT by a locale (ICU
//! en-US) where the server supports it, as production databases do. Dropping the value drops the
//! database, terminating connections still open to it. When no server answers, creation fails with
//! a message saying how to start one: tests never skip silently.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio_postgres::NoTls;

/// The variable naming the PostgreSQL server tests use.
pub const DATABASE_URL_VAR: &str = "AERUGO_TEST_DATABASE_URL";
/// The server used when [`DATABASE_URL_VAR`] is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How to get a server when none answers.
const HOW_TO_START: &str = "start the local cluster with \
    `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
    (Debian's postgresql package; trust auth for user postgres on 127.0.0.1:5432), \
    or point AERUGO_TEST_DATABASE_URL at a server where that user may CREATE DATABASE";

/// How long to wait for the server before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A database created for one test (or one test binary); dropped with this value.
pub struct TestDatabase {
    /// The server-level URL (pointing at the maintenance database).
    admin_url: String,
    /// The database's name.
    name: String,
    /// The URL of the created database.
    url: String,
    /// Set once the database is gone, so `Drop` does nothing.
    dropped: bool,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("url", &redacted(&self.url))
            .finish()
    }
}

/// The server-level URL: `AERUGO_TEST_DATABASE_URL` or the default.
pub fn admin_url() -> String {
    std::env::var(DATABASE_URL_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// `url` with its password replaced by `***`, for messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `url` with its database name replaced by `db` (query parameters kept).
fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{} is not a postgres:// URL", redacted(url)))?;
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A name no other test (in this or another process) is using.
fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "aerugo_test_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects to `url`, failing with instructions when no server answers.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().with_context(|| {
        format!(
            "{DATABASE_URL_VAR}={} is not a PostgreSQL URL",
            redacted(url)
        )
    })?;
    config.connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to PostgreSQL at {} ({DATABASE_URL_VAR}): {e}; {HOW_TO_START}",
            redacted(url)
        )
    })?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; its error, if any, surfaces through
        // the client's calls.
        let _ = connection.await;
    });
    Ok(client)
}

/// Drops database `name` on the server at `admin_url`, first terminating its connections.
async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let client = connect(admin_url).await?;
    // `WITH (FORCE)` (PostgreSQL 13+) ends sessions a test left open, such as a store's pool.
    let forced = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
    if forced.is_err() {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )
            .await
            .ok();
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
            .with_context(|| format!("dropping test database {name}"))?;
    }
    Ok(())
}

impl TestDatabase {
    /// Creates a fresh, uniquely named database on the server named by
    /// `AERUGO_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let admin_url = admin_url();
        let client = connect(&admin_url).await?;
        let name = unique_name();
        // The template keeps the new database empty; the encoding makes names UTF-8 whatever
        // the cluster's default. Where the server has ICU (PostgreSQL 15+), the database gets a
        // locale collation (en-US), as production databases usually do, so a query that relies
        // on byte-ordered TEXT fails here rather than in production. Otherwise, the default.
        let icu = client
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' \
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            ))
            .await;
        if icu.is_ok() {
            let url = with_database(&admin_url, &name)?;
            return Ok(TestDatabase {
                admin_url,
                name,
                url,
                dropped: false,
            });
        }
        client
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'"
            ))
            .await
            .with_context(|| {
                format!(
                    "creating test database {name} on {}; the user needs CREATEDB",
                    redacted(&admin_url)
                )
            })?;
        let url = with_database(&admin_url, &name)?;
        Ok(TestDatabase {
            admin_url,
            name,
            url,
            dropped: false,
        })
    }

    /// The database's URL, e.g. for `AERUGO_DATABASE__URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now (rather than on `Drop`), reporting failures.
    pub async fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // A thread with its own runtime: `Drop` may run inside a tokio runtime, where blocking on
        // another future would panic, or outside any runtime.
        let joined = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drop_database(&admin_url, &name))
        })
        .join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_and_redacted() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "y").unwrap(),
            "postgresql://u:p@h/y?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:1", "z").unwrap(),
            "postgres://u@h:1/z"
        );
        assert_eq!(
            redacted("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_ne!(unique_name(), unique_name());
    }

    #[tokio::test]
    async fn creates_and_drops_a_database() {
        let db = TestDatabase::create().await.unwrap();
        let client = connect(db.url()).await.unwrap();
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db.name());
        let name = db.name().to_owned();
        // A connection left open must not stop the drop.
        db.drop_now().await.unwrap();
        drop(client);
        let admin = connect(&admin_url()).await.unwrap();
        let left = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .unwrap();
        assert!(left.is_none());
    }

    #[tokio::test]
    async fn unreachable_server_says_how_to_start_one() {
        let err = connect("postgres://postgres@127.0.0.1:1/postgres")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("pg_ctlcluster"), "{err}");
        assert!(err.contains(DATABASE_URL_VAR), "{err}");
    }
}
