//! Namespaces and credentials under attack, over real HTTP (both backends): names cannot be
//! claimed over existing repositories, a deleted owner's name stays reserved, a password change
//! kills every credential minted before it, a refresh token never extends its own life, refresh
//! tokens are listed and revoked, and a registry token stops working once what it was minted from
//! (the user, a grant, an API key, a refresh token) is gone, within the facts cache bound rather
//! than the token's lifetime.

use std::time::{Duration, Instant};

use aerugo_testkit::RegistryClient;
use aerugo_testkit::image::{Image, image};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, TestNode, node, node_with};

/// The facts cache coherence bound (`cache.facts_ttl_seconds` is 10 s; an invalidation on the
/// node that made the change is immediate), with slack for a slow machine.
const BOUND: Duration = Duration::from_secs(15);

fn password_of(user: &str) -> String {
    format!("password-of-{user}")
}

/// Calls `/api/v1{path}` with Basic credentials (or none) and returns status and JSON body.
async fn api(
    node: &TestNode,
    basic: Option<(&str, &str)>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = node
        .anonymous()
        .request(method.clone(), &format!("/api/v1{path}"));
    if let Some((u, p)) = basic {
        rb = rb.basic_auth(u, Some(p));
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    send_api(rb, &format!("{method} {path}")).await
}

/// Calls `/api/v1{path}` with a Bearer credential.
async fn api_bearer(
    node: &TestNode,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = node
        .anonymous()
        .request(method.clone(), &format!("/api/v1{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    send_api(rb, &format!("{method} {path} (bearer)")).await
}

async fn send_api(rb: reqwest::RequestBuilder, what: &str) -> (StatusCode, Value) {
    let res = rb.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(!status.is_server_error(), "{what}: {status} {text}");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
    };
    (status, body)
}

fn admin() -> Option<(&'static str, &'static str)> {
    Some(("admin", ADMIN_PASSWORD))
}

async fn create_user(node: &TestNode, name: &str) {
    let body = json!({ "username": name, "password": password_of(name), "email": "" });
    let (status, body) = api(node, admin(), Method::POST, "/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn small_image(seed: u64) -> Image {
    image(seed, 1, 256, "amd64")
}

/// A `/v2` client sending `Authorization: Bearer <token>` on every request.
fn bearer_client(node: &TestNode, token: &str) -> RegistryClient {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    RegistryClient::with_http_client(node.url(), http)
}

/// `GET /auth/token` with Basic credentials (or a Bearer refresh token) and extra query pairs.
async fn get_token(
    node: &TestNode,
    basic: Option<(&str, &str)>,
    bearer: Option<&str>,
    query: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut rb = reqwest::Client::new()
        .get(format!("{}/auth/token", node.url()))
        .query(&[("service", "aerugo")])
        .query(query);
    if let Some((u, p)) = basic {
        rb = rb.basic_auth(u, Some(p));
    }
    if let Some(t) = bearer {
        rb = rb.bearer_auth(t);
    }
    let res = rb.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `POST /auth/token` with `grant_type=refresh_token`.
async fn refresh_grant(node: &TestNode, refresh: &str, scope: &str) -> (StatusCode, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/auth/token", node.url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("service", "aerugo"),
            ("client_id", "docker"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A registry token for `scope` minted with Basic credentials.
async fn registry_token(node: &TestNode, user: &str, password: &str, scope: &str) -> String {
    let (status, body) = get_token(node, Some((user, password)), None, &[("scope", scope)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// `docker login`: a refresh token for `user`, asked for by `client_id`.
async fn docker_login(node: &TestNode, user: &str, password: &str, client_id: &str) -> String {
    let (status, body) = get_token(
        node,
        Some((user, password)),
        None,
        &[("offline_token", "true"), ("client_id", client_id)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["refresh_token"].as_str().unwrap().to_owned()
}

/// A registry token minted from a refresh token.
async fn token_from_refresh(node: &TestNode, refresh: &str, scope: &str) -> String {
    let (status, body) = refresh_grant(node, refresh, scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The status of `GET /v2/<repo>/tags/list` with `token`.
async fn tags_status(node: &TestNode, token: &str, repo: &str) -> StatusCode {
    bearer_client(node, token)
        .request(Method::GET, &format!("/v2/{repo}/tags/list"))
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls until `token` is refused (401) on `repo`; panics after [`BOUND`].
async fn await_refused(node: &TestNode, token: &str, repo: &str, what: &str) {
    let start = Instant::now();
    loop {
        let status = tags_status(node, token, repo).await;
        if status == StatusCode::UNAUTHORIZED {
            return;
        }
        assert!(
            status == StatusCode::OK,
            "{what}: unexpected {status} while waiting for 401"
        );
        assert!(
            start.elapsed() < BOUND,
            "{what}: the token still works after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn mgmt_token(node: &TestNode, user: &str, password: &str) -> String {
    let body = json!({ "username": user, "password": password });
    let (status, body) = api(node, None, Method::POST, "/auth/token", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// The squatting scenario of issue 14: the site admin pushes private `library/app`; a user who
/// creates org `library` must not become its admin.
#[tokio::test]
async fn names_holding_repositories_cannot_be_claimed() {
    let node = node_with(&[("AERUGO_AUTH__SELF_SIGNUP", "true")]).await;
    node.client()
        .push_image("library/app", "v1", &small_image(1))
        .await
        .unwrap();
    create_user(&node, "mallory").await;
    let mallory = Some(("mallory", "password-of-mallory"));
    let (status, body) = api(
        &node,
        mallory,
        Method::POST,
        "/orgs",
        Some(json!({ "name": "library" })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    // Only the site admin may adopt.
    let (status, _) = api(
        &node,
        mallory,
        Method::POST,
        "/orgs",
        Some(json!({ "name": "library", "adopt": true })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nor may anyone sign up as `library`.
    let signup = json!({ "username": "library", "password": "password-of-library", "email": "" });
    let (status, _) = api(&node, None, Method::POST, "/users", Some(signup.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let mut adopt_signup = signup.clone();
    adopt_signup["adopt"] = json!(true);
    let (status, _) = api(&node, None, Method::POST, "/users", Some(adopt_signup)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // mallory still sees nothing of library/app.
    let mallory_v2 = node
        .anonymous()
        .with_basic("mallory", "password-of-mallory");
    let res = mallory_v2
        .get_manifest("library/app", "v1", &[])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (status, _) = api(&node, mallory, Method::GET, "/repos/library/app", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The site admin adopts the name explicitly, then hands it on.
    let (status, body) = api(
        &node,
        admin(),
        Method::POST,
        "/orgs",
        Some(json!({ "name": "library", "adopt": true })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = api(&node, None, Method::POST, "/users", Some(signup)).await;
    assert_eq!(status, StatusCode::CONFLICT, "the org now has the name");
    let (status, _) = api(
        &node,
        admin(),
        Method::PUT,
        "/orgs/library/members/mallory",
        Some(json!({ "role": "member" })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A plain member gets nothing from membership alone.
    let res = mallory_v2
        .get_manifest("library/app", "v1", &[])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

/// A deleted user's name stays reserved while their repositories remain; an admin may adopt it,
/// and once the repositories are gone it is free again.
#[tokio::test]
async fn a_deleted_owners_name_stays_reserved_while_repositories_remain() {
    let node = node().await;
    for user in ["bob", "carol"] {
        create_user(&node, user).await;
        let client = node.anonymous().with_basic(user, &password_of(user));
        client
            .push_image(&format!("{user}/app"), "v1", &small_image(2))
            .await
            .unwrap();
        let (status, body) = api(
            &node,
            admin(),
            Method::DELETE,
            &format!("/users/{user}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let again = json!({ "username": user, "password": password_of(user), "email": "" });
        let (status, body) = api(&node, admin(), Method::POST, "/users", Some(again)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (status, _) = api(
            &node,
            admin(),
            Method::POST,
            "/orgs",
            Some(json!({ "name": user })),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        // The repository is still there for the site admin, for nobody else.
        let (status, _) = api(
            &node,
            admin(),
            Method::GET,
            &format!("/repos/{user}/app"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // bob's repositories go: the name is free.
    let (status, _) = api(&node, admin(), Method::DELETE, "/repos/bob/app", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    create_user(&node, "bob").await;
    // carol's name is adopted by the site admin: the new carol owns carol/app.
    let adopt = json!({ "username": "carol", "password": password_of("carol"), "email": "", "adopt": true });
    let (status, body) = api(&node, admin(), Method::POST, "/users", Some(adopt)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let carol = node.anonymous().with_basic("carol", &password_of("carol"));
    let res = carol.get_manifest("carol/app", "v1", &[]).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// A deleted user's registry token no longer pushes (neither into an existing repository nor into
/// a new one, which would be created in a namespace nobody owns).
#[tokio::test]
async fn a_deleted_users_token_can_no_longer_push() {
    let node = node().await;
    create_user(&node, "dan").await;
    let pw = password_of("dan");
    let token = registry_token(
        &node,
        "dan",
        &pw,
        "repository:dan/app:pull,push repository:dan/new:pull,push",
    )
    .await;
    let dan = bearer_client(&node, &token);
    dan.push_image("dan/app", "v1", &small_image(3))
        .await
        .unwrap();
    let (status, _) = api(&node, admin(), Method::DELETE, "/users/dan", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_refused(&node, &token, "dan/app", "a deleted user's token").await;
    let img = small_image(4);
    let res = dan
        .request(Method::POST, "/v2/dan/new/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = dan
        .push_manifest("dan/new", "v1", &img.manifest)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = api(&node, admin(), Method::GET, "/repos/dan/new", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no repository was created");
}

/// A password change (or an admin's reset) kills the refresh tokens, management tokens and
/// registry tokens minted before it.
#[tokio::test]
async fn a_password_change_kills_every_older_credential() {
    let node = node().await;
    create_user(&node, "erin").await;
    let (old, new) = (password_of("erin"), "a-brand-new-password".to_owned());
    let scope = "repository:erin/app:pull,push";
    node.anonymous()
        .with_basic("erin", &old)
        .push_image("erin/app", "v1", &small_image(5))
        .await
        .unwrap();
    let refresh = docker_login(&node, "erin", &old, "docker").await;
    let from_refresh = token_from_refresh(&node, &refresh, scope).await;
    let from_password = registry_token(&node, "erin", &old, scope).await;
    let mgmt = mgmt_token(&node, "erin", &old).await;
    assert_eq!(
        tags_status(&node, &from_refresh, "erin/app").await,
        StatusCode::OK
    );
    assert_eq!(
        tags_status(&node, &from_password, "erin/app").await,
        StatusCode::OK
    );
    let (status, _) = api_bearer(&node, &mgmt, Method::GET, "/user", None).await;
    assert_eq!(status, StatusCode::OK);

    let change = json!({ "current_password": old, "new_password": new });
    let (status, body) = api(
        &node,
        Some(("erin", &old)),
        Method::PUT,
        "/user/password",
        Some(change),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let (status, _) = refresh_grant(&node, &refresh, scope).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old refresh token is dead"
    );
    let (status, _) = get_token(&node, None, Some(&refresh), &[("scope", scope)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let key = json!({ "name": "ci", "scope": { "kind": "all" }, "permission": "admin" });
    let (status, _) = api_bearer(&node, &mgmt, Method::POST, "/user/api-keys", Some(key)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old management token is dead"
    );
    await_refused(
        &node,
        &from_refresh,
        "erin/app",
        "a token from the old refresh token",
    )
    .await;
    await_refused(
        &node,
        &from_password,
        "erin/app",
        "a token from the old password",
    )
    .await;
    // The new password works, and so do tokens minted with it.
    let fresh = registry_token(&node, "erin", &new, scope).await;
    assert_eq!(tags_status(&node, &fresh, "erin/app").await, StatusCode::OK);

    // An admin's reset does the same.
    let refresh = docker_login(&node, "erin", &new, "docker").await;
    let from_refresh = token_from_refresh(&node, &refresh, scope).await;
    let reset = json!({ "password": "reset-by-the-admin" });
    let (status, _) = api(&node, admin(), Method::PATCH, "/users/erin", Some(reset)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = refresh_grant(&node, &refresh, scope).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    await_refused(
        &node,
        &from_refresh,
        "erin/app",
        "a token from before the reset",
    )
    .await;
    await_refused(&node, &fresh, "erin/app", "a token from before the reset").await;
}

/// A refresh token buys access tokens, never a longer life: the refresh grant and a GET with the
/// refresh token and `offline_token=true` hand back the same token with its original expiry.
#[tokio::test]
async fn a_refresh_grant_never_extends_the_chain() {
    let node = node().await;
    let refresh = docker_login(&node, "admin", ADMIN_PASSWORD, "docker").await;
    let listed = |body: &Value| -> Vec<(String, String)> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_owned(),
                    t["expires_at"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (status, before) = api(&node, admin(), Method::GET, "/user/refresh-tokens", None).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    let before = listed(&before);
    assert_eq!(before.len(), 1);
    let (status, body) = refresh_grant(&node, &refresh, "repository:admin/app:pull").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["refresh_token"], refresh.as_str());
    let (status, body) = get_token(
        &node,
        None,
        Some(&refresh),
        &[("offline_token", "true"), ("client_id", "docker")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["refresh_token"],
        refresh.as_str(),
        "a refresh token must not mint a new refresh token"
    );
    let (_, after) = api(&node, admin(), Method::GET, "/user/refresh-tokens", None).await;
    assert_eq!(
        listed(&after),
        before,
        "same token, same expiry, no new one"
    );
}

/// `GET /api/v1/user/refresh-tokens` lists the caller's refresh tokens without secrets;
/// `DELETE …/{id}` revokes one, and the registry tokens minted from it stop working.
#[tokio::test]
async fn refresh_tokens_are_listed_and_revoked() {
    let node = node().await;
    create_user(&node, "fay").await;
    let pw = password_of("fay");
    let fay = Some(("fay", pw.as_str()));
    let scope = "repository:fay/app:pull";
    node.anonymous()
        .with_basic("fay", &pw)
        .push_image("fay/app", "v1", &small_image(6))
        .await
        .unwrap();
    let laptop = docker_login(&node, "fay", &pw, "docker").await;
    let ci = docker_login(&node, "fay", &pw, "containerd-client").await;
    let (_, admin_list) = api(&node, admin(), Method::GET, "/user/refresh-tokens", None).await;
    assert_eq!(
        admin_list.as_array().unwrap().len(),
        0,
        "only the caller's own"
    );
    let (status, list) = api(&node, fay, Method::GET, "/user/refresh-tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    let text = list.to_string();
    assert!(!text.contains(&laptop) && !text.contains(&ci), "{text}");
    for item in items {
        let keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in &keys {
            assert!(
                [
                    "id",
                    "service",
                    "client_id",
                    "created_at",
                    "last_used_at",
                    "expires_at"
                ]
                .contains(k),
                "unexpected field {k} in {item}"
            );
        }
        assert_eq!(item["service"], "aerugo");
        assert!(item["created_at"].as_str().unwrap().contains('T'));
        assert!(item["expires_at"].as_str().unwrap().contains('T'));
    }
    let id_of = |client: &str| -> String {
        items
            .iter()
            .find(|t| t["client_id"] == client)
            .unwrap_or_else(|| panic!("no token of {client} in {list}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (laptop_id, ci_id) = (id_of("docker"), id_of("containerd-client"));
    assert!(
        laptop.contains(&laptop_id),
        "the id is the one embedded in the secret"
    );

    let from_laptop = token_from_refresh(&node, &laptop, scope).await;
    let from_ci = token_from_refresh(&node, &ci, scope).await;
    let (_, list) = api(&node, fay, Method::GET, "/user/refresh-tokens", None).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|t| t["last_used_at"].is_string()),
        "{list}"
    );
    // Nobody else revokes fay's tokens; an API key cannot manage them.
    let path = format!("/user/refresh-tokens/{laptop_id}");
    let (status, _) = api(&node, admin(), Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let key = json!({ "name": "k", "scope": { "kind": "all" }, "permission": "admin" });
    let (_, created) = api(&node, fay, Method::POST, "/user/api-keys", Some(key)).await;
    let secret = created["secret"].as_str().unwrap();
    let (status, _) = api_bearer(&node, secret, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _) = api(&node, fay, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api(&node, fay, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = refresh_grant(&node, &laptop, scope).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    await_refused(
        &node,
        &from_laptop,
        "fay/app",
        "a token from a revoked refresh token",
    )
    .await;
    assert_eq!(
        tags_status(&node, &from_ci, "fay/app").await,
        StatusCode::OK
    );
    let (_, list) = api(&node, fay, Method::GET, "/user/refresh-tokens", None).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ci_id.as_str()]);
}

/// A registry token is only as good as what it was minted from: a revoked grant or a revoked API
/// key stops it.
#[tokio::test]
async fn revoked_grants_and_keys_stop_their_tokens() {
    let node = node().await;
    create_user(&node, "gus").await;
    let pw = password_of("gus");
    node.client()
        .push_image("admin/app", "v1", &small_image(7))
        .await
        .unwrap();
    let grant = json!({ "user": "gus", "permission": "read" });
    let (status, _) = api(
        &node,
        admin(),
        Method::PUT,
        "/repos/admin/app/permissions",
        Some(grant),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let token = registry_token(&node, "gus", &pw, "repository:admin/app:pull").await;
    assert_eq!(
        tags_status(&node, &token, "admin/app").await,
        StatusCode::OK
    );
    let (status, _) = api(
        &node,
        admin(),
        Method::DELETE,
        "/repos/admin/app/permissions/user/gus",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_refused(
        &node,
        &token,
        "admin/app",
        "a token whose grant was revoked",
    )
    .await;

    // A token minted with an API key dies with the key.
    let gus = Some(("gus", pw.as_str()));
    node.anonymous()
        .with_basic("gus", &pw)
        .push_image("gus/app", "v1", &small_image(8))
        .await
        .unwrap();
    let key = json!({ "name": "ci", "scope": { "kind": "repository", "name": "gus/app" }, "permission": "read" });
    let (status, created) = api(&node, gus, Method::POST, "/user/api-keys", Some(key)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (id, secret) = (
        created["id"].as_str().unwrap(),
        created["secret"].as_str().unwrap(),
    );
    let token = registry_token(&node, "gus", secret, "repository:gus/app:pull").await;
    assert_eq!(tags_status(&node, &token, "gus/app").await, StatusCode::OK);
    let (status, _) = api(
        &node,
        gus,
        Method::DELETE,
        &format!("/user/api-keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    await_refused(
        &node,
        &token,
        "gus/app",
        "a token minted with a revoked API key",
    )
    .await;
}
