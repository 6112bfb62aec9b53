//! The work queue as an operator sees it: the queue gauges and job counters on `/metrics`, dead
//! letters listed and requeued through the management API (site admins only), and no work lost
//! when a node is killed (SIGKILL) while it holds claims.
//!
//! The kill test needs PostgreSQL whatever `AERUGO_TEST_BACKEND` says: two nodes share a database.

use std::time::{Duration, Instant};

use aerugo_testkit::postgres::TestDatabase;
use aerugo_testkit::{Node, NodeOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, BIN, TestNode, blob, header, node_with, send};

/// Polls `/metrics` until every needle is in it (or fails after 10 s); returns the text.
async fn metrics_with(node: &TestNode, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = send(&node.client(), Method::GET, "/metrics").await;
        assert_eq!(res.status(), StatusCode::OK);
        let text = res.text().await.unwrap();
        let missing: Vec<&&str> = needles
            .iter()
            .filter(|n| !text.lines().any(|l| !l.starts_with('#') && l.contains(**n)))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{missing:?} missing from /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the first sample line containing every part of `parts` (0 when none).
fn sample(text: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_running_node_publishes_queue_gauges_and_job_runs() {
    let node = node_with(&[]).await;
    // A cancelled upload with a stored chunk: its objects are deleted by the discard consumer.
    let c = node.client();
    let res = send(&c, Method::POST, "/v2/metrics/jobs/blobs/uploads/").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let loc = header(&res, "location").unwrap();
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .body(blob(71, 1000).data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let loc = header(&res, "location").unwrap();
    assert_eq!(
        send(&c, Method::DELETE, &loc).await.status(),
        StatusCode::NO_CONTENT
    );

    let text = metrics_with(
        &node,
        &[
            "aerugo_queue_depth{topic=\"discard-objects\"}",
            "aerugo_queue_oldest_age_seconds{topic=\"discard-objects\"}",
            "aerugo_queue_buried{topic=\"discard-objects\"}",
            "aerugo_job_runs_total{job=\"queue-stats\",outcome=\"ok\"}",
            "aerugo_job_runs_total{job=\"discard-objects\",outcome=\"ok\"}",
        ],
    )
    .await;
    assert_eq!(
        sample(&text, &["aerugo_queue_buried{", "discard-objects"]),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            &["aerugo_job_runs_total{", "\"discard-objects\"", "\"ok\""]
        ),
        1.0
    );
}

/// Adds a work item the discard consumer cannot read (as a newer version might write one) to the
/// node's database, due at once.
async fn add_unreadable_item(node: &TestNode, key: &str) {
    const INSERT: &str = "INSERT INTO work_items
        (topic, item_key, payload, version, available_at, enqueued_at, attempts)
        VALUES ('discard-objects', $1, 'not json', 1, 0, 0, 0)";
    match node.database_url() {
        None => {
            let db = rusqlite::Connection::open(node.data_dir().join("aerugo.db")).unwrap();
            db.busy_timeout(Duration::from_secs(10)).unwrap();
            db.execute(&INSERT.replace("$1", "?1"), [key]).unwrap();
        }
        Some(url) => {
            let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            db.execute(INSERT, &[&key]).await.unwrap();
        }
    }
}

/// Calls `/api/v1{path}` as `user` (`None`: anonymous) and returns status, `Link` and body.
async fn api(
    node: &TestNode,
    user: Option<(&str, &str)>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut rb = node.anonymous().request(method, &format!("/api/v1{path}"));
    if let Some((u, p)) = user {
        rb = rb.basic_auth(u, Some(p));
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let res = rb.send().await.unwrap();
    let status = res.status();
    let link = header(&res, "link");
    let text = res.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    if status.is_client_error() {
        assert!(body["error"]["code"].is_string(), "{text}");
    }
    (status, link, body)
}

fn keys(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn dead_letters_are_listed_and_requeued_by_site_admins() {
    // One attempt per item: the first failure buries it.
    let node = node_with(&[
        ("AERUGO_JOBS__MAX_ATTEMPTS", "1"),
        ("AERUGO_JOBS__POLL_INTERVAL_MS", "50"),
    ])
    .await;
    let admin = Some(("admin", ADMIN_PASSWORD));
    for key in ["test:a", "test:b", "test:c"] {
        add_unreadable_item(&node, key).await;
    }
    metrics_with(
        &node,
        &["aerugo_job_runs_total{job=\"discard-objects\",outcome=\"buried\"} 3"],
    )
    .await;
    assert!(node.log().contains("work item buried"));

    // Listed in key order, two per page, with the error of the last attempt.
    let (status, link, page) = api(
        &node,
        admin,
        Method::GET,
        "/admin/work/buried?topic=discard-objects&n=2",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(keys(&page), ["test:a", "test:b"]);
    let item = &page[0];
    assert_eq!(item["topic"], "discard-objects");
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["payload"], "not json");
    assert!(
        item["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreadable discard payload")),
        "{item}"
    );
    assert!(item["buried_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let fields: Vec<&String> = item.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        [
            "attempts",
            "buried_at",
            "key",
            "last_error",
            "payload",
            "topic"
        ],
        "no internals"
    );
    let link = link.expect("a Link to the next page");
    let next = link
        .strip_prefix("</api/v1")
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("{link}"));
    assert!(next.contains("topic=discard-objects"), "{next}");
    let (status, link, page) = api(&node, admin, Method::GET, next, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&page), ["test:c"]);
    assert_eq!(link, None);
    let (_, _, all) = api(&node, admin, Method::GET, "/admin/work/buried", None).await;
    assert_eq!(keys(&all), ["test:a", "test:b", "test:c"]);
    let (_, _, none) = api(
        &node,
        admin,
        Method::GET,
        "/admin/work/buried?topic=other",
        None,
    )
    .await;
    assert_eq!(keys(&none), Vec::<&str>::new());
    let (status, _, _) = api(
        &node,
        admin,
        Method::GET,
        "/admin/work/buried?last=no-slash",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Only site admins see or requeue them.
    let (status, _, _) = api(
        &node,
        admin,
        Method::POST,
        "/users",
        Some(json!({"username": "plain", "password": "plain-password", "email": "p@x.test"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let plain = Some(("plain", "plain-password"));
    let requeue_a = json!({"topic": "discard-objects", "key": "test:a"});
    for (user, want) in [
        (plain, StatusCode::FORBIDDEN),
        (None, StatusCode::UNAUTHORIZED),
    ] {
        let (status, _, _) = api(&node, user, Method::GET, "/admin/work/buried", None).await;
        assert_eq!(status, want);
        let (status, _, _) = api(
            &node,
            user,
            Method::POST,
            "/admin/work/requeue",
            Some(requeue_a.clone()),
        )
        .await;
        assert_eq!(status, want);
    }

    // Requeued, the item runs again (and, still unreadable, is buried again).
    let (status, _, body) = api(
        &node,
        admin,
        Method::POST,
        "/admin/work/requeue",
        Some(requeue_a.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, Value::Null);
    metrics_with(
        &node,
        &["aerugo_job_runs_total{job=\"discard-objects\",outcome=\"buried\"} 4"],
    )
    .await;
    for (body, want) in [
        (
            json!({"topic": "discard-objects", "key": "no-such-key"}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"topic": "no-such-topic", "key": "test:b"}),
            StatusCode::NOT_FOUND,
        ),
        (json!({"topic": "discard-objects"}), StatusCode::BAD_REQUEST),
        (
            json!({"topic": "discard-objects", "key": "test:b", "extra": 1}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, _, _) = api(
            &node,
            admin,
            Method::POST,
            "/admin/work/requeue",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, want, "{body}");
    }
}

/// The files stored under upload session `id`'s prefix in an fs storage `root`.
fn upload_files(root: &std::path::Path, id: &str) -> usize {
    std::fs::read_dir(root.join("objects").join(id)).map_or(0, |d| d.flatten().count())
}

/// Waits until `node`'s log contains `needle` (10 s at most).
async fn log_shows(node: &Node, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_killed_while_holding_claims_loses_no_work() {
    const LEASE_SECONDS: u64 = 3;
    let db = TestDatabase::create()
        .await
        .expect("a PostgreSQL database (see the message above)");
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().join("blobs");
    let base = NodeOptions::new(BIN)
        .with_env("AERUGO_AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD)
        .with_env("AERUGO_DATABASE__URL", db.url())
        .with_env(
            "AERUGO_AUTH__SIGNING_KEY_FILE",
            shared.path().join("signing-key.pem").display().to_string(),
        )
        .with_env("AERUGO_STORAGE__TYPE", "fs")
        .with_env("AERUGO_STORAGE__ROOT", root.display().to_string())
        .with_env(
            "AERUGO_JOBS__CLAIM_LEASE_SECONDS",
            LEASE_SECONDS.to_string(),
        )
        .with_env("AERUGO_JOBS__POLL_INTERVAL_MS", "100");
    // Node A claims and then sits on its claims far longer than the test runs.
    let mut a = Node::spawn(
        base.clone()
            .with_env("AERUGO_JOBS__TEST_HOLD_CLAIMS_MS", "600000"),
    )
    .await
    .expect("node A starts");
    let c = a.client().with_basic("admin", ADMIN_PASSWORD);

    // An upload with a stored chunk, cancelled on A: its objects are queued for deletion and A's
    // consumer, woken by the write, claims the item at once.
    let res = send(&c, Method::POST, "/v2/jobs/kill/blobs/uploads/").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let id = header(&res, "docker-upload-uuid").unwrap();
    let loc = header(&res, "location").unwrap();
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .body(blob(72, 2000).data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let loc = header(&res, "location").unwrap();
    assert_eq!(upload_files(&root, &id), 1);
    let cancelled = Instant::now();
    assert_eq!(
        send(&c, Method::DELETE, &loc).await.status(),
        StatusCode::NO_CONTENT
    );
    log_shows(&a, "holding claimed work items").await;
    assert_eq!(upload_files(&root, &id), 1, "A holds the item, undone");

    // A dies holding the claim; B starts on the same database and storage.
    a.kill_hard().await.unwrap();
    let b = Node::spawn(base).await.expect("node B starts");

    // B carries the item out once A's claim lapses, not before (its first polls find it
    // claimed), and never if claims did not lapse.
    let deadline = Instant::now() + Duration::from_secs(30);
    while upload_files(&root, &id) > 0 {
        assert!(
            Instant::now() < deadline,
            "node B never deleted the objects of the killed node's claim:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = cancelled.elapsed();
    assert!(
        took >= Duration::from_secs(LEASE_SECONDS) - Duration::from_millis(200),
        "deleted after {took:?}, before the claim lease of {LEASE_SECONDS} s lapsed"
    );
    assert!(!b.log().contains("holding claimed work items"));
    let stats = send(
        &b.client().with_basic("admin", ADMIN_PASSWORD),
        Method::GET,
        "/api/v1/admin/work/buried",
    )
    .await;
    assert_eq!(stats.status(), StatusCode::OK);
    assert_eq!(stats.text().await.unwrap(), "[]");
}
