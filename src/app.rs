//! Wiring: builds the metadata store, blob storage and `Registry` from the configuration, serves
//! HTTP, and owns graceful shutdown (readiness goes false first, then in-flight requests drain).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::api::{self, ApiState};
use crate::config::{Config, DatabaseKind};
use crate::meta::MetaStore;
use crate::meta::sqlite::SqliteStore;
use crate::service::{Registry, Settings};
use crate::storage::Storage;

/// Opens the metadata store `database.url` names, applying migrations.
pub async fn open_meta(config: &Config) -> anyhow::Result<Arc<dyn MetaStore>> {
    match config.database_kind()? {
        DatabaseKind::Sqlite(path) => {
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening SQLite database {}", path.display()))?;
            Ok(Arc::new(store))
        }
        DatabaseKind::Postgres => anyhow::bail!(
            "database.url: PostgreSQL/CockroachDB metadata is not available in this build yet; \
             use sqlite://<path>"
        ),
    }
}

/// Builds the registry from the configuration.
pub async fn build_registry(config: &Config) -> anyhow::Result<Registry> {
    let meta = open_meta(config).await?;
    let storage = Storage::from_config(&config.storage).context("opening blob storage")?;
    Ok(Registry::new(meta, storage, Settings::from_config(config)))
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let registry = build_registry(&config).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let state = ApiState {
        registry,
        ready: ready.clone(),
        request_timeout: Duration::from_secs(config.server.request_timeout_seconds),
        body_idle_timeout: Duration::from_secs(config.server.body_idle_timeout_seconds),
        metrics: crate::telemetry::metrics(),
    };
    let app = api::router(state);
    let listener = tokio::net::TcpListener::bind(config.server.listen_address)
        .await
        .with_context(|| format!("binding {}", config.server.listen_address))?;
    let addr = listener.local_addr()?;
    tracing::info!(listen_address = %addr, storage = ?config.storage.kind, "aerugo serving");
    ready.store(true, Ordering::Release);
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal_ready = ready.clone();
    let shutdown = async move {
        shutdown_signal().await;
        signal_ready.store(false, Ordering::Release);
        tracing::info!("shutdown requested: draining in-flight requests");
        let _ = tx.send(());
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let server = tokio::spawn(async move { server.await });
    // After the signal, in-flight requests get `grace` to finish; then the process exits anyway.
    let _ = rx.await;
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.context("server task")?.context("server")?,
        Err(_) => tracing::warn!(
            grace_seconds = grace.as_secs(),
            "grace period over, exiting with requests in flight"
        ),
    }
    tracing::info!("aerugo stopped");
    Ok(())
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
