//! Bad input of every kind gets the spec's error code and a 4xx, never a 5xx, and the server
//! stays up.

use reqwest::{Method, StatusCode};

use crate::support::{assert_error, header, node, send};

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[tokio::test]
async fn malformed_requests_get_spec_errors() {
    let node = node().await;
    let c = node.client();
    let long = "a".repeat(256);
    let cases: Vec<(Method, String, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/v2/UPPER/tags/list".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/%252e%252e/tags/list".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a%2Fb/tags/list".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/..%5c..%5cetc/tags/list".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a//b/tags/list".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/-a/tags/list".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a___b/tags/list".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/{long}/tags/list"),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::POST,
            "/v2/Bad/blobs/uploads/".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/a..b/manifests/{D}"),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/sha256:short".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/sha256:../../etc/passwd".into(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/a/blobs/sha256:..%2f..%2fetc".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::HEAD,
            "/v2/a/blobs/notadigest".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/manifests/sha256:XYZ".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/manifests/.bad".into(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/referrers/latest".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/a/blobs/{D}"),
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/a/manifests/latest".into(),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/a/tags/list".into(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            Method::GET,
            format!("/v2/a/referrers/{D}"),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/a/unknown/thing".into(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            Method::GET,
            "/nothing/here".into(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            Method::POST,
            format!("/v2/a/manifests/{D}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::PATCH,
            "/v2/a/tags/list".into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::PUT,
            format!("/v2/a/blobs/{D}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::DELETE,
            "/v2/_catalog".into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/v2/_catalog?n=x".into(),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, code) in cases {
        let res = send(&c, method.clone(), &path).await;
        if method == Method::HEAD {
            assert_eq!(res.status(), status, "{method} {path}");
            continue;
        }
        assert!(
            res.status().is_client_error(),
            "{method} {path}: {}",
            res.status()
        );
        let body = assert_error(res, status, code).await;
        assert!(body["errors"].is_array(), "{method} {path}");
    }
    // Bodies that are not what they claim to be.
    let res = c
        .request(Method::PUT, "/v2/a/manifests/v1")
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let res = send(&c, Method::GET, "/v2/").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
}

#[tokio::test]
async fn raw_garbage_never_yields_a_server_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = crate::support::admin_auth_line();
    let node = node().await;
    // Sent raw, because HTTP clients normalize dot segments (even encoded ones) before sending.
    for path in [
        "/v2/a/%2e%2e/b/tags/list",
        "/v2/a/%2E%2E/%2E%2E/tags/list",
        "/v2/a/../../b/tags/list",
        "/v2/../etc/tags/list",
    ] {
        let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{path}: {text}");
        assert!(text.contains("NAME_INVALID"), "{path}: {text}");
    }
    let requests = [
        format!("GET /v2/%ZZ/tags/list HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
        format!("GET /v2/a/blobs/uploads/..%2f..%2fetc HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
        format!(
            "GET /v2/{}/tags/list HTTP/1.1\r\nHost: x\r\n{auth}\r\n",
            "a/".repeat(3000)
        ),
        format!(
            "PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: x\r\n{auth}Content-Range: \u{00ff}\r\nContent-Length: 0\r\n\r\n"
        ),
        format!(
            "GET /v2/a/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 HTTP/1.1\r\nHost: x\r\n{auth}Range: bytes=99999999999999999999999-\r\n\r\n"
        ),
    ];
    for req in &requests {
        let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!((400..500).contains(&status), "{req:.80}: {head:.200}");
    }
    assert_eq!(
        send(&node.client(), Method::GET, "/v2/").await.status(),
        StatusCode::OK
    );
}
