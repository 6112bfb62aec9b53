//! Login throttling over real HTTP, as an attacker would try it: a parallel burst of wrong
//! passwords, random usernames from one address, a lock-out attempt through a proxy, forged
//! forwarded headers, and the growth of the throttle table.
//!
//! Test nodes listen on 127.0.0.1, so "behind a trusted proxy" means
//! `server.trusted_proxies = 127.0.0.1/32` with the test client writing `X-Forwarded-For` the
//! way nginx would (the client's address appended last).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{ADMIN_PASSWORD, TestNode, node_with};

const TRUST_LOCALHOST: (&str, &str) = ("AERUGO_SERVER__TRUSTED_PROXIES", "127.0.0.1/32");

/// `GET /auth/token` with Basic credentials and, when given, an `X-Forwarded-For` header.
async fn login(
    http: &reqwest::Client,
    node: &TestNode,
    user: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut rb = http
        .get(format!("{}/auth/token?service=aerugo", node.url()))
        .basic_auth(user, Some(password));
    if let Some(xff) = forwarded_for {
        rb = rb.header("x-forwarded-for", xff);
    }
    rb.send().await.unwrap()
}

async fn status_of(
    http: &reqwest::Client,
    node: &TestNode,
    user: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> StatusCode {
    login(http, node, user, password, forwarded_for)
        .await
        .status()
}

/// Creates `user` with password `pw-<user>` as the site admin (from 127.0.0.1).
async fn create_user(node: &TestNode, user: &str) {
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/users", node.url()))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&json!({
            "username": user,
            "password": format!("pw-{user}"),
            "email": format!("{user}@example.test"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
}

/// The value of a counter without labels in the node's `/metrics` (0 when absent).
async fn counter(node: &TestNode, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", node.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_burst_of_wrong_passwords_checks_at_most_the_limit() {
    let node = node_with(&[("AERUGO_AUTH__LOGIN_MAX_FAILURES", "10")]).await;
    let http = reqwest::Client::new();
    let before = counter(&node, "aerugo_password_checks_total").await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(300));
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let (http, url, barrier) = (http.clone(), node.url(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                http.get(format!("{url}/auth/token?service=aerugo"))
                    .basic_auth("admin", Some(format!("wrong-{i}")))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut unauthorized = 0;
    let mut throttled = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let checks = counter(&node, "aerugo_password_checks_total").await - before;
    assert_eq!(unauthorized, 10, "401s ({throttled} throttled)");
    assert_eq!(throttled, 290);
    assert!(
        checks <= (10 + cores()) as f64,
        "{checks} argon2 checks for a limit of 10"
    );
    // The right password from the same address waits for the window like the rest.
    assert_eq!(
        status_of(&http, &node, "admin", ADMIN_PASSWORD, None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_attacker_is_throttled_and_the_victim_gets_in() {
    let node = node_with(&[TRUST_LOCALHOST, ("AERUGO_AUTH__LOGIN_MAX_FAILURES", "3")]).await;
    create_user(&node, "alice").await;
    let http = reqwest::Client::new();
    let attacker = Some("203.0.113.9");
    for _ in 0..3 {
        assert_eq!(
            status_of(&http, &node, "alice", "guess", attacker).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let res = login(&http, &node, "alice", "guess", attacker).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    // Even with the right password, and whatever the attacker writes in front of the address
    // the proxy appended.
    assert_eq!(
        status_of(&http, &node, "alice", "pw-alice", attacker).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status_of(
            &http,
            &node,
            "alice",
            "guess",
            Some("198.51.100.7, 203.0.113.9")
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A second attacker address: six failures on the account, which now slows its logins.
    for _ in 0..3 {
        assert_eq!(
            status_of(&http, &node, "alice", "guess", Some("203.0.113.10")).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // The victim, from their own address, gets in: slowed (100 ms doubling from the third
    // failure: 800 ms), never refused.
    let start = Instant::now();
    let res = login(&http, &node, "alice", "pw-alice", Some("198.51.100.7")).await;
    let took = start.elapsed();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    assert!(took >= Duration::from_millis(700), "no delay: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Without any header the proxy itself is the client: another address again.
    assert_eq!(
        status_of(&http, &node, "alice", "pw-alice", None).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_trusted_proxies_forwarded_headers_are_ignored() {
    let node = node_with(&[
        ("AERUGO_AUTH__LOGIN_MAX_FAILURES", "3"),
        // The realm then comes from the request.
        ("AERUGO_SERVER__PUBLIC_URL", ""),
    ])
    .await;
    // X-Forwarded-Proto is not believed: the realm keeps the scheme it was reached by.
    let realm = challenge_realm(&node, Some("https")).await;
    assert!(realm.starts_with("http://"), "{realm}");
    let http = reqwest::Client::new();
    // A fresh forged address each time buys nothing: all four come from 127.0.0.1.
    for i in 0..3 {
        let xff = format!("192.0.2.{i}");
        assert_eq!(
            status_of(&http, &node, "admin", "guess", Some(&xff)).await,
            StatusCode::UNAUTHORIZED
        );
    }
    for forged in [Some("192.0.2.200"), None] {
        assert_eq!(
            status_of(&http, &node, "admin", ADMIN_PASSWORD, forged).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let res = http
        .get(format!("{}/auth/token", node.url()))
        .header("x-real-ip", "192.0.2.201")
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_trusted_proxy_sets_the_scheme_of_the_realm() {
    let node = node_with(&[TRUST_LOCALHOST, ("AERUGO_SERVER__PUBLIC_URL", "")]).await;
    let realm = challenge_realm(&node, Some("https")).await;
    assert!(realm.starts_with("https://"), "{realm}");
    let realm = challenge_realm(&node, None).await;
    assert!(realm.starts_with("http://"), "{realm}");
}

/// The realm of the challenge a `/v2/` request gets, sending `X-Forwarded-Proto: proto`.
async fn challenge_realm(node: &TestNode, proto: Option<&str>) -> String {
    let mut rb = reqwest::Client::new().get(format!("{}/v2/", node.url()));
    if let Some(proto) = proto {
        rb = rb.header("x-forwarded-proto", proto);
    }
    let res = rb.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let value = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let realm = value
        .split("realm=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let mgmt = reqwest::Client::new().get(format!("{}/api/v1/user", node.url()));
    let mgmt = match proto {
        Some(p) => mgmt.header("x-forwarded-proto", p),
        None => mgmt,
    };
    let res = mgmt.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let value = res.headers()["www-authenticate"].to_str().unwrap();
    let scheme = realm.split("://").next().unwrap();
    assert!(
        value.contains(&format!("realm=\"{scheme}://")),
        "the management API's realm has the same scheme: {value}"
    );
    realm
}

#[tokio::test]
async fn random_usernames_share_one_limit_per_address() {
    let node = node_with(&[
        TRUST_LOCALHOST,
        ("AERUGO_AUTH__LOGIN_MAX_FAILURES_PER_ADDRESS", "12"),
    ])
    .await;
    let http = reqwest::Client::new();
    let attacker = Some("203.0.113.50");
    // Unknown and known usernames alike: twelve failures, then nothing more is checked.
    for i in 0..11 {
        assert_eq!(
            status_of(&http, &node, &format!("nobody-{i}"), "guess", attacker).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        status_of(&http, &node, "admin", "guess", attacker).await,
        StatusCode::UNAUTHORIZED
    );
    let checks = counter(&node, "aerugo_password_checks_total").await;
    for user in ["nobody-99", "admin"] {
        let res = login(&http, &node, user, "guess", attacker).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{user}");
        assert!(res.headers().contains_key("retry-after"));
    }
    // The address is closed, even to a right password.
    assert_eq!(
        status_of(&http, &node, "admin", ADMIN_PASSWORD, attacker).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        counter(&node, "aerugo_password_checks_total").await,
        checks,
        "refused attempts run no argon2"
    );
    // Other addresses are not.
    assert_eq!(
        status_of(&http, &node, "admin", ADMIN_PASSWORD, Some("198.51.100.8")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&http, &node, "nobody-0", "guess", Some("198.51.100.8")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ended_throttle_windows_are_pruned() {
    let node = node_with(&[
        TRUST_LOCALHOST,
        ("AERUGO_AUTH__LOGIN_WINDOW_SECONDS", "1"),
        ("AERUGO_AUTH__LOGIN_MAX_FAILURES_PER_ADDRESS", "1000"),
    ])
    .await;
    let http = reqwest::Client::new();
    // 40 random usernames: 80 counters of their own (pair and account) plus the address's.
    let burst = |from: &'static str| {
        let (http, url) = (http.clone(), node.url());
        async move {
            let tasks: Vec<_> = (0..40)
                .map(|i| {
                    let (http, url) = (http.clone(), url.clone());
                    tokio::spawn(async move {
                        http.get(format!("{url}/auth/token"))
                            .basic_auth(format!("{from}-{i}"), Some("guess"))
                            .header("x-forwarded-for", format!("203.0.113.{i}"))
                            .send()
                            .await
                            .unwrap()
                            .status()
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
            }
        }
    };
    burst("first").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The second burst prunes (every 32 attempts a node prunes ended windows).
    burst("second").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pruned = counter(&node, "aerugo_login_throttle_pruned_total").await;
        if pruned >= 80.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {pruned} counters pruned of the first burst's 80+"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three nodes on one PostgreSQL database (whatever `AERUGO_TEST_BACKEND` says: the counters
/// are shared through it): a burst spread over all of them still checks only the limit, and the
/// victim's right password from elsewhere still gets in through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_spread_over_three_nodes_checks_at_most_the_limit() {
    use aerugo_testkit::NodeOptions;
    use aerugo_testkit::multinode::NodeSet;
    use aerugo_testkit::postgres::TestDatabase;

    let db = TestDatabase::create()
        .await
        .expect("a PostgreSQL database for the cluster (see the message above)");
    let base = NodeOptions::new(crate::support::BIN)
        .with_env("AERUGO_AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD)
        .with_env(TRUST_LOCALHOST.0, TRUST_LOCALHOST.1)
        .with_env("AERUGO_AUTH__LOGIN_MAX_FAILURES", "10");
    let set = NodeSet::spawn(3, &base, db.url(), None)
        .await
        .expect("the nodes start");
    let urls: Vec<String> = set.nodes.iter().map(|n| n.url()).collect();
    let http = reqwest::Client::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(150));
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let (http, url, barrier) = (http.clone(), urls[i % 3].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                http.get(format!("{url}/auth/token?service=aerugo"))
                    .basic_auth("admin", Some(format!("wrong-{i}")))
                    .header("x-forwarded-for", "203.0.113.77")
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut unauthorized = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(unauthorized, 10, "checked attempts across the cluster");
    for url in &urls {
        let res = http
            .get(format!("{url}/auth/token?service=aerugo"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("x-forwarded-for", "203.0.113.77")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{url}");
        let res = http
            .get(format!("{url}/auth/token?service=aerugo"))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("x-forwarded-for", "198.51.100.20")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{url}");
    }
    drop(set);
    db.drop_now().await.unwrap();
}
