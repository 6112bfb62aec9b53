//! Stateless nodes: three `aerugo` processes sharing one PostgreSQL database and one S3 bucket
//! (the testkit's SigV4-checking S3 server) behave as one registry. Each request of a flow goes to another node (the chunks of one upload
//! included), a node killed in the middle of an upload leaves the session to the others, tokens
//! minted by one node are honoured by all, and real clients push through one node and pull
//! through another.
//!
//! These tests need PostgreSQL whatever `AERUGO_TEST_BACKEND` says: a shared database is what
//! makes nodes stateless.

use aerugo_testkit::clients::{self, ClientConfig};
use aerugo_testkit::multinode::{NodeSet, SharedStorage};
use aerugo_testkit::postgres::TestDatabase;
use aerugo_testkit::s3::S3Server;
use aerugo_testkit::{Blob, Image, Node, NodeOptions, RegistryClient, image};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

use crate::support::{ADMIN_PASSWORD, BIN, blob};

/// Nodes on one database and one S3 bucket.
struct Cluster {
    nodes: Vec<Node>,
    /// Dropped after the nodes (declared after them).
    _set_dir: NodeSet,
    _db: TestDatabase,
    s3: S3Server,
}

impl Cluster {
    /// Starts `n` nodes (one after the other, see [`NodeSet`]) on a fresh database and bucket.
    async fn start(n: usize) -> Cluster {
        let db = TestDatabase::create()
            .await
            .expect("a PostgreSQL database for the cluster (see the message above)");
        let s3 = S3Server::start().expect("the testkit's S3 server starts");
        let bucket = s3.fresh_bucket().unwrap();
        let base = NodeOptions::new(BIN).with_env("AERUGO_AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD);
        let storage = SharedStorage::Env(s3.node_env(&bucket));
        let mut set = NodeSet::spawn(n, &base, db.url(), Some(storage))
            .await
            .expect("the nodes start");
        let nodes = std::mem::take(&mut set.nodes);
        Cluster {
            nodes,
            _set_dir: set,
            _db: db,
            s3,
        }
    }

    /// The site admin's client on node `i`; it follows blob redirects to S3 as real clients do
    /// (reqwest drops the Authorization header when the redirect leaves the node's host).
    fn admin(&self, i: usize) -> RegistryClient {
        RegistryClient::with_http_client(self.nodes[i].url(), reqwest::Client::new())
            .with_basic("admin", ADMIN_PASSWORD)
    }
}

/// The path and query of a `Location` (absolute or not), to send the next step to another node.
fn location_path(res: &Response) -> String {
    let loc = res
        .headers()
        .get(LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap();
    match loc.find("/v2/") {
        Some(i) => loc[i..].to_owned(),
        None => panic!("Location {loc:?} is not a /v2/ path"),
    }
}

/// Uploads `blob` in `chunks` pieces, the POST on node 0 and each following step on the next node.
async fn upload_round_robin(cluster: &Cluster, repo: &str, blob: &Blob, chunks: usize) {
    let n = cluster.nodes.len();
    let res = cluster
        .admin(0)
        .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let mut path = location_path(&res);
    let size = blob.data.len();
    let step = size.div_ceil(chunks);
    for (k, start) in (0..size).step_by(step).enumerate() {
        let end = (start + step).min(size);
        let res = cluster
            .admin((k + 1) % n)
            .request(Method::PATCH, &path)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_RANGE, format!("{start}-{}", end - 1))
            .body(blob.data.slice(start..end))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::ACCEPTED,
            "chunk {k} on node {}",
            (k + 1) % n
        );
        path = location_path(&res);
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    let res = cluster
        .admin((chunks + 1) % n)
        .request(Method::PUT, &format!("{path}{sep}digest={}", blob.digest))
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "finishing the upload");
}

async fn tags(c: &RegistryClient, repo: &str) -> Vec<String> {
    let res = c
        .request(Method::GET, &format!("/v2/{repo}/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn three_nodes_behave_as_one_registry() {
    let cluster = Cluster::start(3).await;
    let img: Image = image::image(9001, 2, 300_000, "amd64");

    // Every blob of the image in chunks spread over the three nodes.
    for b in img.all_blobs() {
        upload_round_robin(&cluster, "multi/app", b, 3).await;
    }
    let res = cluster
        .admin(1)
        .push_manifest("multi/app", "v1", &img.manifest)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "manifest push on node 1");

    // Pulled through node 1: blob GETs redirect to a presigned S3 URL, which the client follows.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let layer = &img.content_blobs()[1];
    let res = no_redirect
        .get(format!(
            "{}/v2/multi/app/blobs/{}",
            cluster.nodes[1].url(),
            layer.digest
        ))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    let target = res.headers()[LOCATION].to_str().unwrap();
    assert!(target.starts_with(&cluster.s3.endpoint()), "{target}");
    let puller = cluster.admin(1);
    let res = puller
        .get_manifest("multi/app", "v1", &[image::OCI_MANIFEST])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), img.manifest.data);
    for b in img.all_blobs() {
        assert_eq!(
            puller.get_blob_ok("multi/app", &b.digest).await.unwrap(),
            b.data
        );
    }

    // Listed through node 0, a second tag through node 2, then deleted through node 2.
    assert!(tags(&cluster.admin(0), "multi/app").await == ["v1"]);
    let res = cluster
        .admin(2)
        .push_manifest("multi/app", "v2", &img.manifest)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(tags(&cluster.admin(0), "multi/app").await, ["v1", "v2"]);
    let res = cluster
        .admin(2)
        .request(
            Method::DELETE,
            &format!("/v2/multi/app/manifests/{}", img.manifest.digest),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    for i in 0..3 {
        let res = cluster
            .admin(i)
            .get_manifest("multi/app", "v1", &[image::OCI_MANIFEST])
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::NOT_FOUND,
            "deleted, seen from node {i}"
        );
        assert!(tags(&cluster.admin(i), "multi/app").await.is_empty());
    }
    let res = cluster
        .admin(0)
        .request(Method::GET, "/v2/_catalog")
        .send()
        .await
        .unwrap();
    let catalog: Value = res.json().await.unwrap();
    assert!(
        catalog["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "multi/app"),
        "{catalog}"
    );
}

