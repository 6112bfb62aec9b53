//! One access policy, over real HTTP (both backends): API-key caps apply to every listing
//! (`/v2/_catalog` with the key as Basic password or through a catalog token minted with it,
//! `/api/v1/repos`, `/api/v1/orgs`, members and teams), a site admin's repository-scoped key
//! lists only that repository, and, over generated facts, every listing equals the
//! single-repository (and single-organization) decision applied to each candidate.

use std::collections::BTreeSet;

use aerugo_testkit::image::{Image, image};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, TestNode, node};

fn password_of(user: &str) -> String {
    format!("password-of-{user}")
}

fn small_image(seed: u64) -> Image {
    image(seed, 1, 256, "amd64")
}

/// How a request authenticates.
#[derive(Clone, Debug)]
enum Cred {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

impl Cred {
    fn basic(user: &str, password: &str) -> Cred {
        Cred::Basic(user.to_owned(), password.to_owned())
    }

    fn user(user: &str) -> Cred {
        Cred::basic(user, &password_of(user))
    }

    fn admin() -> Cred {
        Cred::basic("admin", ADMIN_PASSWORD)
    }

    fn apply(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Cred::Anonymous => rb,
            Cred::Basic(u, p) => rb.basic_auth(u, Some(p)),
            Cred::Bearer(t) => rb.bearer_auth(t),
        }
    }
}

/// Sends a request and returns status and JSON body (`Null` when empty).
async fn call(
    node: &TestNode,
    cred: &Cred,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = cred.apply(node.anonymous().request(method.clone(), path));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let res = rb.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(
        !status.is_server_error(),
        "{method} {path}: {status} {text}"
    );
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    (status, value)
}

async fn api(
    node: &TestNode,
    cred: &Cred,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call(node, cred, method, &format!("/api/v1{path}"), body).await
}

/// `api` that must answer `want`.
async fn expect(
    node: &TestNode,
    cred: &Cred,
    method: Method,
    path: &str,
    body: Option<Value>,
    want: u16,
) -> Value {
    let (status, body) = api(node, cred, method.clone(), path, body).await;
    assert_eq!(status.as_u16(), want, "{method} {path} as {cred:?}: {body}");
    body
}

async fn create_user(node: &TestNode, name: &str) {
    let body = json!({ "username": name, "password": password_of(name), "email": format!("{name}@example.com") });
    expect(
        node,
        &Cred::admin(),
        Method::POST,
        "/users",
        Some(body),
        201,
    )
    .await;
}

/// Pushes `repo` as `cred` (Basic), then makes it public when asked.
async fn push(node: &TestNode, cred: &Cred, repo: &str, public: bool, seed: u64) {
    let Cred::Basic(u, p) = cred else {
        panic!("pushes use Basic credentials")
    };
    node.anonymous()
        .with_basic(u, p)
        .push_image(repo, "v1", &small_image(seed))
        .await
        .unwrap();
    if public {
        let body = json!({ "visibility": "public" });
        expect(
            node,
            cred,
            Method::PATCH,
            &format!("/repos/{repo}"),
            Some(body),
            200,
        )
        .await;
    }
}

/// Creates an API key for `owner` and returns its secret.
async fn api_key(
    node: &TestNode,
    owner: &Cred,
    kind: &str,
    name: &str,
    permission: &str,
) -> String {
    let body = json!({
        "name": format!("{kind}-{name}-{permission}"),
        "scope": { "kind": kind, "name": name },
        "permission": permission,
    });
    let created = expect(node, owner, Method::POST, "/user/api-keys", Some(body), 201).await;
    created["secret"].as_str().unwrap().to_owned()
}

