//! Blob pull, range reads, HEAD, deletes, dedupe and repository isolation.

use reqwest::{Method, StatusCode};

use crate::support::{assert_error, blob, header, node, node_with, send, settled_objects};

#[tokio::test]
async fn every_upload_style_round_trips() {
    let node = node().await;
    let c = node.client();
    let blobs: Vec<_> = (0..4).map(|i| blob(i, 100_000 + i as usize)).collect();
    c.push_blob_monolithic("style/a", &blobs[0]).await.unwrap();
    c.push_blob_post_digest("style/a", &blobs[1]).await.unwrap();
    c.push_blob_chunked("style/a", &blobs[2], 30_000)
        .await
        .unwrap();
    c.push_blob_streamed("style/a", &blobs[3]).await.unwrap();
    for b in &blobs {
        assert_eq!(c.get_blob_ok("style/a", &b.digest).await.unwrap(), b.data);
    }
}

#[tokio::test]
async fn head_and_get_headers() {
    let node = node().await;
    let c = node.client();
    let b = blob(1, 1234);
    let location = c.push_blob_monolithic("h/a", &b).await.unwrap();
    assert!(
        location.ends_with(&format!("/v2/h/a/blobs/{}", b.digest)),
        "{location}"
    );
    let res = send(&c, Method::HEAD, &format!("/v2/h/a/blobs/{}", b.digest)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-length").as_deref(), Some("1234"));
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(b.digest.as_str())
    );
    assert_eq!(header(&res, "etag"), Some(format!("\"{}\"", b.digest)));
    assert!(res.bytes().await.unwrap().is_empty());
    let res = c.get_blob("h/a", &b.digest).await.unwrap();
    assert_eq!(
        header(&res, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    assert_eq!(header(&res, "accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(res.bytes().await.unwrap(), b.data);
}

#[tokio::test]
async fn range_reads() {
    let node = node().await;
    let c = node.client();
    let b = blob(2, 1000);
    c.push_blob_monolithic("r/a", &b).await.unwrap();
    let path = format!("/v2/r/a/blobs/{}", b.digest);
    for (range, start, end) in [
        ("bytes=0-9", 0, 10),
        ("bytes=990-", 990, 1000),
        ("bytes=-5", 995, 1000),
        ("bytes=100-5000", 100, 1000),
    ] {
        let res = c
            .request(Method::GET, &path)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&res, "content-range"),
            Some(format!("bytes {start}-{}/1000", end - 1))
        );
        assert_eq!(
            res.bytes().await.unwrap(),
            b.data.slice(start..end),
            "{range}"
        );
    }
    for range in ["bytes=1000-", "bytes=5-1", "bytes=x-y", "bytes=-"] {
        let res = c
            .request(Method::GET, &path)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&res, "content-range").as_deref(),
            Some("bytes */1000"),
            "{range}"
        );
        assert_error(res, StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID").await;
    }
}

#[tokio::test]
async fn blobs_are_visible_only_in_repositories_that_hold_them() {
    let node = node().await;
    let c = node.client();
    let b = blob(3, 500);
    c.push_blob_monolithic("tenant-a/app", &b).await.unwrap();
    let res = c.get_blob("tenant-b/app", &b.digest).await.unwrap();
    let body = assert_error(res, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(body["errors"][0]["detail"]["digest"], b.digest.as_str());
    let res = send(
        &c,
        Method::HEAD,
        &format!("/v2/tenant-b/app/blobs/{}", b.digest),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn identical_content_is_stored_once() {
    let node = node().await;
    let c = node.client();
    let b = blob(4, 70_000);
    c.push_blob_monolithic("dedupe/one", &b).await.unwrap();
    c.push_blob_chunked("dedupe/two", &b, 20_000).await.unwrap();
    c.push_blob_streamed("dedupe/one", &b).await.unwrap();
    assert_eq!(
        settled_objects(&node, 1).await,
        1,
        "one object for one content"
    );
    assert_eq!(
        c.get_blob_ok("dedupe/two", &b.digest).await.unwrap(),
        b.data
    );
}

#[tokio::test]
async fn blob_delete() {
    let node = node().await;
    let c = node.client();
    let b = blob(5, 10);
    c.push_blob_monolithic("del/a", &b).await.unwrap();
    let path = format!("/v2/del/a/blobs/{}", b.digest);
    let res = send(&c, Method::DELETE, &path).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_error(
        send(&c, Method::GET, &path).await,
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_error(
        send(&c, Method::DELETE, &path).await,
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    let bad = send(&c, Method::DELETE, "/v2/del/a/blobs/sha256:nothex").await;
    assert_error(bad, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn deletes_can_be_disabled() {
    let node = node_with(&[("AERUGO_REGISTRY__DELETE_ENABLED", "false")]).await;
    let c = node.client();
    let b = blob(6, 10);
    c.push_blob_monolithic("nodel/a", &b).await.unwrap();
    let res = send(
        &c,
        Method::DELETE,
        &format!("/v2/nodel/a/blobs/{}", b.digest),
    )
    .await;
    assert_error(res, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    assert_eq!(c.get_blob_ok("nodel/a", &b.digest).await.unwrap(), b.data);
}
