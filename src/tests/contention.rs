//! Issue 3's contention test: 3 nodes on one PostgreSQL database (and one blob directory), 20
//! concurrent clients each, all pushing the same blobs, mounting them, putting manifests to the
//! same tag, overwriting and deleting it. Every answer is a success or a clean spec error, and
//! the final state is consistent. Runs on PostgreSQL whatever `AERUGO_TEST_BACKEND` says.

use std::collections::HashSet;
use std::sync::Arc;

use aerugo_testkit::image::{self, Image};
use aerugo_testkit::multinode::NodeSet;
use aerugo_testkit::postgres::TestDatabase;
use aerugo_testkit::{NodeOptions, RegistryClient};
use reqwest::{Method, Response};

use crate::support::{ADMIN_PASSWORD, BIN};

const NODES: usize = 3;
const CLIENTS_PER_NODE: usize = 20;
const ROUNDS: usize = 2;
const VARIANTS: u64 = 4;
const REPO: &str = "contend/app";
const MIRROR: &str = "contend/mirror";
const TAG: &str = "latest";

/// The spec's error codes: a 4xx must carry one of them.
const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// Fails on a 5xx, or a 4xx without a spec error code; returns the status.
async fn clean(step: &str, res: Response) -> u16 {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    assert!(!status.is_server_error(), "{step}: {status} {text}");
    if status.is_client_error() {
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{step}: {status} body not JSON ({e}): {text}"));
        let code = body["errors"][0]["code"].as_str().unwrap_or("");
        assert!(SPEC_CODES.contains(&code), "{step}: {status} {text}");
    }
    status.as_u16()
}

async fn client_work(c: RegistryClient, images: Arc<Vec<Image>>, who: usize) {
    for round in 0..ROUNDS {
        let img = &images[(who + round) % images.len()];
        for blob in img.content_blobs() {
            let res = c
                .request(
                    Method::POST,
                    &format!("/v2/{REPO}/blobs/uploads/?digest={}", blob.digest),
                )
                .header("content-type", "application/octet-stream")
                .body(blob.data.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(clean("monolithic upload", res).await, 201);
            let res = c
                .request(
                    Method::POST,
                    &format!(
                        "/v2/{MIRROR}/blobs/uploads/?mount={}&from={REPO}",
                        blob.digest
                    ),
                )
                .send()
                .await
                .unwrap();
            clean("mount", res).await;
        }
        let res = c.push_manifest(REPO, TAG, &img.manifest).await.unwrap();
        // A manifest PUT may only fail cleanly (its blobs are all linked: it must succeed).
        assert_eq!(clean("manifest PUT by tag", res).await, 201);
        match (who + round) % 4 {
            0 => {
                let res = c
                    .request(Method::DELETE, &format!("/v2/{REPO}/manifests/{TAG}"))
                    .send()
                    .await
                    .unwrap();
                clean("tag delete", res).await;
            }
            1 => {
                let res = c.get_manifest(REPO, TAG, &[]).await.unwrap();
                clean("manifest GET by tag", res).await;
            }
            _ => {
                let res = c
                    .push_manifest(REPO, &img.manifest.digest, &img.manifest)
                    .await
                    .unwrap();
                assert_eq!(clean("manifest PUT by digest", res).await, 201);
            }
        }
    }
}

fn retries(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("aerugo_db_transaction_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_one_database_stay_consistent() {
    let db = TestDatabase::create()
        .await
        .expect("the shared PostgreSQL server (see the message above)");
    let base = NodeOptions::new(BIN).with_env("AERUGO_AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD);
    let set = NodeSet::spawn(NODES, &base, db.url(), None).await.unwrap();
    let images: Arc<Vec<Image>> = Arc::new(
        (0..VARIANTS)
            .map(|s| image::image(100 + s, 2, 300, "amd64"))
            .collect(),
    );
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (n, node) in set.nodes.iter().enumerate() {
        for k in 0..CLIENTS_PER_NODE {
            let c = node.client().with_basic("admin", ADMIN_PASSWORD);
            tasks.push(tokio::spawn(client_work(
                c,
                images.clone(),
                n * CLIENTS_PER_NODE + k,
            )));
        }
    }
    for t in tasks {
        if let Err(e) = t.await {
            for node in &set.nodes {
                eprintln!("--- node log\n{}", node.log());
            }
            panic!("a client task: {e:?}");
        }
    }
    let elapsed = started.elapsed();

    // Final state, read through every node: the tag (if present) points at a pushed manifest;
    // every manifest is whole, its blobs linked and readable in both repositories.
    let pushed: HashSet<&str> = images.iter().map(|i| i.manifest.digest.as_str()).collect();
    for node in &set.nodes {
        let c = node.client().with_basic("admin", ADMIN_PASSWORD);
        let res = c.get_manifest(REPO, TAG, &[]).await.unwrap();
        match res.status().as_u16() {
            200 => {
                let digest = res
                    .headers()
                    .get("docker-content-digest")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert!(pushed.contains(digest.as_str()), "tag points at {digest}");
            }
            404 => {}
            other => panic!("tag read: {other}"),
        }
        for img in images.iter() {
            let res = c
                .get_manifest(REPO, &img.manifest.digest, &[])
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "manifest {}", img.manifest.digest);
            assert_eq!(res.bytes().await.unwrap(), img.manifest.data);
            for blob in img.content_blobs() {
                for repo in [REPO, MIRROR] {
                    assert_eq!(
                        c.get_blob_ok(repo, &blob.digest).await.unwrap(),
                        blob.data,
                        "{repo}@{}",
                        blob.digest
                    );
                }
            }
        }
    }
    let mut per_node = Vec::new();
    for node in &set.nodes {
        let text = node
            .client()
            .request(Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("aerugo_db_transactions_total"), "{text}");
        assert!(text.contains("aerugo_db_pool_size"), "{text}");
        per_node.push(retries(&text));
    }
    eprintln!(
        "contention: {NODES} nodes x {CLIENTS_PER_NODE} clients x {ROUNDS} rounds in {elapsed:?}; \
         transaction retries per node: {per_node:?}"
    );
    drop(set);
    db.drop_now().await.unwrap();
}