/// A registry token for the catalog, minted with Basic credentials.
async fn catalog_token(node: &TestNode, user: &str, password: &str) -> String {
    let res = reqwest::Client::new()
        .get(format!("{}/auth/token", node.url()))
        .query(&[("service", "aerugo"), ("scope", "registry:catalog:*")])
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// The whole `/v2/_catalog` as `cred`.
async fn catalog(node: &TestNode, cred: &Cred) -> BTreeSet<String> {
    let (status, body) = call(node, cred, Method::GET, "/v2/_catalog?n=1000", None).await;
    assert_eq!(status, StatusCode::OK, "catalog as {cred:?}: {body}");
    names(&body["repositories"])
}

/// The names in a JSON array of strings, or of objects with a `name` or `username` field.
fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|e| {
            e.as_str()
                .or_else(|| e["name"].as_str())
                .or_else(|| e["username"].as_str())
                .unwrap_or_else(|| panic!("no name in {e}"))
                .to_owned()
        })
        .collect()
}

/// Every page of an `/api/v1` listing as `cred`.
async fn api_list(node: &TestNode, cred: &Cred, path: &str) -> BTreeSet<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let body = expect(
        node,
        cred,
        Method::GET,
        &format!("{path}{sep}n=1000"),
        None,
        200,
    )
    .await;
    names(&body)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The leak of issue 14 ("Why" 3): a key scoped to `alice/one` listed all of alice's private
/// repositories and her organizations' members and teams.
#[tokio::test]
async fn a_repository_key_lists_only_what_it_reaches() {
    let node = node().await;
    create_user(&node, "alice").await;
    create_user(&node, "bob").await;
    let alice = Cred::user("alice");
    push(&node, &alice, "alice/one", false, 1).await;
    push(&node, &alice, "alice/two", false, 2).await;
    push(&node, &Cred::admin(), "library/pub", true, 3).await;
    push(&node, &Cred::user("bob"), "bob/secret", false, 4).await;
    // alice owns org acme with a private repository, a team and a second member.
    expect(
        &node,
        &alice,
        Method::POST,
        "/orgs",
        Some(json!({ "name": "acme" })),
        201,
    )
    .await;
    push(&node, &alice, "acme/app", false, 5).await;
    let member = json!({ "role": "member" });
    expect(
        &node,
        &alice,
        Method::PUT,
        "/orgs/acme/members/bob",
        Some(member),
        204,
    )
    .await;
    expect(
        &node,
        &alice,
        Method::POST,
        "/orgs/acme/teams",
        Some(json!({ "name": "devs" })),
        201,
    )
    .await;

    // With her password alice sees all of it.
    let everything = set(&["acme/app", "alice/one", "alice/two", "library/pub"]);
    assert_eq!(catalog(&node, &alice).await, everything);
    assert_eq!(api_list(&node, &alice, "/repos").await, everything);

    let secret = api_key(&node, &alice, "repository", "alice/one", "read").await;
    let reach = set(&["alice/one", "library/pub"]);
    let basic_key = Cred::basic("alice", &secret);
    assert_eq!(
        catalog(&node, &basic_key).await,
        reach,
        "catalog, Basic with the key"
    );
    let token = catalog_token(&node, "alice", &secret).await;
    assert_eq!(
        catalog(&node, &Cred::Bearer(token)).await,
        reach,
        "catalog token minted with the key"
    );
    let bearer_key = Cred::Bearer(secret.clone());
    assert_eq!(
        api_list(&node, &bearer_key, "/repos").await,
        reach,
        "/api/v1/repos"
    );
    assert_eq!(
        api_list(&node, &bearer_key, "/repos?namespace=alice").await,
        set(&["alice/one"])
    );
    assert!(
        api_list(&node, &bearer_key, "/repos?namespace=acme")
            .await
            .is_empty()
    );
    // Organizations are out of the key's reach: not listed, and as good as missing.
    assert!(
        api_list(&node, &bearer_key, "/orgs").await.is_empty(),
        "/api/v1/orgs"
    );
    for path in [
        "/orgs/acme",
        "/orgs/acme/members",
        "/orgs/acme/teams",
        "/orgs/acme/teams/devs/members",
    ] {
        expect(&node, &bearer_key, Method::GET, path, None, 404).await;
    }
    // Nor can the key manage them.
    let role = json!({ "role": "admin" });
    expect(
        &node,
        &bearer_key,
        Method::PUT,
        "/orgs/acme/members/bob",
        Some(role),
        404,
    )
    .await;

    // A key for the namespace acme reaches the organization (to see, never to manage) and its
    // repositories, nothing of alice's own.
    let secret = api_key(&node, &alice, "namespace", "acme", "read").await;
    let ns_key = Cred::Bearer(secret.clone());
    let acme_reach = set(&["acme/app", "library/pub"]);
    assert_eq!(api_list(&node, &ns_key, "/repos").await, acme_reach);
    assert_eq!(
        catalog(&node, &Cred::basic("alice", &secret)).await,
        acme_reach
    );
    assert_eq!(api_list(&node, &ns_key, "/orgs").await, set(&["acme"]));
    assert_eq!(
        api_list(&node, &ns_key, "/orgs/acme/members").await,
        set(&["alice", "bob"])
    );
    assert_eq!(
        api_list(&node, &ns_key, "/orgs/acme/teams").await,
        set(&["devs"])
    );
    let role = json!({ "role": "admin" });
    expect(
        &node,
        &ns_key,
        Method::PUT,
        "/orgs/acme/members/bob",
        Some(role),
        403,
    )
    .await;
    expect(
        &node,
        &ns_key,
        Method::DELETE,
        "/orgs/acme/teams/devs",
        None,
        403,
    )
    .await;
}

