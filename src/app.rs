//! Wiring: builds the metadata store, blob storage and `Registry` from the configuration, serves
//! HTTP, and owns graceful shutdown (readiness goes false first, then in-flight requests drain).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::api::{self, ApiState};
use crate::auth::{KeySet, generate_signing_pem};
use crate::config::{Config, DatabaseKind, redact_url};
use crate::jobs::{Clock, Runner};
use crate::meta::identity::IdentityStore;
use crate::meta::postgres::PostgresStore;
use crate::meta::sqlite::SqliteStore;
use crate::meta::{self, MetaStore};
use crate::service::{Registry, Settings, TokenSettings};
use crate::storage::Storage;

/// The metadata stores a backend provides: registry content and identity.
pub struct Stores {
    /// Registry content.
    pub meta: Arc<dyn MetaStore>,
    /// Tenancy and access control.
    pub identity: Arc<dyn IdentityStore>,
}

/// Opens the metadata store `database.url` names, applying migrations.
pub async fn open_meta(config: &Config) -> anyhow::Result<Stores> {
    open_meta_reporting(config, &|_| {}).await
}

/// [`open_meta`], telling `waiting` why the store is not open yet each time it waits.
async fn open_meta_reporting(
    config: &Config,
    waiting: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Stores> {
    match config.database_kind()? {
        DatabaseKind::Sqlite(path) => {
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening SQLite database {}", path.display()))?;
            Ok(Stores {
                meta: Arc::new(store.clone()),
                identity: Arc::new(store),
            })
        }
        DatabaseKind::Postgres => {
            let store = open_postgres(config, waiting).await?;
            Ok(Stores {
                meta: Arc::new(store.clone()),
                identity: Arc::new(store),
            })
        }
    }
}

/// The longest wait between two attempts to reach the database at startup.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// Opens the PostgreSQL/CockroachDB store and applies migrations. While the database cannot be
/// reached it waits and tries again (1 s, doubling up to 30 s, one log line per attempt), so a node
/// started before its database does not crash-loop; a bad URL or a failing migration stops startup.
pub async fn open_postgres(
    config: &Config,
    waiting: &(dyn Fn(String) + Sync),
) -> anyhow::Result<PostgresStore> {
    let target = redact_url(&config.database.url);
    let mut delay = Duration::from_secs(1);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match PostgresStore::open(&config.database).await {
            Ok(store) => {
                tracing::info!(database.url = %target, attempt, "metadata database ready");
                return Ok(store);
            }
            Err(meta::Error::Unavailable(reason)) => {
                tracing::warn!(
                    database.url = %target,
                    attempt,
                    retry_in_s = delay.as_secs(),
                    error = %reason,
                    "metadata database unavailable at startup; retrying in {} s",
                    delay.as_secs()
                );
                waiting(format!(
                    "metadata database unavailable (attempt {attempt}, next in {} s): {reason}",
                    delay.as_secs()
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_CONNECT_BACKOFF);
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("opening the metadata database {target}")));
            }
        }
    }
}

/// Reads the token signing key, creating it (mode 0600) when the file does not exist, plus the
/// extra verification keys.
fn load_keys(config: &Config) -> anyhow::Result<KeySet> {
    let path = &config.auth.signing_key_file;
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let pem = generate_signing_pem()?;
            // Written whole to a private temporary file, then linked under the final name, which
            // fails if the name exists: nodes starting together on a shared volume never read a
            // half-written key, and exactly one key wins.
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let written = opts.open(&tmp).and_then(|mut f| {
                std::io::Write::write_all(&mut f, pem.as_bytes())?;
                f.sync_all()
            });
            let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "created a token signing key");
                    pem.into_bytes()
                }
                // Another node created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path)?,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let extra: Vec<Vec<u8>> = config
        .auth
        .verify_key_files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    let extra_refs: Vec<&[u8]> = extra.iter().map(Vec::as_slice).collect();
    KeySet::from_pems(&pem, &extra_refs)
        .with_context(|| format!("loading token keys from {}", path.display()))
}

