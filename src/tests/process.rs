//! The process as an operator sees it: configuration errors, `config check`, health endpoints,
//! graceful shutdown, and bounded memory while a 1 GiB blob streams through or a burst of logins
//! checks passwords.

use std::process::Command;

use aerugo_testkit::image::sha256_digest;
use reqwest::{Method, StatusCode};

use crate::support::{BIN, node, send};

#[test]
fn unknown_keys_and_bad_values_stop_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[server]\nlisten_adress = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_adress"), "{err}");

    let out = Command::new(BIN)
        .arg("serve")
        .env("AERUGO_LIMITS__MANIFEST_MAX_BYTES", "ten")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.manifest_max_bytes"), "{err}");
}

#[test]
fn config_check_prints_the_effective_config_redacted() {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env(
            "AERUGO_DATABASE__URL",
            "postgres://aerugo:hunter2@db:5432/aerugo",
        )
        .env("AERUGO_SERVER__LISTEN_ADDRESS", "127.0.0.1:5999")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("listen_address = \"127.0.0.1:5999\""),
        "{text}"
    );
    assert!(
        text.contains("postgres://aerugo:***@db:5432/aerugo"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn health_and_graceful_shutdown() {
    let mut node = node().await;
    let c = node.client();
    assert_eq!(
        send(&c, Method::GET, "/healthz").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&c, Method::GET, "/readyz").await.status(),
        StatusCode::OK
    );
    let status = node.stop().await.unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the process cleanly: {status:?}"
    );
    assert!(node.log().contains("aerugo stopped"), "{}", node.log());
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Streams a 1 GiB blob through one PATCH and reads it back: the server's peak RSS must stay far
/// below the blob's size. The measured peak is printed and written to `target/peak-rss-1gib.txt`.
#[tokio::test]
async fn memory_stays_bounded_for_a_1_gib_blob() {
    const SIZE: usize = 1 << 30;
    const PIECE: usize = 1 << 20;
    let node = node().await;
    let c = node.client();
    let piece: Vec<u8> = (0..PIECE).map(|i| (i % 253) as u8).collect();
    let digest = {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for _ in 0..SIZE / PIECE {
            h.update(&piece);
        }
        format!("sha256:{}", hex_lower(&h.finalize()))
    };
    assert_eq!(
        sha256_digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let loc = c.start_upload("big/blob").await.unwrap();
    let piece = bytes::Bytes::from(piece);
    let stream = futures::stream::iter(
        (0..SIZE / PIECE).map(move |_| Ok::<_, std::io::Error>(piece.clone())),
    );
    let res = c
        .request(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let loc = c.url(res.headers()["location"].to_str().unwrap());
    let res = c
        .request(Method::PUT, &format!("{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let mut res = c.get_blob("big/blob", &digest).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut total = 0usize;
    while let Some(chunk) = res.chunk().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, SIZE);
    let peak = peak_rss_kib(node.pid());
    let line = format!(
        "peak RSS of aerugo while pushing and pulling a 1 GiB blob: {} MiB\n",
        peak / 1024
    );
    print!("{line}");
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/peak-rss-1gib.txt"),
        &line,
    );
    assert!(peak < 256 * 1024, "{line}");
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn prometheus_metrics_count_requests_and_bytes() {
    let node = node().await;
    let c = node.client();
    let b = crate::support::blob(30, 12_345);
    c.push_blob_chunked("metrics/a", &b, 5000).await.unwrap();
    c.get_blob_ok("metrics/a", &b.digest).await.unwrap();
    let _ = c
        .get_blob("metrics/a", &crate::support::blob(31, 1).digest)
        .await
        .unwrap();
    let res = send(&c, Method::GET, "/metrics").await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    let has = |needle: &str| {
        text.lines()
            .any(|l| l.starts_with(needle) || (l.contains(needle) && !l.starts_with('#')))
    };
    for needle in [
        "aerugo_http_requests_total",
        "route=\"upload\"",
        "status=\"404\"",
        "aerugo_http_request_duration_seconds_bucket",
        "aerugo_blob_bytes_uploaded_total 12345",
        "aerugo_blob_bytes_downloaded_total 12345",
        "aerugo_upload_sessions_total{event=\"completed\"} 1",
        "aerugo_storage_operation_duration_seconds_bucket",
    ] {
        assert!(has(needle), "{needle} missing from:\n{text}");
    }
}

/// Every password check holds 19 MiB of argon2 memory. A burst of 48 token requests with
/// passwords to check (unknown users: nothing is cached, and each still pays a full argon2 run so
/// timing tells nothing) must queue for a few workers rather than run all at once, which would
/// peak near a gigabyte.
#[tokio::test]
async fn a_burst_of_password_checks_stays_within_bounded_memory() {
    const CLIENTS: usize = 48;
    let node = node().await;
    let http = reqwest::Client::new();
    let before = peak_rss_kib(node.pid());
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (http, url) = (http.clone(), node.url());
        tasks.push(tokio::spawn(async move {
            http.get(format!(
                "{url}/auth/token?service=aerugo&scope=repository:burst/r:pull"
            ))
            .basic_auth(format!("nobody-{i}"), Some("wrong-password"))
            .send()
            .await
            .unwrap()
            .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let peak = peak_rss_kib(node.pid());
    let line = format!(
        "peak RSS of aerugo through {CLIENTS} concurrent password checks: {} MiB (before: {} MiB)",
        peak / 1024,
        before / 1024
    );
    println!("{line}");
    assert!(peak < before + 160 * 1024, "{line}");
}

/// The server re-executes itself once with its allocator settings (mimalloc reads them at start),
/// keeping its PID, and answers as usual; an operator's own setting is left alone.
#[tokio::test]
async fn the_allocator_settings_apply_without_changing_the_pid() {
    let environ = |pid: u32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
            .split('\0')
            .filter(|v| v.starts_with("MIMALLOC_"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let node = node().await;
    let res = send(&node.client(), Method::GET, "/v2/").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut env = environ(node.pid());
    env.sort();
    assert_eq!(
        env,
        ["MIMALLOC_ARENA_EAGER_COMMIT=0", "MIMALLOC_PURGE_DELAY=10"],
        "the process the test started runs with the settings"
    );

    let own = crate::support::node_with(&[("MIMALLOC_PURGE_DELAY", "5")]).await;
    assert_eq!(environ(own.pid()), ["MIMALLOC_PURGE_DELAY=5"]);
}