/// The other half of "Why" 3: a site admin's key scoped to one repository, exchanged for a
/// catalog token, listed every tenant's private repositories.
#[tokio::test]
async fn a_site_admins_repository_key_lists_only_that_repository() {
    let node = node().await;
    create_user(&node, "carol").await;
    let admin = Cred::admin();
    push(&node, &admin, "library/app", false, 11).await;
    push(&node, &admin, "admin/own", false, 12).await;
    push(&node, &Cred::user("carol"), "carol/private", false, 13).await;
    push(&node, &Cred::user("carol"), "carol/public", true, 14).await;
    expect(
        &node,
        &admin,
        Method::POST,
        "/orgs",
        Some(json!({ "name": "corp" })),
        201,
    )
    .await;
    push(&node, &admin, "corp/internal", false, 15).await;
    assert_eq!(
        catalog(&node, &admin).await,
        set(&[
            "admin/own",
            "carol/private",
            "carol/public",
            "corp/internal",
            "library/app"
        ])
    );

    let secret = api_key(&node, &admin, "repository", "library/app", "read").await;
    let reach = set(&["carol/public", "library/app"]);
    let token = catalog_token(&node, "admin", &secret).await;
    assert_eq!(
        catalog(&node, &Cred::Bearer(token)).await,
        reach,
        "catalog token"
    );
    assert_eq!(
        catalog(&node, &Cred::basic("admin", &secret)).await,
        reach,
        "Basic with the key"
    );
    let bearer = Cred::Bearer(secret);
    assert_eq!(
        api_list(&node, &bearer, "/repos").await,
        reach,
        "/api/v1/repos"
    );
    assert!(
        api_list(&node, &bearer, "/orgs").await.is_empty(),
        "/api/v1/orgs"
    );
    expect(&node, &bearer, Method::GET, "/orgs/corp/members", None, 404).await;
    expect(
        &node,
        &bearer,
        Method::GET,
        "/repos/carol/private",
        None,
        404,
    )
    .await;

    // An all-scope key of the site admin still reaches everything (capped, never hidden).
    let secret = api_key(&node, &admin, "all", "", "read").await;
    let token = catalog_token(&node, "admin", &secret).await;
    assert_eq!(catalog(&node, &Cred::Bearer(token)).await.len(), 5);
    assert_eq!(
        api_list(&node, &Cred::Bearer(secret), "/orgs").await,
        set(&["corp"])
    );
}

