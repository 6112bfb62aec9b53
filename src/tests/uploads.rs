//! Upload sessions: chunk ordering, status, cancel, digest checks, mounts, and resumption after a
//! crash of the server between two chunks.

use aerugo_testkit::RegistryClient;
use reqwest::{Method, StatusCode};

use crate::support::{
    assert_error, blob, header, node, node_with, send, settled_objects, stored_objects,
};

async fn start(c: &RegistryClient, repo: &str) -> String {
    let res = send(c, Method::POST, &format!("/v2/{repo}/blobs/uploads/")).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&res, "range").as_deref(), Some("0-0"));
    assert!(header(&res, "docker-upload-uuid").is_some());
    header(&res, "location").expect("location")
}

async fn patch(c: &RegistryClient, location: &str, data: &[u8], first: usize) -> reqwest::Response {
    c.request(Method::PATCH, location)
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{first}-{}", first + data.len() - 1),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn chunks_must_arrive_in_order() {
    let node = node().await;
    let c = node.client();
    let b = blob(10, 3000);
    let loc = start(&c, "chunks/a").await;
    let res = patch(&c, &loc, &b.data[..1000], 0).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&res, "range").as_deref(), Some("0-999"));
    let loc = header(&res, "location").unwrap();
    // A gap, and a replay of the first chunk, are both out of order.
    for first in [2000, 0] {
        let res = patch(&c, &loc, &b.data[first..first + 1000], first).await;
        assert_eq!(header(&res, "range").as_deref(), Some("0-999"));
        assert_error(
            res,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
        )
        .await;
    }
    // Status is unchanged.
    let res = send(&c, Method::GET, &loc).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "range").as_deref(), Some("0-999"));
    assert!(header(&res, "location").is_some());
    let res = patch(&c, &loc, &b.data[1000..], 1000).await;
    assert_eq!(header(&res, "range").as_deref(), Some("0-2999"));
    let res = c
        .request(Method::PUT, &format!("{loc}?digest={}", b.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(b.digest.as_str())
    );
    assert_eq!(c.get_blob_ok("chunks/a", &b.digest).await.unwrap(), b.data);
    assert_eq!(
        settled_objects(&node, 1).await,
        1,
        "parts are joined and removed"
    );
}

#[tokio::test]
async fn content_range_must_match_the_body() {
    let node = node().await;
    let c = node.client();
    let loc = start(&c, "cr/a").await;
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-range", "0-99")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-range", "zero-ten")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    let res = send(&c, Method::GET, &loc).await;
    assert_eq!(header(&res, "range").as_deref(), Some("0-0"));
}

