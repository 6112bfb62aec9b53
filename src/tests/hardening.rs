//! Hardening against the smaller holes of issue 14 (item 6), each over real HTTP or the real
//! process: database passwords in logs and `config check`, `urls` excusing missing blobs, unbounded
//! token scopes, a `Host` header injected into challenges, overflowing ranges, refresh tokens for
//! another service, API keys with a scope the node does not know, and Redis entries shared by two
//! deployments.

use std::process::{Command, Stdio};
use std::time::Duration;

use aerugo_testkit::image::image;
use aerugo_testkit::{Blob, RegistryClient};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{ADMIN_PASSWORD, BIN, TestNode, assert_error, blob, header, node, node_with};

/// Passwords in every form a PostgreSQL URL can carry one; none may be printed.
const SECRETS: [&str; 3] = ["pa/ss", "qu3ry-s3cret", "p%40ss"];

#[test]
fn database_passwords_never_reach_config_check() {
    for url in [
        "postgres://aerugo:pa/ss@db:5432/aerugo",
        "postgres://aerugo@db:5432/aerugo?sslmode=disable&password=qu3ry-s3cret",
        "postgres://aerugo:p%40ss@db:5432/aerugo",
    ] {
        let out = Command::new(BIN)
            .args(["config", "check"])
            .env("AERUGO_DATABASE__URL", url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("@db:5432/aerugo"), "{text}");
        for secret in SECRETS {
            assert!(!text.contains(secret), "{url}: {text}");
        }
    }
}

/// A node whose database does not answer logs its URL on every retry: without the password.
#[test]
fn database_passwords_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env(
            "AERUGO_DATABASE__URL",
            "postgres://aerugo:pa/ss@127.0.0.1:1/aerugo?password=qu3ry-s3cret&connect_timeout=1",
        )
        .env("AERUGO_SERVER__LISTEN_ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first attempt fails at once (nothing listens on port 1); the next comes after 1 s.
    std::thread::sleep(Duration::from_secs(3));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("127.0.0.1:1/aerugo"),
        "the URL is logged: {logs}"
    );
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} in {logs}");
    }
}

fn manifest_with(config: Value, layers: Vec<Value>) -> Blob {
    let body = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    Blob::new(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&body).unwrap(),
    )
}

fn with_urls(mut descriptor: Value, media_type: &str) -> Value {
    descriptor["mediaType"] = json!(media_type);
    descriptor["urls"] = json!(["https://example.com/elsewhere"]);
    descriptor
}

