//! Docker token authentication over real HTTP: challenges, the token endpoint (GET with Basic,
//! POST OAuth2 form, refresh tokens), scope intersection, and what anonymous callers may see.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{ADMIN_PASSWORD, assert_error, blob, header, node, send};

/// Parses `key="value"` pairs of a `WWW-Authenticate: Bearer …` header.
pub(crate) fn challenge_params(value: &str) -> Vec<(String, String)> {
    let rest = value.strip_prefix("Bearer ").expect("a Bearer challenge");
    let mut out = Vec::new();
    let mut s = rest;
    while let Some((key, after)) = s.split_once("=\"") {
        let (val, tail) = after.split_once('"').expect("closing quote");
        out.push((
            key.trim_start_matches(',').trim().to_owned(),
            val.to_owned(),
        ));
        s = tail;
    }
    out
}

pub(crate) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Fetches a token the way docker does: GET realm?service=&scope= with optional Basic auth.
pub(crate) async fn fetch_token(
    realm: &str,
    service: &str,
    scope: &str,
    creds: Option<(&str, &str)>,
) -> reqwest::Response {
    let http = reqwest::Client::new();
    let mut rb = http
        .get(realm)
        .query(&[("service", service), ("scope", scope)]);
    if let Some((u, p)) = creds {
        rb = rb.basic_auth(u, Some(p));
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn anonymous_requests_get_bearer_challenges() {
    let node = node().await;
    let anon = node.anonymous();
    let res = send(&anon, Method::GET, "/v2/").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    assert_eq!(
        param(&params, "realm"),
        Some(format!("{}/auth/token", node.url()).as_str())
    );
    assert_eq!(param(&params, "service"), Some("aerugo"));
    let res = send(&anon, Method::POST, "/v2/admin/app/blobs/uploads/").await;
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    assert_eq!(
        param(&params, "scope"),
        Some("repository:admin/app:pull,push")
    );
    assert_error(res, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let res = send(&anon, Method::GET, "/v2/_catalog").await;
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    assert_eq!(param(&params, "scope"), Some("registry:catalog:*"));
}

#[tokio::test]
async fn token_flow_push_and_pull() {
    let node = node().await;
    let anon = node.anonymous();
    let b = blob(40, 1000);
    // Challenge → token with Basic credentials → retry with the token.
    let res = send(&anon, Method::POST, "/v2/admin/app/blobs/uploads/").await;
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    let (realm, service, scope) = (
        param(&params, "realm").unwrap(),
        param(&params, "service").unwrap(),
        param(&params, "scope").unwrap(),
    );
    let res = fetch_token(realm, service, scope, Some(("admin", ADMIN_PASSWORD))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "cache-control").as_deref(), Some("no-store"));
    let body: Value = res.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert!(body["expires_in"].as_u64().unwrap() >= 60);
    assert!(body["issued_at"].as_str().unwrap().contains('T'));
    assert!(body.get("refresh_token").is_none());
    let http = reqwest::Client::new();
    let res = http
        .post(format!(
            "{}/v2/admin/app/blobs/uploads/?digest={}",
            node.url(),
            b.digest
        ))
        .bearer_auth(&token)
        .body(b.data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = http
        .get(format!("{}/v2/admin/app/blobs/{}", node.url(), b.digest))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.bytes().await.unwrap(), b.data);
    // The token covers exactly its scope: another repository needs another token.
    let res = http
        .get(format!("{}/v2/admin/other/tags/list", node.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    assert_eq!(param(&params, "error"), Some("insufficient_scope"));
    assert_eq!(param(&params, "scope"), Some("repository:admin/other:pull"));
    // A tampered or foreign token is refused as invalid.
    let mut bad = token.clone();
    bad.pop();
    let res = http
        .get(format!("{}/v2/", node.url()))
        .bearer_auth(&bad)
        .send()
        .await
        .unwrap();
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    assert_eq!(param(&params, "error"), Some("invalid_token"));
}

#[tokio::test]
async fn grants_are_the_intersection_of_request_and_rights() {
    let node = node().await;
    let realm = format!("{}/auth/token", node.url());
    let decode = |token: &str| -> Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    // Anonymous: asks for push on a repository it cannot even see; gets an empty grant, not an error.
    let res = fetch_token(&realm, "aerugo", "repository:admin/app:pull,push", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let claims = decode(
        res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(claims["sub"], "");
    assert_eq!(claims["aud"], "aerugo");
    assert_eq!(claims["access"][0]["actions"], serde_json::json!([]));
    // The admin gets everything asked, and `*` expands.
    let res = fetch_token(
        &realm,
        "aerugo",
        "repository:admin/app:*",
        Some(("admin", ADMIN_PASSWORD)),
    )
    .await;
    let claims = decode(
        res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(claims["sub"], "admin");
    assert_eq!(
        claims["access"][0]["actions"],
        serde_json::json!(["pull", "push", "delete"])
    );
    // Wrong password: 401, not a token.
    let res = fetch_token(
        &realm,
        "aerugo",
        "repository:admin/app:pull",
        Some(("admin", "wrong")),
    )
    .await;
    assert_error(res, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    // JWKS names the signing key.
    let jwks: Value = reqwest::get(format!("{}/auth/jwks", node.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = {
        use base64::Engine as _;
        let token = fetch_token(&realm, "aerugo", "", None)
            .await
            .json::<Value>()
            .await
            .unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let head = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&head).unwrap()["kid"].clone()
    };
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid),
        "{jwks}"
    );
}

#[tokio::test]
async fn refresh_tokens_and_the_oauth2_form() {
    let node = node().await;
    let http = reqwest::Client::new();
    let realm = format!("{}/auth/token", node.url());
    // docker login: GET with Basic, offline_token=true, client_id=docker.
    let res = http
        .get(&realm)
        .query(&[
            ("service", "aerugo"),
            ("offline_token", "true"),
            ("client_id", "docker"),
            ("account", "admin"),
        ])
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    let refresh = body["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    // Later: POST grant_type=refresh_token (what docker does once it holds an identity token).
    let res = http
        .post(&realm)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("service", "aerugo"),
            ("client_id", "docker"),
            ("scope", "repository:admin/app:pull,push"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body["access_token"].is_string());
    assert_eq!(body["scope"], "repository:admin/app:pull,push");
    // containerd's POST-first password grant.
    let res = http
        .post(&realm)
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
            ("service", "aerugo"),
            ("client_id", "containerd-client"),
            ("access_type", "offline"),
            ("scope", "repository:admin/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.json::<Value>().await.unwrap()["refresh_token"].is_string());
    // Bad grants and garbage refresh tokens.
    for form in [
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", "aerugo_rt_nope"),
        ],
        vec![
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "wrong"),
        ],
    ] {
        let res = http.post(&realm).form(&form).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = http
        .post(&realm)
        .form(&[("grant_type", "authorization_code")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = http
        .post(&realm)
        .body("grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let node = crate::support::node_with(&[("AERUGO_AUTH__LOGIN_MAX_FAILURES", "3")]).await;
    let realm = format!("{}/auth/token", node.url());
    for _ in 0..3 {
        let res = fetch_token(&realm, "aerugo", "", Some(("admin", "nope"))).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = fetch_token(&realm, "aerugo", "", Some(("admin", ADMIN_PASSWORD))).await;
    assert!(header(&res, "retry-after").is_some());
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
}

#[tokio::test]
async fn private_repositories_look_missing_and_public_ones_are_pullable() {
    let node = node().await;
    let admin = node.client();
    let b = blob(41, 100);
    admin
        .push_blob_monolithic("admin/private", &b)
        .await
        .unwrap();
    let anon = node.anonymous();
    // Anonymous: a private repository answers like a missing one (401 challenge both).
    let missing = send(&anon, Method::GET, "/v2/admin/nothing/tags/list").await;
    let private = send(&anon, Method::GET, "/v2/admin/private/tags/list").await;
    assert_eq!(missing.status(), private.status());
    assert_eq!(missing.text().await.unwrap(), private.text().await.unwrap());
    // The catalog shows nothing to an anonymous token.
    let realm = format!("{}/auth/token", node.url());
    let token = fetch_token(&realm, "aerugo", "registry:catalog:*", None)
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cat: Value = reqwest::Client::new()
        .get(format!("{}/v2/_catalog", node.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cat["repositories"], serde_json::json!([]));
    let cat: Value = send(&admin, Method::GET, "/v2/_catalog")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cat["repositories"], serde_json::json!(["admin/private"]));
}