#[tokio::test]
async fn final_chunk_may_come_with_the_put() {
    let node = node().await;
    let c = node.client();
    let b = blob(11, 5000);
    let loc = start(&c, "final/a").await;
    let res = patch(&c, &loc, &b.data[..2000], 0).await;
    let loc = header(&res, "location").unwrap();
    let res = c
        .request(Method::PUT, &format!("{loc}?digest={}", b.digest))
        .header("content-range", "2000-4999")
        .body(b.data.slice(2000..))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    assert_eq!(c.get_blob_ok("final/a", &b.digest).await.unwrap(), b.data);
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing_behind() {
    let node = node().await;
    let c = node.client();
    let b = blob(12, 4000);
    let wrong = blob(13, 1).digest;
    let loc = start(&c, "mismatch/a").await;
    let res = patch(&c, &loc, &b.data, 0).await;
    let loc = header(&res, "location").unwrap();
    let res = c
        .request(Method::PUT, &format!("{loc}?digest={wrong}"))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_error(
        send(&c, Method::GET, &loc).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_error(
        c.get_blob("mismatch/a", &wrong).await.unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_error(
        c.get_blob("mismatch/a", &b.digest).await.unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    // Monolithic POST ?digest= with the wrong digest, too.
    let res = c
        .request(
            Method::POST,
            &format!("/v2/mismatch/a/blobs/uploads/?digest={wrong}"),
        )
        .body(b.data.clone())
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(
        settled_objects(&node, 0).await,
        0,
        "no partial or mismatched data is kept"
    );
}

#[tokio::test]
async fn put_needs_a_valid_digest() {
    let node = node().await;
    let c = node.client();
    let loc = start(&c, "dig/a").await;
    assert_error(
        send(&c, Method::PUT, &loc).await,
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    for d in [
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "nocolon",
    ] {
        let res = send(&c, Method::PUT, &format!("{loc}?digest={d}")).await;
        assert_error(res, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
    // The session survives a bad request.
    assert_eq!(
        send(&c, Method::GET, &loc).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn cancel_and_unknown_sessions() {
    let node = node().await;
    let c = node.client();
    let b = blob(14, 100);
    let loc = start(&c, "cancel/a").await;
    let res = patch(&c, &loc, &b.data, 0).await;
    let loc = header(&res, "location").unwrap();
    assert_eq!(
        send(&c, Method::DELETE, &loc).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_error(
        send(&c, Method::GET, &loc).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_error(
        send(&c, Method::DELETE, &loc).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_eq!(settled_objects(&node, 0).await, 0);
    // Unknown ids, malformed ids, and a session addressed through another repository.
    let other = start(&c, "cancel/a").await;
    let id = other.rsplit('/').next().unwrap();
    for path in [
        "/v2/cancel/a/blobs/uploads/00000000-0000-0000-0000-000000000000".to_owned(),
        "/v2/cancel/a/blobs/uploads/not-a-uuid".to_owned(),
        format!("/v2/cancel/b/blobs/uploads/{id}"),
    ] {
        assert_error(
            send(&c, Method::GET, &path).await,
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        let res = c
            .request(Method::PATCH, &path)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    }
}

#[tokio::test]
async fn cross_repository_mount() {
    let node = node().await;
    let c = node.client();
    let b = blob(15, 300);
    c.push_blob_monolithic("mount/src", &b).await.unwrap();
    let res = send(
        &c,
        Method::POST,
        &format!(
            "/v2/mount/dst/blobs/uploads/?mount={}&from=mount/src",
            b.digest
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "location"),
        Some(format!("/v2/mount/dst/blobs/{}", b.digest))
    );
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(b.digest.as_str())
    );
    assert_eq!(c.get_blob_ok("mount/dst", &b.digest).await.unwrap(), b.data);
    // Not in the source repository (or no source at all): a normal upload session instead.
    let other = blob(16, 10);
    for query in [
        format!("mount={}&from=mount/src", other.digest),
        format!("mount={}", b.digest),
        format!("mount={}&from=INVALID", b.digest),
    ] {
        let res = send(
            &c,
            Method::POST,
            &format!("/v2/mount/third/blobs/uploads/?{query}"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{query}");
        assert!(
            header(&res, "location")
                .unwrap()
                .contains("/v2/mount/third/blobs/uploads/")
        );
    }
    let res = send(
        &c,
        Method::POST,
        "/v2/mount/dst/blobs/uploads/?mount=sha256:zz&from=mount/src",
    )
    .await;
    assert_error(res, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn an_upload_survives_a_server_crash_between_chunks() {
    let mut node = node().await;
    let c = node.client();
    let b = blob(17, 300_000);
    let loc = start(&c, "crash/a").await;
    let res = patch(&c, &loc, &b.data[..100_000], 0).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let loc = header(&res, "location").unwrap();
    node.kill_hard().await.unwrap();
    node.restart().await.unwrap();
    let c = node.client();
    let res = send(&c, Method::GET, &loc).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "range").as_deref(), Some("0-99999"));
    let res = patch(&c, &loc, &b.data[100_000..], 100_000).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = c
        .request(Method::PUT, &format!("{loc}?digest={}", b.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(c.get_blob_ok("crash/a", &b.digest).await.unwrap(), b.data);
}

#[tokio::test]
async fn a_dropped_connection_leaves_no_blob() {
    use tokio::io::AsyncWriteExt;
    let auth = crate::support::admin_auth_line();
    let node = node().await;
    let c = node.client();
    let b = blob(18, 50_000);
    // Announce more bytes than are sent, then hang up mid-body.
    let mut stream = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let req = format!(
        "POST /v2/drop/a/blobs/uploads/?digest={} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 50000\r\n\r\n",
        b.digest
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(&b.data[..20_000]).await.unwrap();
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_error(
        c.get_blob("drop/a", &b.digest).await.unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_eq!(stored_objects(&node), 0, "the partial body is discarded");
    assert_eq!(send(&c, Method::GET, "/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_stalled_upload_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = crate::support::admin_auth_line();
    let node =
        crate::support::node_with(&[("AERUGO_SERVER__BODY_IDLE_TIMEOUT_SECONDS", "1")]).await;
    let c = node.client();
    let loc = start(&c, "stall/a").await;
    let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let req = format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1000\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&[7u8; 10]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the server answers a stalled body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("BLOB_UPLOAD_INVALID"), "{head}");
    let res = send(&c, Method::GET, &loc).await;
    assert_eq!(
        header(&res, "range").as_deref(),
        Some("0-0"),
        "nothing of the stalled chunk is kept"
    );
    assert_eq!(stored_objects(&node), 0);
}

#[tokio::test]
async fn abandoned_uploads_are_purged_with_their_objects() {
    let node = node_with(&[
        ("AERUGO_REGISTRY__UPLOAD_MAX_AGE_SECONDS", "2"),
        ("AERUGO_REGISTRY__UPLOAD_PURGE_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let c = node.client();
    // A finished blob whose object lives under its upload's prefix: never purged.
    let kept = blob(31, 5000);
    c.push_blob_monolithic("purge/a", &kept).await.unwrap();
    let before = stored_objects(&node);

    // An abandoned session with two stored chunks.
    let b = blob(32, 4000);
    let abandoned = start(&c, "purge/a").await;
    let res = patch(&c, &abandoned, &b.data[..2000], 0).await;
    let abandoned = header(&res, "location").unwrap();
    let res = patch(&c, &abandoned, &b.data[2000..3000], 2000).await;
    let abandoned = header(&res, "location").unwrap();
    assert_eq!(stored_objects(&node), before + 2);

    // A slow session that sends a chunk every half second lives through several purges.
    let slow = blob(33, 8000);
    let mut loc = start(&c, "purge/a").await;
    for (i, chunk) in slow.data.chunks(1000).enumerate() {
        let res = patch(&c, &loc, chunk, i * 1000).await;
        assert_eq!(
            res.status(),
            StatusCode::ACCEPTED,
            "chunk {i} of the slow upload"
        );
        loc = header(&res, "location").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let res = c
        .request(Method::PUT, &format!("{loc}?digest={}", slow.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "the slow upload completes"
    );

    // By now (4 s of chunks, max age 2 s, a purge every second) the abandoned session is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let res = send(&c, Method::GET, &abandoned).await;
        if res.status() == StatusCode::NOT_FOUND {
            assert_error(res, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned upload was never purged:\n{}",
            node.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Its chunks are deleted too; the finished blobs are intact.
    assert_eq!(
        settled_objects(&node, before + 1).await,
        before + 1,
        "objects of the purged upload"
    );
    assert_eq!(
        c.get_blob_ok("purge/a", &kept.digest).await.unwrap(),
        kept.data
    );
    assert_eq!(
        c.get_blob_ok("purge/a", &slow.digest).await.unwrap(),
        slow.data
    );
    assert!(node.log().contains("purged an abandoned upload"));
}