#[tokio::test]
async fn urls_excuse_only_non_distributable_layers() {
    let node = node().await;
    let c = node.client();
    let config = Blob::new("application/vnd.oci.image.config.v1+json", b"{}".to_vec());
    let layer = blob(14_601, 64);
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    // Neither blob is in the registry: `urls` on the config or an ordinary layer must not hide it.
    for (i, manifest) in [
        manifest_with(
            with_urls(
                config.descriptor(),
                "application/vnd.oci.image.config.v1+json",
            ),
            vec![with_urls(layer.descriptor(), gzip)],
        ),
        manifest_with(
            config.descriptor(),
            vec![with_urls(layer.descriptor(), gzip)],
        ),
    ]
    .iter()
    .enumerate()
    {
        let res = c
            .push_manifest("admin/urls", &format!("t{i}"), manifest)
            .await
            .unwrap();
        assert_error(res, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
        let res = c
            .get_manifest("admin/urls", &manifest.digest, &[])
            .await
            .unwrap();
        assert_ne!(res.status(), StatusCode::OK, "nothing was stored");
    }
    // A foreign layer may live elsewhere; the config must still be present.
    let foreign = with_urls(
        layer.descriptor(),
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    );
    let manifest = manifest_with(config.descriptor(), vec![foreign.clone()]);
    let res = c
        .push_manifest("admin/urls", "foreign", &manifest)
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    c.push_blob_monolithic("admin/urls", &config).await.unwrap();
    let res = c
        .push_manifest("admin/urls", "foreign", &manifest)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn token_request(c: &RegistryClient, scopes: &[String]) -> reqwest::Response {
    let query: Vec<(&str, &str)> = std::iter::once(("service", "aerugo"))
        .chain(scopes.iter().map(|s| ("scope", s.as_str())))
        .collect();
    c.request(Method::GET, "/auth/token")
        .query(&query)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn token_requests_are_capped_in_scopes_and_size() {
    let node = node().await;
    let c = node.anonymous();
    let scopes = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("repository:ns/repo-{i}:pull"))
            .collect()
    };
    assert_eq!(
        token_request(&c, &scopes(100)).await.status(),
        StatusCode::OK
    );
    assert_error(
        token_request(&c, &scopes(101)).await,
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    )
    .await;
    // Several entries in one parameter count one by one.
    let joined = vec![scopes(101).join(" ")];
    assert_error(
        token_request(&c, &joined).await,
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
    )
    .await;
    // A few huge entries: in a GET the request-target limit (8 KiB) answers first; in a POST
    // body the scope size cap does.
    let huge = vec![format!("repository:{}:pull", "a".repeat(40_000))];
    assert_error(
        token_request(&c, &huge).await,
        StatusCode::URI_TOO_LONG,
        "UNSUPPORTED",
    )
    .await;
    let res = c
        .request(Method::POST, "/auth/token")
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
            ("service", "aerugo"),
            ("scope", huge[0].as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    // The OAuth2 form, with credentials: refused before the password is checked.
    let mut form: Vec<(String, String)> = vec![
        ("grant_type".into(), "password".into()),
        ("username".into(), "admin".into()),
        ("password".into(), ADMIN_PASSWORD.into()),
        ("service".into(), "aerugo".into()),
    ];
    form.extend(scopes(101).into_iter().map(|s| ("scope".to_owned(), s)));
    let res = c
        .request(Method::POST, "/auth/token")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
}

/// Sends `GET <path>` with the raw `Host` value and returns the response head.
async fn raw_get(node: &TestNode, path: &str, host: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

fn challenge_of(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("www-authenticate")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no challenge in {head}"))
}

#[tokio::test]
async fn the_host_header_cannot_inject_challenge_parameters() {
    // Without `server.public_url` the realm comes from the request.
    let node = node_with(&[("AERUGO_SERVER__PUBLIC_URL", "")]).await;
    let cases = [
        ("evil\",error=\"injected", "http://localhost/auth/token"),
        (
            "a\\\",scope=\"repository:x:push",
            "http://localhost/auth/token",
        ),
        ("evil.example, other", "http://localhost/auth/token"),
        ("host:99999", "http://localhost/auth/token"),
        ("[::1]:5000", "http://[::1]:5000/auth/token"),
        (
            "registry.example.com:8443",
            "http://registry.example.com:8443/auth/token",
        ),
    ];
    for (host, realm) in cases {
        let head = raw_get(&node, "/v2/", host).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{host}: {head}");
        assert_eq!(
            challenge_of(&head),
            format!("Bearer realm=\"{realm}\",service=\"aerugo\""),
            "{host}"
        );
        let head = raw_get(&node, "/api/v1/user", host).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{host}: {head}");
        assert_eq!(
            challenge_of(&head),
            format!(
                "Bearer realm=\"{}\"",
                realm.replace("/auth/token", "/api/v1/auth/token")
            ),
            "{host}"
        );
    }
}

#[tokio::test]
async fn overflowing_ranges_get_range_errors_never_a_server_error() {
    let node = node().await;
    let c = node.client();
    let loc = c.start_upload("admin/ranges").await.unwrap();
    for (range, status) in [
        ("0-18446744073709551615", StatusCode::RANGE_NOT_SATISFIABLE),
        (
            "bytes 0-18446744073709551615/*",
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
        (
            "18446744073709551615-18446744073709551615",
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
        ("0-18446744073709551616", StatusCode::BAD_REQUEST),
        ("18446744073709551616-0", StatusCode::BAD_REQUEST),
    ] {
        let res = c
            .request(Method::PATCH, &loc)
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(b"a".to_vec())
            .send()
            .await
            .unwrap();
        assert_error(res, status, "BLOB_UPLOAD_INVALID").await;
    }
    // The session is intact: the next in-order chunk lands.
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-range", "0-0")
        .header("content-type", "application/octet-stream")
        .body(b"a".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let b = blob(14_605, 100);
    c.push_blob_monolithic("admin/ranges", &b).await.unwrap();
    let path = format!("/v2/admin/ranges/blobs/{}", b.digest);
    for (range, status, content_range) in [
        (
            "bytes=0-18446744073709551615",
            StatusCode::PARTIAL_CONTENT,
            "bytes 0-99/100",
        ),
        (
            "bytes=18446744073709551615-",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "bytes */100",
        ),
        (
            "bytes=18446744073709551615-18446744073709551615",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "bytes */100",
        ),
        (
            "bytes=-18446744073709551615",
            StatusCode::PARTIAL_CONTENT,
            "bytes 0-99/100",
        ),
        (
            "bytes=0-18446744073709551616",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "bytes */100",
        ),
        (
            "bytes=99-18446744073709551615",
            StatusCode::PARTIAL_CONTENT,
            "bytes 99-99/100",
        ),
    ] {
        let res = c
            .request(Method::GET, &path)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{range}");
        assert_eq!(
            header(&res, "content-range").as_deref(),
            Some(content_range),
            "{range}"
        );
    }
}

async fn post_form(c: &RegistryClient, form: &[(&str, &str)]) -> reqwest::Response {
    c.request(Method::POST, "/auth/token")
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refresh_token_works_only_for_its_service() {
    let node = node().await;
    let c = node.anonymous();
    let res = post_form(
        &c,
        &[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
            ("service", "aerugo"),
            ("access_type", "offline"),
            ("client_id", "test"),
        ],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let grant = |service: &'static str| {
        let refresh = refresh.clone();
        let c = c.clone();
        async move {
            post_form(
                &c,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                    ("service", service),
                    ("scope", "repository:admin/app:pull"),
                ],
            )
            .await
        }
    };
    assert_eq!(grant("aerugo").await.status(), StatusCode::OK);
    let res = grant("another-registry").await;
    assert_error(res, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    // The GET form with the refresh token as a Bearer credential.
    for (service, status) in [
        ("another-registry", StatusCode::UNAUTHORIZED),
        ("aerugo", StatusCode::OK),
    ] {
        let res = c
            .request(Method::GET, "/auth/token")
            .query(&[("service", service), ("scope", "repository:admin/app:pull")])
            .bearer_auth(&refresh)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{service}");
    }
}

/// Rewrites an API key's stored scope to a kind this version does not know (as a newer version
/// might write it), relaxing the schema's check the way such a migration would.
async fn set_unknown_scope(node: &TestNode, key_id: &str) {
    match node.database_url() {
        None => {
            let db = rusqlite::Connection::open(node.data_dir().join("aerugo.db")).unwrap();
            db.busy_timeout(Duration::from_secs(10)).unwrap();
            db.execute_batch("PRAGMA ignore_check_constraints = ON")
                .unwrap();
            let n = db
                .execute(
                    "UPDATE api_keys SET scope_kind = 'organization', scope_name = 'x' WHERE id = ?1",
                    [key_id],
                )
                .unwrap();
            assert_eq!(n, 1);
        }
        Some(url) => {
            let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            db.batch_execute(
                "ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_scope_kind_check",
            )
            .await
            .unwrap();
            let n = db
                .execute(
                    "UPDATE api_keys SET scope_kind = 'organization', scope_name = 'x' WHERE id = $1",
                    &[&key_id],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
    }
}

#[tokio::test]
async fn an_unknown_stored_key_scope_grants_nothing() {
    let node = node().await;
    let admin = node.client();
    admin
        .push_image("admin/app", "v1", &image(14_607, 1, 64, "amd64"))
        .await
        .unwrap();
    let mut keys = Vec::new();
    for name in ["known", "unknown"] {
        let res = admin
            .request(Method::POST, "/api/v1/user/api-keys")
            .json(&json!({ "name": name, "scope": { "kind": "all" }, "permission": "admin" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        keys.push((
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        ));
    }
    // Before the key is ever used, so no cached login hides the change.
    set_unknown_scope(&node, &keys[1].0).await;
    let pull = |secret: &str| {
        let c = node.anonymous().with_basic("admin", secret);
        async move {
            c.get_manifest("admin/app", "v1", &[])
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(pull(&keys[0].1).await, StatusCode::OK);
    assert_eq!(pull(&keys[1].1).await, StatusCode::UNAUTHORIZED);
    let res = node
        .anonymous()
        .request(Method::GET, "/api/v1/user")
        .bearer_auth(&keys[1].1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = node
        .anonymous()
        .with_basic("admin", &keys[1].1)
        .request(
            Method::GET,
            "/auth/token?service=aerugo&scope=repository:admin/app:pull",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// Two deployments (their own databases) on one Redis, both with the default key prefix: what one
/// caches is never served by the other.
#[tokio::test]
async fn deployments_sharing_redis_never_share_entries() {
    let (url, _) = aerugo_testkit::redis::shared();
    let redis = [("AERUGO_CACHE__REDIS_URL", url.as_str())];
    let (one, two) = (node_with(&redis).await, node_with(&redis).await);
    let (a, b) = (
        image(14_608, 1, 128, "amd64"),
        image(14_609, 1, 128, "amd64"),
    );
    two.client()
        .push_image("admin/app", "latest", &b)
        .await
        .unwrap();
    one.client()
        .push_image("admin/app", "latest", &a)
        .await
        .unwrap();
    // Deployment one's private manifest, by tag and by digest, now in its caches.
    for reference in ["latest", a.digest()] {
        let res = one
            .client()
            .get_manifest("admin/app", reference, &[])
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "docker-content-digest").as_deref(),
            Some(a.digest())
        );
    }
    let res = two
        .client()
        .get_manifest("admin/app", "latest", &[])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(b.digest())
    );
    let res = two
        .client()
        .get_manifest("admin/app", a.digest(), &[])
        .await
        .unwrap();
    assert_error(res, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let res = two
        .client()
        .get_blob("admin/app", &a.config.digest)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}
