//! Blob storage on a real S3 server (the testkit's `s3s-fs`, which checks SigV4): blob GETs
//! redirect to presigned URLs that work without registry credentials and break when tampered
//! with, HEAD is answered by the node, `storage.redirect = false` streams through the node, and
//! uploads survive a node restart. The metadata backend follows `AERUGO_TEST_BACKEND`.

use aerugo_testkit::image::image;
use aerugo_testkit::s3::S3Server;
use reqwest::{Method, StatusCode};

use crate::support::{TestNode, assert_error, blob, header, node_with, send};

/// A node whose blobs live in a fresh bucket on `server`.
async fn s3_node(server: &S3Server, extra: &[(&str, &str)]) -> TestNode {
    let bucket = server.fresh_bucket().unwrap();
    let env = server.node_env(&bucket);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    node_with(&all).await
}

/// A plain HTTP client: no registry credentials, no redirects followed.
fn bare_http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// GETs a blob from the registry, expects a redirect and returns the presigned URL.
async fn redirect_of(node: &TestNode, repo: &str, digest: &str) -> String {
    let res = node.client().get_blob(repo, digest).await.unwrap();
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(header(&res, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(digest)
    );
    let url = header(&res, "location").expect("a Location");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    url
}

#[tokio::test]
async fn s3_blob_gets_redirect_to_presigned_urls() {
    let server = S3Server::start().unwrap();
    let node = s3_node(&server, &[]).await;
    let c = node.client();
    let http = bare_http();
    let repo = "s3/redirect";

    // One blob per way of uploading: monolithic PUT, POST + one PATCH + PUT, three PATCHes.
    let mono = blob(1, 70_000);
    let streamed = blob(2, 300_000);
    let chunked = blob(3, 250_000);
    c.push_blob_monolithic(repo, &mono).await.unwrap();
    c.push_blob_streamed(repo, &streamed).await.unwrap();
    c.push_blob_chunked(repo, &chunked, 100_000).await.unwrap();

    for (b, single_request) in [(&mono, true), (&streamed, true), (&chunked, false)] {
        let url = redirect_of(&node, repo, &b.digest).await;
        // Single-request uploads are served from the object they were written to (no copy);
        // only multi-chunk uploads are joined.
        assert_eq!(
            url.contains("/joined-"),
            !single_request,
            "storage key of {}: {url}",
            b.digest
        );
        // The presigned URL works with no registry credentials.
        let res = http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.bytes().await.unwrap(), b.data);
        // The client sends Range to S3 itself.
        let res = http
            .get(&url)
            .header("range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(res.bytes().await.unwrap(), b.data.slice(1000..2000));
        // HEAD is answered by the node from metadata, never redirected.
        let res = send(&c, Method::HEAD, &format!("/v2/{repo}/blobs/{}", b.digest)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "location"), None);
        assert_eq!(
            header(&res, "content-length"),
            Some(b.data.len().to_string())
        );
    }

    // A tampered URL is refused by the S3 server: a changed signature, or another key.
    let url = redirect_of(&node, repo, &mono.digest).await;
    let (head, signature) = url.split_once("X-Amz-Signature=").unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let tampered = format!("{head}X-Amz-Signature={flipped}{}", &signature[1..]);
    assert_eq!(
        http.get(&tampered).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let other_key = redirect_of(&node, repo, &chunked.digest).await;
    let (other_path, _) = other_key.split_once('?').unwrap();
    let (_, query) = url.split_once('?').unwrap();
    assert_eq!(
        http.get(format!("{other_path}?{query}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    // Unknown blobs and unlinked repositories get the usual error, not a redirect.
    let res = node
        .client()
        .get_blob("s3/other", &mono.digest)
        .await
        .unwrap();
    assert_error(res, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let res = node.anonymous().get_blob(repo, &mono.digest).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Manifests are always served by the node.
    let img = image(4, 1, 1000, "amd64");
    c.push_image(repo, "v1", &img).await.unwrap();
    let res = c.get_manifest(repo, "v1", &[]).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), img.manifest.data);

    // Deleting unlinks: the registry answers 404 instead of a redirect.
    let res = send(
        &c,
        Method::DELETE,
        &format!("/v2/{repo}/blobs/{}", mono.digest),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = c.get_blob(repo, &mono.digest).await.unwrap();
    assert_error(res, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn s3_without_redirect_streams_through_the_node() {
    let server = S3Server::start().unwrap();
    let node = s3_node(&server, &[("AERUGO_STORAGE__REDIRECT", "false")]).await;
    let c = node.client();
    let repo = "s3/streamed";
    let b = blob(5, 12 * 1024 * 1024 + 17);
    c.push_blob_streamed(repo, &b).await.unwrap();
    assert_eq!(c.get_blob_ok(repo, &b.digest).await.unwrap(), b.data);
    let res = c
        .request(Method::GET, &format!("/v2/{repo}/blobs/{}", b.digest))
        .header("range", "bytes=9000000-9000099")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.bytes().await.unwrap(),
        b.data.slice(9_000_000..9_000_100)
    );
}

#[tokio::test]
async fn s3_chunked_upload_survives_a_node_restart() {
    let server = S3Server::start().unwrap();
    let mut node = s3_node(&server, &[]).await;
    let c = node.client();
    let repo = "s3/restart";
    let b = blob(6, 9 * 1024 * 1024);
    let split = 5 * 1024 * 1024;
    let loc = c.start_upload(repo).await.unwrap();
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-range", format!("0-{}", split - 1))
        .body(b.data.slice(..split))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let loc = header(&res, "location").unwrap();

    // Same port, same database; the first chunk waits in S3.
    node.restart().await.unwrap();
    let c = node.client();
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-range", format!("{split}-{}", b.data.len() - 1))
        .body(b.data.slice(split..))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let loc = header(&res, "location").unwrap();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let res = c
        .request(Method::PUT, &format!("{loc}{sep}digest={}", b.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let url = redirect_of(&node, repo, &b.digest).await;
    let res = bare_http().get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap() == b.data);
}

/// skopeo (containers/image, Go's `net/http`) pulls through the redirect: it follows the 307 to
/// S3 without the registry credentials, and the layers it stores are the ones pushed.
#[tokio::test]
async fn s3_skopeo_pulls_through_the_redirect() {
    let server = S3Server::start().unwrap();
    let node = s3_node(&server, &[]).await;
    let repo = "s3/skopeo";
    let img = image(7, 2, 200_000, "amd64");
    node.client().push_image(repo, "v1", &img).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let layout = dir.path().join("layout");
    let skopeo = aerugo_testkit::clients::require("skopeo").unwrap_or_else(|e| panic!("{e:#}"));
    let mut command = tokio::process::Command::new(skopeo);
    command
        .env("HOME", &home)
        .env("REGISTRY_AUTH_FILE", home.join("auth.json"))
        .args(["copy", "--src-tls-verify=false", "--src-creds"])
        .arg(format!("admin:{}", crate::support::ADMIN_PASSWORD))
        .arg(format!("docker://127.0.0.1:{}/{repo}:v1", node.port()))
        .arg(format!("oci:{}:v1", layout.display()));
    if let Err(e) =
        aerugo_testkit::clients::run(&mut command, std::time::Duration::from_secs(120)).await
    {
        panic!("{e:#}\nnode log:\n{}", node.log());
    }
    for layer in &img.layers {
        let hex = layer.digest.trim_start_matches("sha256:");
        let stored = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        assert!(stored == layer.data, "layer {} pulled intact", layer.digest);
    }
    // The node redirected the layer downloads rather than serving them.
    let log = node.log();
    let hex = img.layers[0].digest.trim_start_matches("sha256:");
    assert!(
        log.lines()
            .any(|l| l.contains(hex) && l.contains("request finished") && l.contains("307")),
        "the node log shows the layer's redirect:\n{log}"
    );
}
