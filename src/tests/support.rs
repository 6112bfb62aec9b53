//! Shared helpers: start a node, build blobs, read error bodies.

use aerugo_testkit::{Blob, Node, NodeOptions, RegistryClient};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

/// The `aerugo` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_aerugo");

/// Starts a node with the embedded defaults (SQLite + fs) in a fresh temporary directory.
pub(crate) async fn node() -> Node {
    node_with(&[]).await
}

/// Starts a node with extra configuration variables.
pub(crate) async fn node_with(env: &[(&str, &str)]) -> Node {
    let mut opts = NodeOptions::new(BIN);
    for (k, v) in env {
        opts = opts.with_env(*k, *v);
    }
    Node::spawn(opts).await.expect("aerugo node starts")
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