/// Over generated facts (users, organizations with roles, teams, visibilities, user and team
/// grants, API keys of every scope), every listing equals the single-object decision applied to
/// each candidate: `/api/v1/repos` and `/v2/_catalog` list exactly the repositories whose
/// `GET /api/v1/repos/{name}` answers 200 for the same credential (a decision made by
/// `auth::effective_permission`), and `/api/v1/orgs` exactly the organizations whose
/// `GET /api/v1/orgs/{name}` answers 200 (`auth::org_permits`).
#[tokio::test]
async fn listings_equal_the_single_object_decision_over_generated_facts() {
    let node = node().await;
    let admin = Cred::admin();
    let mut rng = StdRng::seed_from_u64(0x5eed_0014);
    let users = ["ann", "ben", "cat", "dan"];
    for u in users {
        create_user(&node, u).await;
    }
    let orgs = ["org1", "org2"];
    let mut repos = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        expect(
            &node,
            &admin,
            Method::POST,
            "/orgs",
            Some(json!({ "name": org })),
            201,
        )
        .await;
        for u in users {
            let role = ["none", "member", "admin", "owner"][rng.random_range(0..4)];
            if role != "none" {
                let path = format!("/orgs/{org}/members/{u}");
                expect(
                    &node,
                    &admin,
                    Method::PUT,
                    &path,
                    Some(json!({ "role": role })),
                    204,
                )
                .await;
            }
        }
        for t in ["red", "blue"] {
            expect(
                &node,
                &admin,
                Method::POST,
                &format!("/orgs/{org}/teams"),
                Some(json!({ "name": t })),
                201,
            )
            .await;
        }
        for r in 0..3 {
            let repo = format!("{org}/r{r}");
            push(
                &node,
                &admin,
                &repo,
                rng.random_bool(0.3),
                (i * 10 + r) as u64,
            )
            .await;
            repos.push(repo);
        }
    }
    for (i, u) in users.iter().take(2).enumerate() {
        let repo = format!("{u}/mine");
        push(
            &node,
            &Cred::user(u),
            &repo,
            rng.random_bool(0.3),
            100 + i as u64,
        )
        .await;
        repos.push(repo);
    }
    push(&node, &admin, "unowned/app", false, 200).await;
    repos.push("unowned/app".into());
    // Team members (org members only) and grants.
    let members = |org: &str| {
        let node = &node;
        let org = org.to_owned();
        async move { api_list(node, &Cred::admin(), &format!("/orgs/{org}/members")).await }
    };
    for org in orgs {
        let in_org = members(org).await;
        for t in ["red", "blue"] {
            for u in &in_org {
                if u != "admin" && rng.random_bool(0.5) {
                    let path = format!("/orgs/{org}/teams/{t}/members/{u}");
                    expect(&node, &admin, Method::PUT, &path, None, 204).await;
                }
            }
        }
    }
    for repo in &repos {
        for u in users {
            if rng.random_bool(0.2) {
                let p = ["read", "write", "admin"][rng.random_range(0..3)];
                let body = json!({ "user": u, "permission": p });
                expect(
                    &node,
                    &admin,
                    Method::PUT,
                    &format!("/repos/{repo}/permissions"),
                    Some(body),
                    204,
                )
                .await;
            }
        }
        let ns = repo.split('/').next().unwrap();
        if orgs.contains(&ns) {
            for t in ["red", "blue"] {
                if rng.random_bool(0.3) {
                    let p = ["read", "write", "admin"][rng.random_range(0..3)];
                    let body = json!({ "team": format!("{ns}/{t}"), "permission": p });
                    expect(
                        &node,
                        &admin,
                        Method::PUT,
                        &format!("/repos/{repo}/permissions"),
                        Some(body),
                        204,
                    )
                    .await;
                }
            }
        }
    }

    // Credentials: anonymous, each user's password, the site admin, and keys of every scope.
    let mut creds: Vec<(String, Cred, Cred)> = vec![
        ("anonymous".into(), Cred::Anonymous, Cred::Anonymous),
        ("site admin".into(), admin.clone(), admin.clone()),
    ];
    for u in users {
        creds.push((u.to_owned(), Cred::user(u), Cred::user(u)));
    }
    let scopes: Vec<(&str, String)> = vec![
        ("all", String::new()),
        ("namespace", "org1".into()),
        ("namespace", "ann".into()),
        ("repository", "org2/r1".into()),
        ("repository", "ann/mine".into()),
        ("repository", "unowned/app".into()),
    ];
    for (owner, owner_cred) in [
        ("ann", Cred::user("ann")),
        ("ben", Cred::user("ben")),
        ("admin", admin.clone()),
    ] {
        for (kind, name) in &scopes {
            let p = ["read", "write", "admin"][rng.random_range(0..3)];
            let secret = api_key(&node, &owner_cred, kind, name, p).await;
            creds.push((
                format!("{owner}'s {kind} key {name} ({p})"),
                Cred::Bearer(secret.clone()),
                Cred::basic(owner, &secret),
            ));
        }
    }

    let mut checked = 0;
    for (who, api_cred, v2_cred) in &creds {
        let mut decided = BTreeSet::new();
        for repo in &repos {
            let (status, _) = api(
                &node,
                api_cred,
                Method::GET,
                &format!("/repos/{repo}"),
                None,
            )
            .await;
            match status.as_u16() {
                200 => {
                    decided.insert(repo.clone());
                }
                404 => {}
                other => panic!("{who}: GET /repos/{repo} answered {other}"),
            }
        }
        let listed = if matches!(api_cred, Cred::Anonymous) {
            let (status, body) = api(&node, api_cred, Method::GET, "/repos?n=1000", None).await;
            assert_eq!(status, StatusCode::OK);
            names(&body)
        } else {
            api_list(&node, api_cred, "/repos").await
        };
        assert_eq!(
            listed, decided,
            "{who}: /api/v1/repos differs from the decisions"
        );
        for ns in ["org1", "ann", "unowned"] {
            let listed = if matches!(api_cred, Cred::Anonymous) {
                let (_, body) = api(
                    &node,
                    api_cred,
                    Method::GET,
                    &format!("/repos?namespace={ns}&n=1000"),
                    None,
                )
                .await;
                names(&body)
            } else {
                api_list(&node, api_cred, &format!("/repos?namespace={ns}")).await
            };
            let want: BTreeSet<String> = decided
                .iter()
                .filter(|r| r.split('/').next() == Some(ns))
                .cloned()
                .collect();
            assert_eq!(listed, want, "{who}: /api/v1/repos?namespace={ns}");
        }
        if !matches!(v2_cred, Cred::Anonymous) {
            assert_eq!(
                catalog(&node, v2_cred).await,
                decided,
                "{who}: /v2/_catalog"
            );
            if let Cred::Basic(u, p) = v2_cred {
                let token = catalog_token(&node, u, p).await;
                assert_eq!(
                    catalog(&node, &Cred::Bearer(token)).await,
                    decided,
                    "{who}: /v2/_catalog with a catalog token"
                );
            }
            let mut orgs_decided = BTreeSet::new();
            for org in orgs {
                let (status, _) =
                    api(&node, api_cred, Method::GET, &format!("/orgs/{org}"), None).await;
                if status == StatusCode::OK {
                    orgs_decided.insert(org.to_owned());
                }
                // Members and teams are visible exactly when the organization is.
                for sub in ["members", "teams"] {
                    let (s, _) = api(
                        &node,
                        api_cred,
                        Method::GET,
                        &format!("/orgs/{org}/{sub}"),
                        None,
                    )
                    .await;
                    assert_eq!(s, status, "{who}: /orgs/{org}/{sub}");
                }
            }
            assert_eq!(
                api_list(&node, api_cred, "/orgs").await,
                orgs_decided,
                "{who}: /api/v1/orgs"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, creds.len());
}
