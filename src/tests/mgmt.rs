//! The management API (`/api/v1`) over real HTTP: the whole tenancy lifecycle, a permission
//! matrix (roles × operations × public/private) across `/v2` and `/api/v1`, self-signup, login
//! throttling, input validation, and the OpenAPI document checked against the served routes.
//!
//! Every answer goes through [`api`], which asserts the invariants all of them keep: never a 5xx,
//! every error in the `{"error": {"code", "message"}}` shape, and every 401 with a Bearer
//! challenge.

use aerugo_testkit::image::{self, OCI_MANIFEST};
use aerugo_testkit::{Image, RegistryClient};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, TestNode, node, node_with};

/// How a request authenticates.
#[derive(Clone, Debug)]
enum Cred {
    Anonymous,
    Bearer(String),
    Basic(String, String),
}

fn basic(user: &str, password: &str) -> Cred {
    Cred::Basic(user.to_owned(), password.to_owned())
}

fn admin() -> Cred {
    basic("admin", ADMIN_PASSWORD)
}

fn password_of(user: &str) -> String {
    format!("password-of-{user}")
}

/// A management API answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `name` field of every item of a list answer (or `username` for users and members).
    fn names(&self) -> Vec<String> {
        self.body
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {}", self.body))
            .iter()
            .map(|v| {
                v.get("name")
                    .or_else(|| v.get("username"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

/// Calls `/api/v1{path}` and checks what every answer keeps: no 5xx, the error envelope on every
/// 4xx, and a Bearer challenge pointing at the token endpoint on every 401.
async fn api(
    node: &TestNode,
    cred: &Cred,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let url = if path.starts_with("/api/") {
        path.to_owned()
    } else {
        format!("/api/v1{path}")
    };
    let mut rb = node.anonymous().request(method.clone(), &url);
    rb = match cred {
        Cred::Anonymous => rb,
        Cred::Bearer(t) => rb.bearer_auth(t),
        Cred::Basic(u, p) => rb.basic_auth(u, Some(p)),
    };
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let res = rb.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let what = format!("{method} {url} as {cred:?}");
    assert!(!status.is_server_error(), "{what}: {status} {text}");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
    };
    if status.is_client_error() {
        let shape_ok = body.as_object().is_some_and(|o| o.len() == 1)
            && body["error"].as_object().is_some_and(|o| o.len() == 2)
            && body["error"]["code"].is_string()
            && body["error"]["message"].is_string();
        assert!(shape_ok, "{what}: error body {text}");
    }
    if status == StatusCode::UNAUTHORIZED {
        let challenge = headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(
            challenge,
            format!("Bearer realm=\"{}/api/v1/auth/token\"", node.url()),
            "{what}"
        );
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// [`api`], asserting the status.
async fn expect(
    node: &TestNode,
    cred: &Cred,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Answer {
    let what = format!("{method} {path} as {cred:?}");
    let ans = api(node, cred, method, path, body).await;
    assert_eq!(ans.status.as_u16(), status, "{what}: {}", ans.body);
    ans
}

async fn token(node: &TestNode, user: &str, password: &str) -> Cred {
    let body = json!({ "username": user, "password": password });
    let ans = expect(
        node,
        &Cred::Anonymous,
        Method::POST,
        "/auth/token",
        Some(body),
        200,
    )
    .await;
    assert!(ans.body["expires_in"].as_u64().is_some_and(|s| s > 0));
    Cred::Bearer(ans.body["token"].as_str().unwrap().to_owned())
}

async fn create_user(node: &TestNode, by: &Cred, user: &str) {
    let body = json!({
        "username": user,
        "password": password_of(user),
        "email": format!("{user}@example.test"),
    });
    let ans = expect(node, by, Method::POST, "/users", Some(body), 201).await;
    assert_eq!(ans.body["username"], user);
    assert!(ans.body.get("password_hash").is_none() && ans.body.get("password").is_none());
    assert_eq!(
        ans.header("location"),
        Some(format!("/api/v1/users/{user}").as_str())
    );
}

/// A `/v2` client with Basic credentials (or none).
fn v2(node: &TestNode, cred: &Cred) -> RegistryClient {
    match cred {
        Cred::Anonymous => node.anonymous(),
        Cred::Basic(u, p) => node.anonymous().with_basic(u, p),
        Cred::Bearer(_) => panic!("/v2 clients here use Basic credentials"),
    }
}

/// Checks a `/v2` answer: a 401 carries a Bearer challenge.
fn check_v2(res: &reqwest::Response) -> u16 {
    if res.status() == StatusCode::UNAUTHORIZED {
        let challenge = res
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(challenge.starts_with("Bearer realm=\""), "{challenge}");
    }
    assert!(!res.status().is_server_error(), "{}", res.status());
    res.status().as_u16()
}

async fn pull(c: &RegistryClient, repo: &str) -> u16 {
    let res = c.get_manifest(repo, "v1", &[OCI_MANIFEST]).await.unwrap();
    check_v2(&res)
}

async fn push(c: &RegistryClient, repo: &str, tag: &str, img: &Image) -> u16 {
    let res = c.push_manifest(repo, tag, &img.manifest).await.unwrap();
    check_v2(&res)
}

fn small_image(seed: u64) -> Image {
    image::image(seed, 1, 256, "amd64")
}

#[tokio::test]
async fn tenancy_lifecycle() {
    let node = node().await;
    let admin_token = token(&node, "admin", ADMIN_PASSWORD).await;
    for user in ["alice", "bob", "carol"] {
        create_user(&node, &admin_token, user).await;
    }
    let dup = json!({ "username": "alice", "password": "long-enough", "email": "" });
    let ans = expect(&node, &admin(), Method::POST, "/users", Some(dup), 409).await;
    assert_eq!(ans.body["error"]["code"], "conflict");

    // Users list, paginated with a Link header.
    let ans = expect(&node, &admin(), Method::GET, "/users?n=2", None, 200).await;
    assert_eq!(ans.names(), ["admin", "alice"]);
    let link = ans.header("link").unwrap().to_owned();
    assert_eq!(link, "</api/v1/users?n=2&last=alice>; rel=\"next\"");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let ans = expect(&node, &admin(), Method::GET, next, None, 200).await;
    assert_eq!(ans.names(), ["bob", "carol"]);
    assert!(ans.header("link").is_none());

    let alice = token(&node, "alice", &password_of("alice")).await;
    let bob = token(&node, "bob", &password_of("bob")).await;
    let carol = token(&node, "carol", &password_of("carol")).await;
    let ans = expect(&node, &alice, Method::GET, "/users", None, 403).await;
    assert_eq!(ans.body["error"]["code"], "forbidden");
    let me = expect(&node, &alice, Method::GET, "/user", None, 200).await;
    assert_eq!(me.body["username"], "alice");
    assert_eq!(me.body["email"], "alice@example.test");
    assert_eq!(me.body["is_admin"], false);
    assert!(me.body["created_at"].as_str().unwrap().ends_with('Z'));
    let other = expect(&node, &alice, Method::GET, "/users/bob", None, 200).await;
    assert!(other.body.get("email").is_none(), "{}", other.body);
    let other = expect(&node, &admin(), Method::GET, "/users/bob", None, 200).await;
    assert_eq!(other.body["email"], "bob@example.test");
    expect(&node, &alice, Method::GET, "/users/nobody", None, 404).await;

    // An organization with a member and a team.
    let org = expect(
        &node,
        &alice,
        Method::POST,
        "/orgs",
        Some(json!({ "name": "acme" })),
        201,
    )
    .await;
    assert_eq!(org.body["name"], "acme");
    assert_eq!(org.header("location"), Some("/api/v1/orgs/acme"));
    let role = json!({ "role": "member" });
    expect(
        &node,
        &alice,
        Method::PUT,
        "/orgs/acme/members/bob",
        Some(role),
        204,
    )
    .await;
    let members = expect(&node, &bob, Method::GET, "/orgs/acme/members", None, 200).await;
    assert_eq!(
        members.body,
        json!([
            { "username": "alice", "role": "owner" },
            { "username": "bob", "role": "member" },
        ])
    );
    let team = json!({ "name": "devs" });
    let ans = expect(
        &node,
        &alice,
        Method::POST,
        "/orgs/acme/teams",
        Some(team),
        201,
    )
    .await;
    assert_eq!(ans.body, json!({ "org": "acme", "name": "devs" }));
    expect(
        &node,
        &alice,
        Method::PUT,
        "/orgs/acme/teams/devs/members/bob",
        None,
        204,
    )
    .await;
    let ans = expect(
        &node,
        &alice,
        Method::PUT,
        "/orgs/acme/teams/devs/members/carol",
        None,
        400,
    )
    .await;
    assert_eq!(ans.body["error"]["code"], "invalid");
    let ans = expect(
        &node,
        &bob,
        Method::GET,
        "/orgs/acme/teams/devs/members",
        None,
        200,
    )
    .await;
    assert_eq!(ans.body, json!([{ "username": "bob" }]));
    let ans = expect(&node, &bob, Method::GET, "/orgs/acme/teams", None, 200).await;
    assert_eq!(ans.names(), ["devs"]);
    let ans = expect(&node, &bob, Method::GET, "/orgs", None, 200).await;
    assert_eq!(ans.names(), ["acme"]);
    let ans = expect(&node, &carol, Method::GET, "/orgs", None, 200).await;
    assert_eq!(ans.body, json!([]));
    expect(&node, &carol, Method::GET, "/orgs/acme", None, 404).await;

    // Alice pushes acme/app; the team gets write on it; bob pushes through the team.
    let img = small_image(70);
    let alice_v2 = v2(&node, &basic("alice", &password_of("alice")));
    let bob_v2 = v2(&node, &basic("bob", &password_of("bob")));
    let carol_v2 = v2(&node, &basic("carol", &password_of("carol")));
    alice_v2.push_image("acme/app", "v1", &img).await.unwrap();
    assert_eq!(push(&bob_v2, "acme/app", "v2", &img).await, 404);
    let write = json!({ "permission": "write" });
    let team_repo = "/orgs/acme/teams/devs/repos/acme/app";
    expect(&node, &alice, Method::PUT, team_repo, Some(write), 204).await;
    assert_eq!(push(&bob_v2, "acme/app", "v2", &img).await, 201);
    assert_eq!(pull(&carol_v2, "acme/app").await, 404);

    // Repository detail and listing.
    let detail = expect(&node, &bob, Method::GET, "/repos/acme/app", None, 200).await;
    assert_eq!(detail.body["name"], "acme/app");
    assert_eq!(detail.body["visibility"], "private");
    let tags = detail.body["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 2);
    for (tag, name) in tags.iter().zip(["v1", "v2"]) {
        assert_eq!(tag["name"], name);
        assert_eq!(tag["digest"], img.digest());
        assert_eq!(tag["media_type"], OCI_MANIFEST);
        assert!(tag["size"].as_u64().unwrap() > img.manifest.size());
        assert!(tag["updated_at"].is_string());
    }
    assert!(detail.body["created_at"].is_string() && detail.body["updated_at"].is_string());
    expect(&node, &carol, Method::GET, "/repos/acme/app", None, 404).await;
    expect(
        &node,
        &Cred::Anonymous,
        Method::GET,
        "/repos/acme/app",
        None,
        404,
    )
    .await;
    let ans = expect(&node, &bob, Method::GET, "/repos?namespace=acme", None, 200).await;
    assert_eq!(ans.names(), ["acme/app"]);
    let ans = expect(
        &node,
        &carol,
        Method::GET,
        "/repos?namespace=acme",
        None,
        200,
    )
    .await;
    assert_eq!(ans.body, json!([]));

    // Direct grants: list, grant, revoke.
    let grant = json!({ "user": "carol", "permission": "read" });
    let perms = "/repos/acme/app/permissions";
    expect(&node, &alice, Method::PUT, perms, Some(grant), 204).await;
    assert_eq!(pull(&carol_v2, "acme/app").await, 200);
    assert_eq!(push(&carol_v2, "acme/app", "c", &img).await, 403);
    let ans = expect(&node, &alice, Method::GET, perms, None, 200).await;
    assert_eq!(
        ans.body,
        json!([
            { "team": "acme/devs", "permission": "write" },
            { "user": "carol", "permission": "read" },
        ])
    );
    let ans = expect(
        &node,
        &alice,
        Method::GET,
        &format!("{perms}?n=1"),
        None,
        200,
    )
    .await;
    assert_eq!(ans.body.as_array().unwrap().len(), 1);
    assert!(
        ans.header("link")
            .unwrap()
            .contains("last=team%3Aacme%2Fdevs")
    );
    expect(&node, &bob, Method::GET, perms, None, 403).await;
    let revoke_carol = format!("{perms}/user/carol");
    expect(&node, &alice, Method::DELETE, &revoke_carol, None, 204).await;
    expect(&node, &alice, Method::DELETE, &revoke_carol, None, 404).await;
    assert_eq!(pull(&carol_v2, "acme/app").await, 404);
    expect(
        &node,
        &alice,
        Method::DELETE,
        &format!("{perms}/team/acme/devs"),
        None,
        204,
    )
    .await;
    assert_eq!(push(&bob_v2, "acme/app", "v3", &img).await, 404);
    let team_grant = json!({ "team": "devs", "permission": "write" });
    expect(&node, &alice, Method::PUT, perms, Some(team_grant), 204).await;
    assert_eq!(push(&bob_v2, "acme/app", "v3", &img).await, 201);
    expect(&node, &alice, Method::DELETE, team_repo, None, 204).await;
    expect(&node, &alice, Method::DELETE, team_repo, None, 404).await;
    assert_eq!(pull(&bob_v2, "acme/app").await, 404);

    // API keys: created with the secret once, listed without it, used on /v2 and /api/v1,
    // revoked.
    let new_key = json!({
        "name": "ci",
        "scope": { "kind": "repository", "name": "acme/app" },
        "permission": "read",
        "expires_in_days": 30,
    });
    let key = expect(
        &node,
        &alice,
        Method::POST,
        "/user/api-keys",
        Some(new_key),
        201,
    )
    .await;
    let secret = key.body["secret"].as_str().unwrap().to_owned();
    let key_id = key.body["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("aerugo_ak_"), "{secret}");
    assert_eq!(
        key.body["scope"],
        json!({ "kind": "repository", "name": "acme/app" })
    );
    assert!(key.body["expires_at"].is_string());
    let list = expect(&node, &alice, Method::GET, "/user/api-keys", None, 200).await;
    let listed = list.body.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], key_id.as_str());
    assert!(listed[0].get("secret").is_none() && listed[0].get("secret_hash").is_none());
    assert!(!list.body.to_string().contains(&secret));
    let key_v2 = v2(&node, &basic("alice", &secret));
    assert_eq!(pull(&key_v2, "acme/app").await, 200);
    assert_eq!(push(&key_v2, "acme/app", "k", &img).await, 403);
    let key_bearer = Cred::Bearer(secret.clone());
    expect(
        &node,
        &key_bearer,
        Method::GET,
        "/repos/acme/app",
        None,
        200,
    )
    .await;
    expect(&node, &key_bearer, Method::GET, "/user", None, 200).await;
    let private = json!({ "visibility": "private" });
    expect(
        &node,
        &key_bearer,
        Method::PATCH,
        "/repos/acme/app",
        Some(private),
        403,
    )
    .await;
    expect(&node, &key_bearer, Method::GET, "/user/api-keys", None, 403).await;
    // A key cannot be traded for an unrestricted API token.
    let trade = json!({ "username": "alice", "password": secret });
    expect(
        &node,
        &Cred::Anonymous,
        Method::POST,
        "/auth/token",
        Some(trade),
        403,
    )
    .await;
    let revoke = format!("/user/api-keys/{key_id}");
    expect(&node, &alice, Method::DELETE, &revoke, None, 204).await;
    expect(&node, &alice, Method::DELETE, &revoke, None, 404).await;
    expect(&node, &key_bearer, Method::GET, "/user", None, 401).await;
    assert_eq!(pull(&key_v2, "acme/app").await, 401);
    let list = expect(&node, &alice, Method::GET, "/user/api-keys", None, 200).await;
    assert!(list.body[0]["revoked_at"].is_string(), "{}", list.body);

    // Visibility.
    let anon_v2 = v2(&node, &Cred::Anonymous);
    assert_eq!(pull(&anon_v2, "acme/app").await, 401);
    let public = json!({ "visibility": "public" });
    let ans = expect(
        &node,
        &alice,
        Method::PATCH,
        "/repos/acme/app",
        Some(public),
        200,
    )
    .await;
    assert_eq!(ans.body["visibility"], "public");
    assert_eq!(pull(&anon_v2, "acme/app").await, 200);
    assert_eq!(push(&anon_v2, "acme/app", "anon", &img).await, 401);
    expect(
        &node,
        &Cred::Anonymous,
        Method::GET,
        "/repos/acme/app",
        None,
        200,
    )
    .await;
    let ans = expect(&node, &Cred::Anonymous, Method::GET, "/repos", None, 200).await;
    assert_eq!(ans.names(), ["acme/app"]);
    let private = json!({ "visibility": "private" });
    expect(
        &node,
        &alice,
        Method::PATCH,
        "/repos/acme/app",
        Some(private),
        200,
    )
    .await;
    assert_eq!(pull(&anon_v2, "acme/app").await, 401);
    expect(
        &node,
        &Cred::Anonymous,
        Method::GET,
        "/repos/acme/app",
        None,
        404,
    )
    .await;

    // Password change: the old password and the API tokens minted with it stop working at once,
    // the new one works.
    let bob_old = basic("bob", &password_of("bob"));
    expect(&node, &bob_old, Method::GET, "/user", None, 200).await;
    let wrong = json!({ "current_password": "not-the-password", "new_password": "a-new-password" });
    expect(&node, &bob, Method::PUT, "/user/password", Some(wrong), 403).await;
    let short = json!({ "current_password": password_of("bob"), "new_password": "short" });
    expect(&node, &bob, Method::PUT, "/user/password", Some(short), 400).await;
    let change =
        json!({ "current_password": password_of("bob"), "new_password": "a-new-password" });
    expect(
        &node,
        &bob,
        Method::PUT,
        "/user/password",
        Some(change),
        204,
    )
    .await;
    expect(&node, &bob_old, Method::GET, "/user", None, 401).await;
    let old = json!({ "username": "bob", "password": password_of("bob") });
    expect(
        &node,
        &Cred::Anonymous,
        Method::POST,
        "/auth/token",
        Some(old),
        401,
    )
    .await;
    // API tokens minted before the change die with the old password.
    expect(&node, &bob, Method::GET, "/user", None, 401).await;
    let bob = token(&node, "bob", "a-new-password").await;

    // User updates.
    let promote = json!({ "is_admin": true });
    expect(&node, &bob, Method::PATCH, "/users/bob", Some(promote), 403).await;
    let email = json!({ "email": "bob@new.example" });
    let ans = expect(&node, &bob, Method::PATCH, "/users/bob", Some(email), 200).await;
    assert_eq!(ans.body["email"], "bob@new.example");
    let email = json!({ "email": "x@y" });
    expect(&node, &carol, Method::PATCH, "/users/bob", Some(email), 403).await;

    // Repository delete: tags and manifests go.
    expect(&node, &bob, Method::DELETE, "/repos/acme/app", None, 404).await;
    expect(&node, &alice, Method::DELETE, "/repos/acme/app", None, 204).await;
    expect(&node, &alice, Method::GET, "/repos/acme/app", None, 404).await;
    assert_eq!(pull(&alice_v2, "acme/app").await, 404);

    // Team, member and organization removal.
    expect(
        &node,
        &bob,
        Method::DELETE,
        "/orgs/acme/teams/devs",
        None,
        403,
    )
    .await;
    expect(
        &node,
        &alice,
        Method::DELETE,
        "/orgs/acme/teams/devs",
        None,
        204,
    )
    .await;
    expect(&node, &bob, Method::DELETE, "/orgs/acme", None, 403).await;
    expect(
        &node,
        &alice,
        Method::DELETE,
        "/orgs/acme/members/alice",
        None,
        409,
    )
    .await;
    expect(
        &node,
        &bob,
        Method::DELETE,
        "/orgs/acme/members/bob",
        None,
        204,
    )
    .await;
    expect(&node, &bob, Method::GET, "/orgs/acme", None, 404).await;
    expect(&node, &alice, Method::DELETE, "/orgs/acme", None, 204).await;
    expect(&node, &alice, Method::GET, "/orgs/acme", None, 404).await;

    // User removal.
    expect(&node, &bob, Method::DELETE, "/users/carol", None, 403).await;
    expect(&node, &admin(), Method::DELETE, "/users/carol", None, 204).await;
    expect(&node, &admin(), Method::GET, "/users/carol", None, 404).await;
    expect(&node, &carol, Method::GET, "/user", None, 401).await;
}

#[tokio::test]
async fn repository_deletes_follow_the_registry_setting() {
    let node = node_with(&[("AERUGO_REGISTRY__DELETE_ENABLED", "false")]).await;
    node.client()
        .push_image("keep/app", "v1", &small_image(41))
        .await
        .unwrap();
    let ans = expect(
        &node,
        &admin(),
        Method::DELETE,
        "/repos/keep/app",
        None,
        405,
    )
    .await;
    assert_eq!(ans.body["error"]["code"], "unsupported");
    assert_eq!(pull(&node.client(), "keep/app").await, 200);
}

#[tokio::test]
async fn self_signup_is_decided_by_configuration() {
    let node = node().await;
    let body = json!({ "username": "eve", "password": "long-enough", "email": "e@x" });
    let ans = expect(
        &node,
        &Cred::Anonymous,
        Method::POST,
        "/users",
        Some(body.clone()),
        401,
    )
    .await;
    assert_eq!(ans.body["error"]["code"], "unauthorized");
    create_user(&node, &admin(), "alice").await;
    let alice = token(&node, "alice", &password_of("alice")).await;
    expect(
        &node,
        &alice,
        Method::POST,
        "/users",
        Some(body.clone()),
        403,
    )
    .await;

    let open = node_with(&[("AERUGO_AUTH__SELF_SIGNUP", "true")]).await;
    let ans = expect(
        &open,
        &Cred::Anonymous,
        Method::POST,
        "/users",
        Some(body),
        201,
    )
    .await;
    assert_eq!(ans.body["is_admin"], false);
    let sneaky = json!({
        "username": "mallory", "password": "long-enough", "email": "m@x", "is_admin": true
    });
    expect(
        &open,
        &Cred::Anonymous,
        Method::POST,
        "/users",
        Some(sneaky),
        403,
    )
    .await;
    let eve = token(&open, "eve", "long-enough").await;
    let ans = expect(&open, &eve, Method::GET, "/user", None, 200).await;
    assert_eq!(ans.body["username"], "eve");
    // The new user owns their namespace.
    let eve_v2 = v2(&open, &basic("eve", "long-enough"));
    eve_v2
        .push_image("eve/app", "v1", &small_image(71))
        .await
        .unwrap();
    expect(&open, &eve, Method::GET, "/repos/eve/app", None, 200).await;
}

#[tokio::test]
async fn logins_are_throttled() {
    let node = node_with(&[("AERUGO_AUTH__LOGIN_MAX_FAILURES", "3")]).await;
    create_user(&node, &admin(), "alice").await;
    create_user(&node, &admin(), "bob").await;
    let wrong = json!({ "username": "alice", "password": "wrong-password" });
    for _ in 0..3 {
        let ans = expect(
            &node,
            &Cred::Anonymous,
            Method::POST,
            "/auth/token",
            Some(wrong.clone()),
            401,
        )
        .await;
        assert_eq!(ans.body["error"]["code"], "unauthorized");
    }
    let ans = expect(
        &node,
        &Cred::Anonymous,
        Method::POST,
        "/auth/token",
        Some(wrong),
        429,
    )
    .await;
    assert_eq!(ans.body["error"]["code"], "too_many_requests");
    let retry: u64 = ans.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0);
    // Even the right password waits, on every way in.
    let right = json!({ "username": "alice", "password": password_of("alice") });
    expect(
        &node,
        &Cred::Anonymous,
        Method::POST,
        "/auth/token",
        Some(right),
        429,
    )
    .await;
    let alice_basic = basic("alice", &password_of("alice"));
    let ans = expect(&node, &alice_basic, Method::GET, "/user", None, 429).await;
    assert!(ans.header("retry-after").is_some());
    // Another user is not affected.
    token(&node, "bob", &password_of("bob")).await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_not_server_errors() {
    let node = node().await;
    let a = admin();
    create_user(&node, &a, "alice").await;
    let alice = token(&node, "alice", &password_of("alice")).await;
    expect(
        &node,
        &alice,
        Method::POST,
        "/orgs",
        Some(json!({ "name": "acme" })),
        201,
    )
    .await;
    let cases: Vec<(Method, &str, Value)> = vec![
        (
            Method::POST,
            "/users",
            json!({ "username": 5, "password": "x", "email": "" }),
        ),
        (
            Method::POST,
            "/users",
            json!({ "username": "zed", "email": "" }),
        ),
        (
            Method::POST,
            "/users",
            json!({ "username": "zed", "password": "long-enough", "email": "", "extra": 1 }),
        ),
        (
            Method::POST,
            "/users",
            json!({ "username": "Zed!", "password": "long-enough", "email": "" }),
        ),
        (Method::POST, "/users", json!([])),
        (Method::POST, "/orgs", json!({ "name": "" })),
        (
            Method::PUT,
            "/orgs/acme/members/alice",
            json!({ "role": "king" }),
        ),
        (
            Method::POST,
            "/orgs/acme/members",
            json!({ "username": "alice" }),
        ),
        (
            Method::PATCH,
            "/repos/acme/app",
            json!({ "visibility": "secret" }),
        ),
        (
            Method::PUT,
            "/repos/acme/app/permissions",
            json!({ "user": "alice" }),
        ),
        (
            Method::POST,
            "/user/api-keys",
            json!({ "name": "k", "scope": { "kind": "galaxy" }, "permission": "read" }),
        ),
        (Method::POST, "/auth/token", json!({ "username": "alice" })),
    ];
    for (method, path, body) in cases {
        let what = format!("{method} {path} {body}");
        let ans = api(&node, &a, method, path, Some(body)).await;
        assert_eq!(ans.status, StatusCode::BAD_REQUEST, "{what}: {}", ans.body);
        assert_eq!(ans.body["error"]["code"], "invalid", "{what}");
    }
    // Not JSON at all, and no content type.
    for (content_type, body) in [("application/json", "{not json"), ("text/plain", "{}")] {
        let res = node
            .client()
            .request(Method::POST, "/api/v1/orgs")
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid");
    }
    // Bad query parameters and names.
    for path in [
        "/users?n=abc",
        "/users?n=0",
        "/repos?n=-1",
        "/repos/Upper/Case",
    ] {
        let ans = api(&node, &a, Method::GET, path, None).await;
        assert_eq!(ans.status, StatusCode::BAD_REQUEST, "{path}: {}", ans.body);
    }
    // Unreadable credentials are a 401, never an anonymous request.
    for auth in [
        "Bearer not-a-token",
        "Basic !!!",
        "Digest x",
        "Bearer aerugo_ak_nope",
    ] {
        let res = node
            .anonymous()
            .request(Method::GET, "/api/v1/repos")
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{auth}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    // Unknown endpoints and methods.
    let ans = expect(&node, &a, Method::GET, "/nothing/here", None, 404).await;
    assert_eq!(
        ans.body["error"]["message"],
        "no such management API endpoint"
    );
    expect(&node, &a, Method::DELETE, "/users", None, 405).await;
    // The wildcard repository routes answer 405 for a method their target does not serve.
    let grant = json!({ "user": "alice", "permission": "read" });
    expect(
        &node,
        &Cred::Anonymous,
        Method::PUT,
        "/repos/acme/app",
        Some(grant.clone()),
        401,
    )
    .await;
    expect(
        &node,
        &alice,
        Method::PUT,
        "/repos/acme/app",
        Some(grant),
        405,
    )
    .await;
    expect(
        &node,
        &alice,
        Method::GET,
        "/repos/acme/app/permissions/user/x",
        None,
        405,
    )
    .await;
    expect(&node, &alice, Method::POST, "/repos/acme/app", None, 405).await;
}

/// The OpenAPI document lists every route the brief requires, and every documented operation is
/// served (a placeholder request never reaches the router's 404 or 405 fallback). The reverse
/// (nothing served undocumented) holds by construction and is pinned by the unit tests of
/// `api::mgmt`: the router and the document are built from one operation table.
#[tokio::test]
async fn openapi_document_matches_the_served_routes() {
    let node = node().await;
    let doc = expect(
        &node,
        &Cred::Anonymous,
        Method::GET,
        "/openapi.json",
        None,
        200,
    )
    .await;
    assert_eq!(doc.body["openapi"], "3.0.3");
    let paths = doc.body["paths"].as_object().unwrap();
    let required = [
        ("post", "/auth/token"),
        ("post", "/users"),
        ("get", "/users"),
        ("get", "/users/{username}"),
        ("patch", "/users/{username}"),
        ("delete", "/users/{username}"),
        ("get", "/user"),
        ("put", "/user/password"),
        ("post", "/orgs"),
        ("get", "/orgs"),
        ("get", "/orgs/{org}"),
        ("delete", "/orgs/{org}"),
        ("get", "/orgs/{org}/members"),
        ("put", "/orgs/{org}/members/{username}"),
        ("delete", "/orgs/{org}/members/{username}"),
        ("post", "/orgs/{org}/teams"),
        ("get", "/orgs/{org}/teams"),
        ("delete", "/orgs/{org}/teams/{team}"),
        ("get", "/orgs/{org}/teams/{team}/members"),
        ("put", "/orgs/{org}/teams/{team}/members/{username}"),
        ("delete", "/orgs/{org}/teams/{team}/members/{username}"),
        ("put", "/orgs/{org}/teams/{team}/repos/{repo}"),
        ("delete", "/orgs/{org}/teams/{team}/repos/{repo}"),
        ("get", "/repos"),
        ("get", "/repos/{repo}"),
        ("patch", "/repos/{repo}"),
        ("delete", "/repos/{repo}"),
        ("get", "/repos/{repo}/permissions"),
        ("put", "/repos/{repo}/permissions"),
        ("delete", "/repos/{repo}/permissions/user/{username}"),
        ("delete", "/repos/{repo}/permissions/team/{team}"),
        ("post", "/user/api-keys"),
        ("get", "/user/api-keys"),
        ("delete", "/user/api-keys/{id}"),
        ("get", "/openapi.json"),
    ];
    for (method, path) in required {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    let mut count = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            count += 1;
            assert!(op["operationId"].is_string() && op["responses"].is_object());
            let concrete = path
                .replace("{username}", "nobody")
                .replace("{org}", "no-org")
                .replace("{team}", "no-team")
                .replace("{id}", "no-key")
                .replace("{repo}", "no/such/repo");
            let body = op.get("requestBody").map(|_| json!({}));
            let method: Method = method.to_ascii_uppercase().parse().unwrap();
            let ans = api(&node, &admin(), method.clone(), &concrete, body).await;
            assert_ne!(
                ans.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {concrete}"
            );
            assert_ne!(
                ans.body["error"]["message"], "no such management API endpoint",
                "{method} {concrete}"
            );
        }
    }
    assert!(count >= required.len());
}

/// One role of the matrix: its credentials on `/api/v1` and on `/v2`.
struct Role {
    name: &'static str,
    api: Cred,
    v2: Cred,
}

/// The expected status for each role, in the order of [`ROLES`].
type Row = [u16; 8];

const ROLES: [&str; 8] = [
    "anonymous",
    "outsider",
    "org member",
    "team member",
    "org admin",
    "org owner",
    "site admin",
    "read key",
];

#[tokio::test]
async fn permission_matrix() {
    let node = node().await;
    let a = admin();
    for user in ["olivia", "adam", "mia", "tom", "oscar", "dummy"] {
        create_user(&node, &a, user).await;
    }
    let olivia = token(&node, "olivia", &password_of("olivia")).await;
    expect(
        &node,
        &olivia,
        Method::POST,
        "/orgs",
        Some(json!({ "name": "acme" })),
        201,
    )
    .await;
    for (user, role) in [("adam", "admin"), ("mia", "member"), ("tom", "member")] {
        let path = format!("/orgs/acme/members/{user}");
        expect(
            &node,
            &olivia,
            Method::PUT,
            &path,
            Some(json!({ "role": role })),
            204,
        )
        .await;
    }
    let devs = json!({ "name": "devs" });
    expect(
        &node,
        &olivia,
        Method::POST,
        "/orgs/acme/teams",
        Some(devs),
        201,
    )
    .await;
    expect(
        &node,
        &olivia,
        Method::PUT,
        "/orgs/acme/teams/devs/members/tom",
        None,
        204,
    )
    .await;
    let key = json!({
        "name": "read-acme",
        "scope": { "kind": "namespace", "name": "acme" },
        "permission": "read",
    });
    let key = expect(
        &node,
        &olivia,
        Method::POST,
        "/user/api-keys",
        Some(key),
        201,
    )
    .await;
    let secret = key.body["secret"].as_str().unwrap().to_owned();

    let olivia_v2 = v2(&node, &basic("olivia", &password_of("olivia")));
    let img = small_image(72);
    // Pushes a repository, makes it public or not, and gives the team write on it.
    let setup_repo = async |repo: &str, public: bool| {
        olivia_v2.push_image(repo, "v1", &img).await.unwrap();
        if public {
            let path = format!("/repos/{repo}");
            let body = json!({ "visibility": "public" });
            expect(&node, &olivia, Method::PATCH, &path, Some(body), 200).await;
        }
        let path = format!("/orgs/acme/teams/devs/repos/{repo}");
        let body = json!({ "permission": "write" });
        expect(&node, &olivia, Method::PUT, &path, Some(body), 204).await;
    };
    setup_repo("acme/private-app", false).await;
    setup_repo("acme/public-app", true).await;
    for i in 0..ROLES.len() {
        setup_repo(&format!("acme/del-{i}-private"), false).await;
        setup_repo(&format!("acme/del-{i}-public"), true).await;
    }

    let mut roles = Vec::new();
    for name in ROLES {
        let role = match name {
            "anonymous" => Role {
                name,
                api: Cred::Anonymous,
                v2: Cred::Anonymous,
            },
            "site admin" => Role {
                name,
                api: admin(),
                v2: admin(),
            },
            "read key" => Role {
                name,
                api: Cred::Bearer(secret.clone()),
                v2: basic("olivia", &secret),
            },
            _ => {
                let user = match name {
                    "outsider" => "oscar",
                    "org member" => "mia",
                    "team member" => "tom",
                    "org admin" => "adam",
                    _ => "olivia",
                };
                Role {
                    name,
                    api: token(&node, user, &password_of(user)).await,
                    v2: basic(user, &password_of(user)),
                }
            }
        };
        roles.push(role);
    }

    //                      anon outs memb team oadm ownr site key
    let repo_rows: [(&str, Row, Row); 7] = [
        (
            "v2 pull",
            [401, 404, 404, 200, 200, 200, 200, 200],
            [200, 200, 200, 200, 200, 200, 200, 200],
        ),
        (
            "v2 push",
            [401, 404, 404, 201, 201, 201, 201, 403],
            [401, 403, 403, 201, 201, 201, 201, 403],
        ),
        (
            "GET repo",
            [404, 404, 404, 200, 200, 200, 200, 200],
            [200, 200, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET permissions",
            [401, 404, 404, 403, 200, 200, 200, 403],
            [401, 403, 403, 403, 200, 200, 200, 403],
        ),
        (
            "PUT permissions",
            [401, 404, 404, 403, 204, 204, 204, 403],
            [401, 403, 403, 403, 204, 204, 204, 403],
        ),
        (
            "PATCH repo",
            [401, 404, 404, 403, 200, 200, 200, 403],
            [401, 403, 403, 403, 200, 200, 200, 403],
        ),
        (
            "DELETE repo",
            [401, 404, 404, 403, 204, 204, 204, 403],
            [401, 403, 403, 403, 204, 204, 204, 403],
        ),
    ];
    let org_rows: [(&str, Row); 5] = [
        ("GET org", [401, 404, 200, 200, 200, 200, 200, 200]),
        ("GET org members", [401, 404, 200, 200, 200, 200, 200, 200]),
        ("PUT org member", [401, 404, 403, 403, 204, 204, 204, 403]),
        ("POST team", [401, 404, 403, 403, 201, 201, 201, 403]),
        ("PUT team member", [401, 404, 403, 403, 204, 204, 204, 403]),
    ];

    let mut failures = Vec::new();
    let mut checked = 0;
    for (i, role) in roles.iter().enumerate() {
        let client = v2(&node, &role.v2);
        for (op, private_row, public_row) in &repo_rows {
            for (public, row) in [(false, private_row), (true, public_row)] {
                let vis = if public { "public" } else { "private" };
                let repo = format!("acme/{vis}-app");
                let got = match *op {
                    "v2 pull" => pull(&client, &repo).await,
                    "v2 push" => push(&client, &repo, &format!("r{i}"), &img).await,
                    "GET repo" => {
                        let path = format!("/repos/{repo}");
                        api(&node, &role.api, Method::GET, &path, None)
                            .await
                            .status
                            .as_u16()
                    }
                    "GET permissions" => {
                        let path = format!("/repos/{repo}/permissions");
                        api(&node, &role.api, Method::GET, &path, None)
                            .await
                            .status
                            .as_u16()
                    }
                    "PUT permissions" => {
                        let path = format!("/repos/{repo}/permissions");
                        let body = json!({ "user": "dummy", "permission": "read" });
                        api(&node, &role.api, Method::PUT, &path, Some(body))
                            .await
                            .status
                            .as_u16()
                    }
                    "PATCH repo" => {
                        let path = format!("/repos/{repo}");
                        let body = json!({ "visibility": vis });
                        let ans = api(&node, &role.api, Method::PATCH, &path, Some(body)).await;
                        ans.status.as_u16()
                    }
                    "DELETE repo" => {
                        let path = format!("/repos/acme/del-{i}-{vis}");
                        let ans = api(&node, &role.api, Method::DELETE, &path, None).await;
                        ans.status.as_u16()
                    }
                    other => unreachable!("{other}"),
                };
                checked += 1;
                if got != row[i] {
                    failures.push(format!(
                        "{:<12} {op:<16} {vis:<8} expected {} got {got}",
                        role.name, row[i]
                    ));
                }
            }
        }
        for (op, row) in &org_rows {
            let got = match *op {
                "GET org" => api(&node, &role.api, Method::GET, "/orgs/acme", None).await,
                "GET org members" => {
                    api(&node, &role.api, Method::GET, "/orgs/acme/members", None).await
                }
                "PUT org member" => {
                    let body = json!({ "role": "member" });
                    let path = "/orgs/acme/members/dummy";
                    api(&node, &role.api, Method::PUT, path, Some(body)).await
                }
                "POST team" => {
                    let body = json!({ "name": format!("team-{i}") });
                    api(
                        &node,
                        &role.api,
                        Method::POST,
                        "/orgs/acme/teams",
                        Some(body),
                    )
                    .await
                }
                "PUT team member" => {
                    let path = "/orgs/acme/teams/devs/members/dummy";
                    api(&node, &role.api, Method::PUT, path, None).await
                }
                other => unreachable!("{other}"),
            }
            .status
            .as_u16();
            checked += 1;
            if got != row[i] {
                failures.push(format!(
                    "{:<12} {op:<16} {:<8} expected {} got {got}",
                    role.name, "-", row[i]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} matrix cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        checked,
        ROLES.len() * (repo_rows.len() * 2 + org_rows.len())
    );
}
