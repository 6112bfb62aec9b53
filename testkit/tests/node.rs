//! Tests of `aerugo_testkit::node` against `fake-aerugo`, a stand-in server
//! built from this crate, covering start-up, environment, logs, graceful and
//! hard stops, restarts, early exits and the port-retry path.

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use aerugo_testkit::{Node, NodeOptions};
use anyhow::Result;
use reqwest::{Method, StatusCode};

fn options() -> NodeOptions {
    NodeOptions::new(env!("CARGO_BIN_EXE_fake-aerugo"))
}

async fn readyz(node: &Node) -> Result<StatusCode> {
    Ok(node
        .client()
        .request(Method::GET, "/readyz")
        .send()
        .await?
        .status())
}

#[tokio::test]
async fn spawn_passes_environment_and_stops_gracefully() -> Result<()> {
    let mut node = Node::spawn(
        options()
            .with_env("AERUGO_EXTRA", "1")
            .with_env("AERUGO_SERVER__PUBLIC_URL", "http://registry.test"),
    )
    .await?;
    assert_eq!(node.url(), format!("http://127.0.0.1:{}", node.port()));
    assert_eq!(node.addr().port(), node.port());
    assert_eq!(readyz(&node).await?, StatusCode::OK);
    assert!(node.is_running());
    assert!(node.pid() > 0);

    let log = node.log();
    let dir = node.data_dir().display().to_string();
    assert!(log.contains("AERUGO_EXTRA=1"), "{log}");
    assert!(
        log.contains("AERUGO_SERVER__PUBLIC_URL=http://registry.test"),
        "{log}"
    );
    assert!(
        log.contains(&format!("AERUGO_DATABASE__URL=sqlite://{dir}/aerugo.db")),
        "{log}"
    );
    assert!(
        log.contains(&format!("AERUGO_STORAGE__ROOT={dir}/blobs")),
        "{log}"
    );
    assert!(log.contains(&format!(
        "AERUGO_SERVER__LISTEN_ADDRESS=127.0.0.1:{}",
        node.port()
    )));

    let status = node.stop().await?;
    assert_eq!(status.code(), Some(0));
    assert!(node.log().contains("shutting down"));
    assert!(!node.is_running());
    // Stopping a stopped node reports the earlier exit.
    assert_eq!(node.stop().await?.code(), Some(0));
    Ok(())
}

#[tokio::test]
async fn kill_hard_and_restart_keep_port_and_directory() -> Result<()> {
    let mut node = Node::spawn(options()).await?;
    let (port, dir, first_pid) = (node.port(), node.data_dir().to_owned(), node.pid());

    let status = node.kill_hard().await?;
    assert_eq!(status.signal(), Some(9));
    assert!(!node.is_running());
    assert!(readyz(&node).await.is_err());

    node.restart().await?;
    assert!(node.is_running());
    assert_eq!(node.port(), port);
    assert_eq!(node.data_dir(), dir);
    assert_ne!(node.pid(), first_pid);
    assert_eq!(readyz(&node).await?, StatusCode::OK);
    assert_eq!(
        node.log().matches("=== aerugo-testkit: starting").count(),
        2
    );

    // Restarting a running node stops it gracefully first.
    node.restart().await?;
    assert_eq!(node.log().matches("shutting down").count(), 1);
    assert_eq!(readyz(&node).await?, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn early_exit_reports_the_log_tail() {
    let result = Node::spawn(options().with_env("FAKE_AERUGO_MODE", "crash")).await;
    let error = format!("{:#}", result.expect_err("a crashing node must not start"));
    assert!(error.contains("fake-aerugo: boom"), "{error}");
    assert!(error.contains("exit status: 3"), "{error}");
}

#[tokio::test]
async fn port_taken_at_start_is_retried_on_a_new_port() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::spawn(
        options()
            .with_env("FAKE_AERUGO_MODE", "port-taken-once")
            .with_data_dir(dir.path().join("node")),
    )
    .await?;
    assert_eq!(readyz(&node).await?, StatusCode::OK);
    let log = node.log();
    assert_eq!(
        log.matches("=== aerugo-testkit: starting").count(),
        2,
        "{log}"
    );
    assert!(log.contains("Address already in use"));
    assert_eq!(node.data_dir(), dir.path().join("node"));
    drop(node);
    // A caller-supplied directory survives the node.
    assert!(dir.path().join("node/node.log").exists());
    Ok(())
}

#[tokio::test]
async fn stop_falls_back_to_sigkill() -> Result<()> {
    let mut node = Node::spawn(options().with_env("FAKE_AERUGO_MODE", "ignore-term")).await?;
    let started = tokio::time::Instant::now();
    let status = node.stop().await?;
    assert_eq!(status.signal(), Some(9));
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert!(node.log().contains("ignoring SIGTERM"));
    Ok(())
}

#[tokio::test]
async fn drop_kills_the_process() -> Result<()> {
    let node = Node::spawn(options()).await?;
    let addr = node.addr();
    drop(node);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node outlived its handle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