#[tokio::test]
async fn an_upload_outlives_the_node_that_started_it() {
    let mut cluster = Cluster::start(3).await;
    let b = blob(9002, 3 * 1024 * 1024 + 17);
    let half = b.data.len() / 2;
    let res = cluster
        .admin(0)
        .request(Method::POST, "/v2/multi/crash/blobs/uploads/")
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let path = location_path(&res);
    let res = cluster
        .admin(0)
        .request(Method::PATCH, &path)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_RANGE, format!("0-{}", half - 1))
        .body(b.data.slice(..half))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let path = location_path(&res);

    // The rest starts streaming to node 0, which dies in the middle of that request.
    let (tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let request = cluster
        .admin(0)
        .request(Method::PATCH, &path)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_RANGE, format!("{half}-{}", b.data.len() - 1))
        .header(CONTENT_LENGTH, b.data.len() - half)
        .body(reqwest::Body::wrap_stream(rx));
    let in_flight = tokio::spawn(request.send());
    let mut tx = tx;
    futures::SinkExt::send(&mut tx, Ok(b.data.slice(half..half + 1024 * 1024)))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cluster.nodes[0].kill_hard().await.unwrap();
    drop(tx);
    assert!(
        in_flight.await.unwrap().is_err(),
        "the request to the killed node cannot have succeeded"
    );

    // Another node reports the offset the dead one accepted and takes the rest.
    let res = cluster
        .admin(1)
        .request(Method::GET, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        res.headers()["range"].to_str().unwrap(),
        format!("0-{}", half - 1)
    );
    let res = cluster
        .admin(1)
        .request(Method::PATCH, &path)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_RANGE, format!("{half}-{}", b.data.len() - 1))
        .body(b.data.slice(half..))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let path = location_path(&res);
    let sep = if path.contains('?') { '&' } else { '?' };
    let res = cluster
        .admin(2)
        .request(Method::PUT, &format!("{path}{sep}digest={}", b.digest))
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        cluster
            .admin(1)
            .get_blob_ok("multi/crash", &b.digest)
            .await
            .unwrap(),
        b.data
    );

    // The killed node comes back on the same shared state.
    cluster.nodes[0].restart().await.unwrap();
    assert_eq!(
        cluster
            .admin(0)
            .get_blob_ok("multi/crash", &b.digest)
            .await
            .unwrap(),
        b.data
    );
}

#[tokio::test]
async fn a_token_from_one_node_is_honoured_by_the_others() {
    let cluster = Cluster::start(2).await;
    let res = cluster
        .admin(0)
        .request(
            Method::GET,
            "/auth/token?service=aerugo&scope=repository:multi/token:pull,push",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let b = blob(9003, 1000);
    let bearer = |i: usize| {
        let c = cluster.nodes[i].client();
        let http = reqwest::Client::builder()
            .default_headers(
                [(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {token}").parse().unwrap(),
                )]
                .into_iter()
                .collect(),
            )
            .build()
            .unwrap();
        RegistryClient::with_http_client(c.base(), http)
    };
    bearer(1)
        .push_blob_monolithic("multi/token", &b)
        .await
        .unwrap();
    assert_eq!(
        bearer(0)
            .get_blob_ok("multi/token", &b.digest)
            .await
            .unwrap(),
        b.data
    );
}

#[tokio::test]
async fn skopeo_pushes_through_one_node_and_pulls_through_another() {
    let skopeo = clients::require("skopeo").unwrap();
    let cluster = Cluster::start(2).await;
    let home = ClientConfig::new().unwrap();
    let img = image::image(9004, 2, 200_000, "amd64");
    let src = home.path().join("src");
    image::write_oci_layout(&src, &[("v1", &img.manifest)], &img.all_blobs()).unwrap();
    let creds = format!("admin:{ADMIN_PASSWORD}");
    let host = |i: usize| {
        cluster.nodes[i]
            .url()
            .trim_start_matches("http://")
            .to_owned()
    };

    let mut push = tokio::process::Command::new(&skopeo);
    push.envs(home.env())
        .arg("copy")
        .arg("--dest-tls-verify=false")
        .arg("--dest-creds")
        .arg(&creds)
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{}/multi/skopeo:v1", host(0)));
    clients::run(&mut push, std::time::Duration::from_secs(120))
        .await
        .unwrap();

    let dst = home.path().join("dst");
    let mut pull = tokio::process::Command::new(&skopeo);
    pull.envs(home.env())
        .arg("copy")
        .arg("--src-tls-verify=false")
        .arg("--src-creds")
        .arg(&creds)
        .arg(format!("docker://{}/multi/skopeo:v1", host(1)))
        .arg(format!("oci:{}:v1", dst.display()));
    clients::run(&mut pull, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    for b in img.all_blobs() {
        let path = dst.join("blobs/sha256").join(b.hex());
        assert_eq!(std::fs::read(&path).unwrap(), b.data, "{}", path.display());
    }
}