fn admin_password(config: &Config) -> anyhow::Result<Option<String>> {
    if let Some(file) = &config.auth.admin_password_file {
        let pw =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return Ok(Some(pw.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(config
        .auth
        .admin_password
        .as_ref()
        .map(|s| s.expose().to_owned()))
}

/// Builds the registry from the configuration; `waiting` hears why it is not built yet.
pub async fn build_registry(
    config: &Config,
    waiting: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Registry> {
    let stores = open_meta_reporting(config, waiting).await?;
    let storage = Storage::from_config(&config.storage).context("opening blob storage")?;
    let tokens = TokenSettings {
        keys: Arc::new(load_keys(config)?),
        issuer: config.auth.issuer.clone(),
        service: config.auth.service.clone(),
        ttl_seconds: config.auth.token_ttl_seconds,
        refresh_ttl_seconds: config.auth.refresh_token_ttl_days.saturating_mul(86_400),
        login_max_failures: config.auth.login_max_failures,
        login_max_failures_per_address: config.auth.login_max_failures_per_address,
        login_window_seconds: config.auth.login_window_seconds,
        self_signup: config.auth.self_signup,
    };
    // The database's cluster id (created by the first node ever to start on it) keeps this
    // deployment's Redis entries and invalidations apart from any other's on the same Redis.
    let cluster_id = stores
        .meta
        .cluster_id(&uuid::Uuid::new_v4().simple().to_string())
        .await
        .context("reading the cluster id from the metadata database")?;
    tracing::info!(cluster.id = %cluster_id, "cluster identity");
    let registry = Registry::new(
        stores.meta,
        stores.identity,
        storage,
        Settings::from_config(config),
        tokens,
        &config.cache,
        &cluster_id,
    )
    .context("setting up the caches")?;
    if let Some(generated) = registry
        .bootstrap_admin(admin_password(config)?.as_deref())
        .await?
    {
        // Shown once, on standard output only: never through the logs.
        println!(
            "aerugo: created the site admin user `admin` with password: {generated}\n\
             aerugo: store it now; it is not shown again (set auth.admin_password to choose one)."
        );
    }
    Ok(registry)
}

/// Runs the server until SIGTERM or SIGINT.
///
/// The listener binds first and answers at once (`/healthz` 200, `/readyz` 503 with the reason,
/// everything else 503 `UNAVAILABLE`) while the metadata store is connected and migrated, which
/// with PostgreSQL/CockroachDB may take long when the database is not up yet; then the real
/// application is installed and readiness turns true, without a restart.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.server.listen_address)
        .await
        .with_context(|| format!("binding {}", config.server.listen_address))?;
    let addr = listener.local_addr()?;
    let metrics = crate::telemetry::metrics();
    let startup = api::Startup::new(metrics.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let signal_ready = ready.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal_ready.store(false, Ordering::Release);
        tracing::info!("shutdown requested: draining in-flight requests");
        let _ = stop_tx.send(true);
    });
    let server_stop = stop_rx.clone();
    let server = serve_connections(listener, api::starting_router(startup.clone()), server_stop);
    let server = tokio::spawn(server);
    tracing::info!(listen_address = %addr, "aerugo listening; opening the metadata store");

    let reporter = startup.clone();
    let waiting = move |reason: String| reporter.set_reason(reason);
    let registry = tokio::select! {
        built = build_registry(&config, &waiting) => Some(built?),
        _ = stop_rx.wait_for(|stop| *stop) => None,
    };
    let mut jobs = None;
    if let Some(registry) = registry {
        let registry_handle = registry.clone();
        startup.finish(ApiState {
            registry,
            ready: ready.clone(),
            request_timeout: Duration::from_secs(config.server.request_timeout_seconds),
            body_idle_timeout: Duration::from_secs(config.server.body_idle_timeout_seconds),
            public_url: config.server.public_url.clone(),
            trusted_proxies: Arc::new(config.server.trusted_proxies.clone()),
            metrics,
        });
        let node = format!("node-{}", uuid::Uuid::new_v4().simple());
        tracing::info!(node.id = %node, "starting background jobs");
        jobs = Some(Runner::standard(registry_handle, node, Clock::Database, &config).spawn());
        if !*stop_rx.borrow() {
            ready.store(true, Ordering::Release);
            tracing::info!(listen_address = %addr, storage = ?config.storage.kind, "aerugo serving");
        }
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    let _ = stop_rx.wait_for(|stop| *stop).await;
    // After the signal, in-flight requests and running jobs share `grace` to finish; then the
    // process exits anyway (claims of unfinished work lapse and other nodes take it).
    let deadline = tokio::time::Instant::now() + grace;
    let jobs_drained = async {
        if let Some(jobs) = jobs {
            jobs.shutdown(grace).await;
        }
    };
    let (served, ()) = tokio::join!(tokio::time::timeout_at(deadline, server), jobs_drained);
    match served {
        Ok(joined) => joined.context("server task")?,
        Err(_) => tracing::warn!(
            grace_seconds = grace.as_secs(),
            "grace period over, exiting with requests in flight"
        ),
    }
    tracing::info!("aerugo stopped");
    Ok(())
}

/// Most header lines hyper parses in one request (its default is 100). Above it hyper answers a
/// bare 431 before any handler runs; up to it, `api`'s middleware enforces the real limit on the
/// head's size (`api::MAX_HEADER_BYTES`) and answers with the OCI or management error envelope.
/// Every request costs a buffer of this many header slots (about 64 bytes each).
const HYPER_MAX_HEADERS: usize = 1024;

/// Accepts connections and serves `app` on each (HTTP/1.1, and HTTP/2 with prior knowledge) until
/// `stop` turns true, then lets open connections finish their requests. This is `axum::serve`
/// with hyper's header limit raised (see [`HYPER_MAX_HEADERS`]); accepted sockets get
/// `TCP_NODELAY` (a response whose head and streamed body go out in separate writes, every blob
/// GET, would otherwise wait for the client's delayed ACK, 40 ms per small blob) and each request
/// the peer address as `ConnectInfo`.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;

    // Dropped when the stop signal comes; every connection task holds a receiver of `closed`, so
    // `closed_tx.closed()` resolves once the last connection ended.
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
        }
        let service =
            app.clone()
                .map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                });
        let service = TowerToHyperService::new(service);
        let mut drain = drain_rx.clone();
        let closed = closed_rx.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().max_headers(HYPER_MAX_HEADERS);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                }
                () = stopped(&mut drain) => {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                }
            }
            drop(closed);
        });
    }
    drop(listener);
    let _ = drain_tx.send(true);
    drop(closed_rx);
    closed_tx.closed().await;
}

/// Resolves once `flag` is true (or its sender is gone); holds no guard across the await.
async fn stopped(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|on| *on).await.map(|_| ());
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes started together on a shared volume: every one gets the same, complete key, and the
    /// file is private to its owner.
    #[test]
    fn nodes_starting_together_share_one_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.auth.signing_key_file = dir.path().join("keys/token-signing-key.pem");
        let racers: Vec<_> = (0..16)
            .map(|_| {
                let config = config.clone();
                std::thread::spawn(move || {
                    load_keys(&config).map(|keys| keys.signing_kid().to_owned())
                })
            })
            .collect();
        let kids: std::collections::BTreeSet<String> = racers
            .into_iter()
            .map(|t| t.join().unwrap().expect("every node loads the key"))
            .collect();
        assert_eq!(kids.len(), 1, "one key for all: {kids:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&config.auth.signing_key_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary files left: {left:?}");
    }
}
