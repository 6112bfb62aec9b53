//! Database faults, on a private PostgreSQL cluster the test owns and stops and starts: a node
//! started before its database answers at once (live, not ready, 503 `UNAVAILABLE`) and becomes
//! ready by itself; a node that loses its database answers 503 quickly and recovers by itself.
//! These run on PostgreSQL whatever `AERUGO_TEST_BACKEND` says.

use std::time::Duration;

use aerugo_testkit::image;
use aerugo_testkit::pgcluster::PgCluster;
use aerugo_testkit::{Node, NodeOptions};
use reqwest::{Method, StatusCode};

use crate::support::{ADMIN_PASSWORD, BIN, assert_error, send};

/// The bound a request may take while the database is away (connect timeout 2 s, plus slack for
/// a loaded machine): it must answer, never hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

async fn cluster() -> PgCluster {
    PgCluster::start_new()
        .await
        .expect("a private PostgreSQL cluster (initdb/pg_ctl from the postgresql package)")
}

fn options(cluster: &PgCluster) -> NodeOptions {
    NodeOptions::new(BIN)
        .with_env("AERUGO_AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD)
        .with_env("AERUGO_DATABASE__URL", cluster.url())
        .with_env("AERUGO_DATABASE__CONNECT_TIMEOUT_SECONDS", "2")
}

/// A push and a pull of a small image through `node`.
async fn push_and_pull(node: &Node, seed: u64) {
    let c = node.client().with_basic("admin", ADMIN_PASSWORD);
    let img = image::image(seed, 1, 500, "amd64");
    c.push_image("faults/app", "v1", &img).await.unwrap();
    let res = c.get_manifest("faults/app", "v1", &[]).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), img.manifest.data);
    for blob in img.content_blobs() {
        assert_eq!(
            c.get_blob_ok("faults/app", &blob.digest).await.unwrap(),
            blob.data
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_startup_then_ready_without_restart() {
    let cluster = cluster().await;
    cluster.stop().await.unwrap();
    let mut node = Node::spawn(options(&cluster).live_only()).await.unwrap();
    let c = node.client().with_basic("admin", ADMIN_PASSWORD);

    let res = tokio::time::timeout(ANSWER_WITHIN, send(&c, Method::GET, "/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "starting", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("metadata database unavailable"),
        "{body}"
    );
    for path in [
        "/v2/",
        "/v2/faults/app/manifests/v1",
        "/v2/faults/app/blobs/uploads/",
    ] {
        let method = if path.ends_with("uploads/") {
            Method::POST
        } else {
            Method::GET
        };
        let res = tokio::time::timeout(ANSWER_WITHIN, send(&c, method, path))
            .await
            .expect("a request while starting answers");
        assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    }
    let res = send(&c, Method::GET, "/api/v1/users").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(
        send(&c, Method::GET, "/healthz").await.status(),
        StatusCode::OK
    );

    cluster.start().await.unwrap();
    node.wait_until_ready(Duration::from_secs(90))
        .await
        .expect("ready once the database is up, without a restart");
    assert!(node.is_running(), "same process");
    push_and_pull(&node, 1).await;
    let log = node.log();
    assert!(
        log.contains("metadata database unavailable at startup; retrying in"),
        "{log}"
    );
    assert!(log.contains("metadata database ready"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_lost_while_serving_then_recovered() {
    let cluster = cluster().await;
    let mut node = Node::spawn(options(&cluster)).await.unwrap();
    push_and_pull(&node, 2).await;
    let c = node.client().with_basic("admin", ADMIN_PASSWORD);

    cluster.stop().await.unwrap();
    for path in ["/v2/faults/app/manifests/v1", "/v2/faults/app/tags/list"] {
        let res = tokio::time::timeout(ANSWER_WITHIN, send(&c, Method::GET, path))
            .await
            .expect("a request without a database answers, never hangs");
        assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    }
    let res = tokio::time::timeout(ANSWER_WITHIN, send(&c, Method::GET, "/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "unavailable", "{body}");

    cluster.start().await.unwrap();
    node.wait_until_ready(Duration::from_secs(90))
        .await
        .expect("ready again once the database is back, without a restart");
    assert!(node.is_running(), "same process");
    push_and_pull(&node, 3).await;
    let log = node.log();
    assert!(
        log.contains("request failed") && log.contains("cannot connect to the database"),
        "the log says what happened: {log}"
    );
}
