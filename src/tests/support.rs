//! Shared helpers: start a node, build blobs, read error bodies.

use aerugo_testkit::{Blob, Node, NodeOptions, RegistryClient};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

/// The `aerugo` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_aerugo");

/// The site admin's password on test nodes.
pub(crate) const ADMIN_PASSWORD: &str = "admin-test-password";

/// An `Authorization` header line with the site admin's credentials, for raw HTTP requests.
pub(crate) fn admin_auth_line() -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));
    format!("Authorization: Basic {token}\r\n")
}

/// A node under test; `client()` is the site admin's client (Basic credentials). On the
/// PostgreSQL backend it owns the node's private database, dropped with it.
pub(crate) struct TestNode {
    node: Node,
    /// Dropped after the node, which is declared first.
    db: Option<aerugo_testkit::postgres::TestDatabase>,
}

impl TestNode {
    /// A client authenticated as the site admin.
    pub(crate) fn client(&self) -> RegistryClient {
        self.node.client().with_basic("admin", ADMIN_PASSWORD)
    }

    /// A client without credentials.
    pub(crate) fn anonymous(&self) -> RegistryClient {
        self.node.client()
    }

    /// The URL of the node's private PostgreSQL database; `None` on SQLite (the database is
    /// `<data dir>/aerugo.db`).
    pub(crate) fn database_url(&self) -> Option<&str> {
        self.db.as_ref().map(|db| db.url())
    }
}

impl std::ops::Deref for TestNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for TestNode {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

/// Starts a node with the embedded defaults (SQLite + fs) in a fresh temporary directory.
pub(crate) async fn node() -> TestNode {
    node_with(&[]).await
}

/// The metadata backend the suite runs against: `AERUGO_TEST_BACKEND=sqlite` (default) or
/// `postgres` (a fresh database per node on `AERUGO_TEST_DATABASE_URL`'s server).
pub(crate) fn backend() -> String {
    std::env::var("AERUGO_TEST_BACKEND").unwrap_or_else(|_| "sqlite".into())
}

/// Starts a node with extra configuration variables.
pub(crate) async fn node_with(env: &[(&str, &str)]) -> TestNode {
    let mut opts = NodeOptions::new(BIN).with_env("AERUGO_AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD);
    let db = match backend().as_str() {
        "sqlite" => None,
        "postgres" => {
            let db = aerugo_testkit::postgres::TestDatabase::create()
                .await
                .expect("a PostgreSQL database for the test (see the message above)");
            opts = opts.with_env("AERUGO_DATABASE__URL", db.url());
            Some(db)
        }
        other => panic!("AERUGO_TEST_BACKEND must be sqlite or postgres, not {other:?}"),
    };
    for (k, v) in env {
        opts = opts.with_env(*k, *v);
    }
    TestNode {
        node: Node::spawn(opts).await.expect("aerugo node starts"),
        db,
    }
}

/// A blob of `size` pseudo-random bytes.
pub(crate) fn blob(seed: u64, size: usize) -> Blob {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    Blob::new("application/octet-stream", data)
}

/// Asserts an error answer: status, spec code, JSON envelope, API version header.
pub(crate) async fn assert_error(res: Response, status: StatusCode, code: &str) -> Value {
    let got = res.status();
    let version = res
        .headers()
        .get("docker-distribution-api-version")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let text = res.text().await.expect("body");
    assert_eq!(got, status, "status for body {text}");
    assert_eq!(version.as_deref(), Some("registry/2.0"));
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(body["errors"][0]["code"], code, "{text}");
    assert!(body["errors"][0]["message"].is_string(), "{text}");
    body
}

/// Sends a request and returns the response.
pub(crate) async fn send(client: &RegistryClient, method: Method, path: &str) -> Response {
    client
        .request(method, path)
        .send()
        .await
        .expect("request sent")
}

/// [`stored_objects`] once it reaches `expected` (objects of ended uploads are deleted by the
/// node's queue consumer right after the commit that queued them), or after 10 s whatever it is.
pub(crate) async fn settled_objects(node: &Node, expected: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = stored_objects(node);
        if n == expected || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Counts the files under the node's blob storage, ignoring the atomic-write scratch directory.
pub(crate) fn stored_objects(node: &Node) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.file_name().is_some_and(|n| n == ".tmp") {
                    0
                } else if p.is_dir() {
                    walk(&p)
                } else {
                    1
                }
            })
            .sum()
    }
    walk(&node.data_dir().join("blobs"))
}

/// A header as a string.
pub(crate) fn header(res: &Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
