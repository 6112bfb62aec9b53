//! Real-client end-to-end tests: `skopeo`, `podman`, `docker` (private dockerd), containerd's `ctr`
//! (private containerd) and `aerugo-oras` push to and pull from an Aerugo node over plain HTTP
//! through Docker token authentication, and the digests they report must match the source images
//! and what the registry serves.
//!
//! Repositories are private and pushes need credentials, so every client authenticates the way
//! its users would, as the node's site admin (`admin`, [`support::ADMIN_PASSWORD`]): skopeo with
//! `--creds`, podman with `podman login` into the test's auth file, docker with `docker login`
//! into the test's `DOCKER_CONFIG` (which keeps only a refresh token, the "identity token", that
//! later pushes redeem with `POST /auth/token`), ctr with `--user` (containerd posts to the token
//! endpoint first) and `aerugo-oras` with `-u`/`-p`. Anonymous clients pull a repository made
//! public with the management API but not a private one, which answers them exactly like a missing
//! one; a user without admin rights pushes to their own namespace only. Checks on the token flow
//! read the node's request log.
//!
//! The clients come from `scripts/install-clients.sh`; a missing (or outdated) client fails the
//! test with a message saying so. The daemons are started once per test process by
//! `scripts/client-daemons.sh start` and left running (CI stops them). Every client starts from an
//! empty Docker config and auth file of its own and keeps its storage in a temporary directory,
//! except the daemons' stores, which are shared: tests there use image content unique to the run
//! and names that include the node's port, and remove their images at the end.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aerugo_testkit::clients::{self, COMMAND_TIMEOUT, ClientConfig, Daemons, INSTALL_HINT, Output};
use aerugo_testkit::image::{
    self, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, REF_NAME_ANNOTATION,
    sha256_digest,
};
use aerugo_testkit::{Blob, Image};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::process::Command;

use crate::support;

/// Every manifest media type, as registries' `Accept` negotiation expects from clients.
const ALL_MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];
/// Uncompressed size of each test layer (pseudo-random, so about as large compressed).
const LAYER_SIZE: usize = 64 * 1024;
/// Lines of `node.log` shown with a failure.
const LOG_TAIL_LINES: usize = 80;
/// The site admin's user name on test nodes (its password is `support::ADMIN_PASSWORD`).
const ADMIN: &str = "admin";
/// The token endpoint's path.
const TOKEN_PATH: &str = "/auth/token";

/// One test's world: a fresh node and a temporary directory with an empty client configuration.
struct Ctx {
    node: support::TestNode,
    config: ClientConfig,
}

/// One finished request from the node's log.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    status: u16,
}

impl Request {
    /// Parses a `request finished` line: `request{… method=GET path=/v2/ …}: … status=401 …`.
    fn parse(line: &str) -> Option<Self> {
        if !line.contains("request finished") {
            return None;
        }
        let field = |name: &str| {
            let start = line.find(&format!(" {name}="))? + name.len() + 2;
            let rest = &line[start..];
            let end = rest.find([' ', '}']).unwrap_or(rest.len());
            Some(&rest[..end])
        };
        Some(Self {
            method: field("method")?.to_owned(),
            path: field("path")?.to_owned(),
            status: field("status")?.parse().ok()?,
        })
    }
}

/// A manifest as the registry serves it.
struct Served {
    digest: String,
    media_type: String,
    body: Vec<u8>,
}

impl Ctx {
    async fn new() -> Self {
        let config = ClientConfig::new().expect("client config directory");
        Self {
            node: support::node().await,
            config,
        }
    }

    /// `127.0.0.1:<port>`, the registry host as clients name it.
    fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.node.port())
    }

    /// A path in the test's temporary directory.
    fn path(&self, name: &str) -> PathBuf {
        self.config.path().join(name)
    }

    /// A command for `program` with the empty client configuration; fails the test if the program
    /// is not installed.
    fn command(&self, program: &str) -> Command {
        let path = clients::require(program).unwrap_or_else(|e| panic!("{e:#}"));
        let mut command = Command::new(path);
        command.envs(self.config.env());
        command
    }

    /// Runs a command; on failure panics with the command, its output and the node's log.
    async fn run(&self, command: &mut Command) -> Output {
        match clients::run(command, COMMAND_TIMEOUT).await {
            Ok(output) => output,
            Err(error) => self.fail(format!("{error:#}")),
        }
    }

    /// Runs a command that must fail; on success panics with its output and the node's log.
    async fn run_failing(&self, command: &mut Command) -> Output {
        match clients::run_expecting_failure(command, COMMAND_TIMEOUT).await {
            Ok(output) => output,
            Err(error) => self.fail(format!("{error:#}")),
        }
    }

    /// `admin:<password>`, for the clients' `--creds`/`--user` options.
    fn admin_creds(&self) -> String {
        format!("{ADMIN}:{}", support::ADMIN_PASSWORD)
    }

    /// A management API call as the site admin (Basic credentials) that must answer `expected`;
    /// returns the JSON body.
    async fn manage(&self, method: Method, path: &str, body: Value, expected: StatusCode) -> Value {
        let res = self
            .node
            .client()
            .request(method.clone(), path)
            .json(&body)
            .send()
            .await
            .expect("management API request sent");
        let status = res.status();
        let text = res.text().await.expect("management API body");
        if status != expected {
            self.fail(format!(
                "{method} {path} {body}: {status} (expected {expected}): {text}"
            ));
        }
        serde_json::from_str(&text).unwrap_or_else(|e| self.fail(format!("{e}: {text}")))
    }

    /// Creates a user (not a site admin) with the management API.
    async fn create_user(&self, username: &str, password: &str) {
        let body = serde_json::json!({
            "username": username,
            "password": password,
            "email": format!("{username}@example.com"),
        });
        let user = self
            .manage(Method::POST, "/api/v1/users", body, StatusCode::CREATED)
            .await;
        self.check_eq(user["is_admin"].as_bool(), Some(false), "new user is_admin");
    }

    /// The status the site admin gets for `GET /v2/<repo>/manifests/<reference>`.
    async fn manifest_status(&self, repo: &str, reference: &str) -> StatusCode {
        self.node
            .client()
            .get_manifest(repo, reference, &ALL_MANIFEST_TYPES)
            .await
            .expect("GET manifest sent")
            .status()
    }

    /// Fails the test with `message` and the tail of the node's log.
    fn fail(&self, message: impl Display) -> ! {
        let log = self.node.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        panic!(
            "{message}\n--- tail of {} ---\n{tail}\n---",
            self.node.log_path().display()
        );
    }

    /// Fails the test unless `ok`.
    fn check(&self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(message());
        }
    }

    /// Fails the test unless `left == right`.
    fn check_eq<T: PartialEq + std::fmt::Debug>(&self, left: T, right: T, what: &str) {
        if left != right {
            self.fail(format!("{what}: {left:?} != {right:?}"));
        }
    }

    /// Fetches a manifest with every manifest type accepted and checks that the
    /// `Docker-Content-Digest` it is served with is the digest of its bytes.
    async fn served(&self, repo: &str, reference: &str) -> Served {
        let res = self
            .node
            .client()
            .get_manifest(repo, reference, &ALL_MANIFEST_TYPES)
            .await
            .expect("GET manifest sent");
        let status = res.status();
        let digest = support::header(&res, "docker-content-digest");
        let media_type = support::header(&res, "content-type").unwrap_or_default();
        let body = res.bytes().await.expect("manifest body").to_vec();
        if status != StatusCode::OK {
            self.fail(format!(
                "GET /v2/{repo}/manifests/{reference}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let computed = sha256_digest(&body);
        self.check_eq(
            digest.as_deref(),
            Some(computed.as_str()),
            &format!("Docker-Content-Digest of {repo}:{reference} vs sha256 of the body"),
        );
        Served {
            digest: computed,
            media_type,
            body,
        }
    }

    /// Checks that the registry serves every blob of `blobs` in `repo`, byte for byte.
    async fn check_blobs_served(&self, repo: &str, blobs: &[&Blob]) {
        let client = self.node.client();
        for blob in blobs {
            match client.get_blob_ok(repo, &blob.digest).await {
                Ok(data) => self.check(data == blob.data, || {
                    format!("blob {repo}@{} differs from the source", blob.digest)
                }),
                Err(error) => self.fail(format!("{error:#}")),
            }
        }
    }

    /// Every request the node has finished so far, in order. Its length is a mark for
    /// [`Ctx::requests_since`].
    fn request_log(&self) -> Vec<Request> {
        self.node.log().lines().filter_map(Request::parse).collect()
    }

    /// How many requests `method path` finished with `status`.
    fn requests(&self, method: &str, path: &str, status: u16) -> usize {
        self.requests_since(0, method, path, Some(status))
    }

    /// How many requests `method path` after the first `mark` finished with `status` (any status
    /// when `None`).
    fn requests_since(&self, mark: usize, method: &str, path: &str, status: Option<u16>) -> usize {
        self.request_log()
            .iter()
            .skip(mark)
            .filter(|r| r.method == method && r.path == path)
            .filter(|r| status.is_none_or(|s| r.status == s))
            .count()
    }

    /// The requests after the first `mark`, one per line, for failure messages.
    fn requests_after(&self, mark: usize) -> String {
        self.request_log()
            .iter()
            .skip(mark)
            .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Checks that the requests after `mark` fetched a token the way `how` (`"GET"` with Basic
    /// credentials, or `"POST"` with an OAuth2 form) and never the other way.
    fn check_token_requests(&self, mark: usize, how: &str, what: &str) {
        let other = if how == "GET" { "POST" } else { "GET" };
        let used = self.requests_since(mark, how, TOKEN_PATH, Some(200));
        let wrong = self.requests_since(mark, other, TOKEN_PATH, None);
        self.check(used >= 1 && wrong == 0, || {
            format!(
                "{what}: expected {how} {TOKEN_PATH} (200) and no {other}, saw {used} and \
                 {wrong}; requests:\n{}",
                self.requests_after(mark)
            )
        });
    }
}

/// A seed that differs between runs and between tests, so content pushed through the shared
/// daemons (dockerd, containerd) is never already in their stores from an earlier run.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The host's architecture as OCI platforms name it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes an OCI layout with one image tagged `v1`.
fn single_layout(dir: &Path, image: &Image) {
    image::write_oci_layout(dir, &[("v1", &image.manifest)], &image.all_blobs())
        .expect("OCI layout written");
}

/// The digest `index.json` of an OCI layout records for `tag`.
fn layout_digest(dir: &Path, tag: &str) -> String {
    let path = dir.join("index.json");
    let index: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("index.json")).expect("index JSON");
    let manifests = index["manifests"].as_array().expect("manifests array");
    manifests
        .iter()
        .find(|m| m["annotations"][REF_NAME_ANNOTATION] == tag)
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no manifest for {tag} in {}: {index}", path.display()))
        .to_owned()
}

/// Checks that an OCI layout (or a `dir:` copy, with `hex_names`) holds every blob byte for byte.
fn check_layout_blobs(dir: &Path, blobs: &[&Blob], hex_names: bool) {
    for blob in blobs {
        let path = if hex_names {
            dir.join(blob.hex())
        } else {
            dir.join("blobs").join("sha256").join(blob.hex())
        };
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("blob {} not in {}: {e}", blob.digest, dir.display()));
        assert!(
            data == blob.data,
            "{} differs from blob {}",
            path.display(),
            blob.digest
        );
    }
}

/// The first `sha256:` digest following `marker` in `text`.
fn digest_after(text: &str, marker: &str) -> Option<String> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digest: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == ':')
        .collect();
    (digest.starts_with("sha256:") && digest.len() == 71).then_some(digest)
}

fn read_digest_file(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

/// An OCI image goes to Aerugo unchanged (through a token fetched with the `--dest-creds`) and
/// comes back byte-identical.
#[tokio::test]
async fn skopeo_copies_an_oci_image_there_and_back() {
    let ctx = Ctx::new().await;
    let creds = ctx.admin_creds();
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let (src, back, digest_file) = (ctx.path("src"), ctx.path("back"), ctx.path("digest"));
    single_layout(&src, &image);
    let target = format!("docker://{}/clients/skopeo:v1", ctx.registry());

    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci:{}:v1", src.display()))
            .arg(&target),
    )
    .await;
    // containers/image: `GET /v2/` (401 + challenge), then `GET /auth/token` with Basic
    // credentials, then Bearer tokens only.
    ctx.check_token_requests(0, "GET", "skopeo copy --dest-creds");
    ctx.check(
        ctx.requests("PUT", "/v2/clients/skopeo/manifests/v1", 401) == 0,
        || {
            format!(
                "the manifest PUT was challenged; requests:\n{}",
                ctx.requests_after(0)
            )
        },
    );
    ctx.check_eq(
        read_digest_file(&digest_file).as_str(),
        image.digest(),
        "pushed digest vs source",
    );
    let served = ctx.served("clients/skopeo", "v1").await;
    ctx.check_eq(
        served.digest.as_str(),
        image.digest(),
        "served digest vs source",
    );
    ctx.check_eq(
        served.media_type.as_str(),
        OCI_MANIFEST,
        "served media type",
    );
    ctx.check(served.body == image.manifest.data, || {
        "served manifest bytes differ".into()
    });
    ctx.check_blobs_served("clients/skopeo", &image.content_blobs())
        .await;

    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--src-tls-verify=false", "--src-creds", &creds])
            .arg(&target)
            .arg(format!("oci:{}:v1", back.display())),
    )
    .await;
    ctx.check_eq(
        layout_digest(&back, "v1").as_str(),
        image.digest(),
        "pulled digest vs source",
    );
    check_layout_blobs(&back, &image.all_blobs(), false);

    let inspect = ctx
        .run(
            ctx.command("skopeo")
                .args(["inspect", "--tls-verify=false", "--creds", &creds])
                .args(["--format", "{{.Digest}}"])
                .arg(&target),
        )
        .await;
    ctx.check_eq(
        inspect.stdout.trim(),
        image.digest(),
        "skopeo inspect digest",
    );
}

/// The same image converted to Docker schema 2 on the way: the pushed digest is what comes back.
#[tokio::test]
async fn skopeo_copies_a_v2s2_image_there_and_back() {
    let ctx = Ctx::new().await;
    let creds = ctx.admin_creds();
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let (src, back, digest_file) = (ctx.path("src"), ctx.path("back"), ctx.path("digest"));
    single_layout(&src, &image);
    let target = format!("docker://{}/clients/skopeo:v1-docker", ctx.registry());

    ctx.run(
        ctx.command("skopeo")
            .args([
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &creds,
                "--format",
                "v2s2",
                "--digestfile",
            ])
            .arg(&digest_file)
            .arg(format!("oci:{}:v1", src.display()))
            .arg(&target),
    )
    .await;
    let pushed = read_digest_file(&digest_file);
    ctx.check(pushed != image.digest(), || {
        "v2s2 conversion kept the OCI digest".into()
    });
    let served = ctx.served("clients/skopeo", "v1-docker").await;
    ctx.check_eq(
        served.digest.as_str(),
        pushed.as_str(),
        "served digest vs pushed",
    );
    ctx.check_eq(
        served.media_type.as_str(),
        DOCKER_MANIFEST,
        "served media type",
    );
    let by_digest = ctx.served("clients/skopeo", &pushed).await;
    ctx.check(by_digest.body == served.body, || {
        "manifest by digest differs from by tag".into()
    });

    // `dir:` keeps the manifest as it is (an OCI layout would convert it back to OCI).
    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--src-tls-verify=false", "--src-creds", &creds])
            .arg(&target)
            .arg(format!("dir:{}", back.display())),
    )
    .await;
    let manifest = std::fs::read(back.join("manifest.json")).expect("manifest.json");
    ctx.check_eq(sha256_digest(&manifest), pushed, "pulled digest vs pushed");
    let manifest: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest"))
        .collect();
    let source_layers: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    ctx.check_eq(layers, source_layers, "v2s2 layers vs source layers");
    check_layout_blobs(&back, &image.layers.iter().collect::<Vec<_>>(), true);
}

/// A multi-platform OCI index with `--all`: the index and every child arrive unchanged.
#[tokio::test]
async fn skopeo_copies_a_multi_platform_index_with_all() {
    let ctx = Ctx::new().await;
    let creds = ctx.admin_creds();
    let seed = fresh_seed();
    let amd64 = image::image(seed, 2, LAYER_SIZE, "amd64");
    let arm64 = image::image(seed, 2, LAYER_SIZE, "arm64/v8");
    let index = image::index(&[(&amd64, "amd64"), (&arm64, "arm64/v8")]);
    let blobs: Vec<&Blob> = amd64
        .all_blobs()
        .into_iter()
        .chain(arm64.all_blobs())
        .collect();
    let (src, back, digest_file) = (ctx.path("src"), ctx.path("back"), ctx.path("digest"));
    image::write_oci_layout(&src, &[("v1", &index)], &blobs).expect("OCI layout written");
    let target = format!("docker://{}/clients/skopeo-multi:v1", ctx.registry());

    ctx.run(
        ctx.command("skopeo")
            .args([
                "copy",
                "--all",
                "--dest-tls-verify=false",
                "--dest-creds",
                &creds,
            ])
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci:{}:v1", src.display()))
            .arg(&target),
    )
    .await;
    ctx.check_eq(
        read_digest_file(&digest_file).as_str(),
        index.digest.as_str(),
        "pushed index digest",
    );
    let served = ctx.served("clients/skopeo-multi", "v1").await;
    ctx.check_eq(
        served.digest.as_str(),
        index.digest.as_str(),
        "served index digest",
    );
    ctx.check_eq(served.media_type.as_str(), OCI_INDEX, "served media type");
    for child in [&amd64, &arm64] {
        let served = ctx.served("clients/skopeo-multi", child.digest()).await;
        ctx.check(served.body == child.manifest.data, || {
            format!("child {} differs", child.digest())
        });
        ctx.check_blobs_served("clients/skopeo-multi", &child.content_blobs())
            .await;
    }

    ctx.run(
        ctx.command("skopeo")
            .args([
                "copy",
                "--all",
                "--src-tls-verify=false",
                "--src-creds",
                &creds,
            ])
            .arg(&target)
            .arg(format!("oci:{}:v1", back.display())),
    )
    .await;
    ctx.check_eq(
        layout_digest(&back, "v1").as_str(),
        index.digest.as_str(),
        "pulled index digest",
    );
    check_layout_blobs(&back, &blobs, false);
    check_layout_blobs(&back, &[&index], false);
}

/// Registry to registry between two repositories: skopeo mounts the blobs it knows are there
/// (`POST /v2/<dst>/blobs/uploads/?mount=<digest>&from=<src>` answered `201 Created`).
#[tokio::test]
async fn skopeo_copies_between_repositories_with_cross_repo_mount() {
    let ctx = Ctx::new().await;
    let creds = ctx.admin_creds();
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let src = ctx.path("src");
    single_layout(&src, &image);
    let from = format!("docker://{}/clients/mount-src:v1", ctx.registry());
    let to = format!("docker://{}/clients/mount-dst:v1", ctx.registry());

    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(&from),
    )
    .await;
    // The destination token must also grant pull on the source for the mount to happen.
    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .args(["--src-creds", &creds, "--dest-creds", &creds])
            .arg(&from)
            .arg(&to),
    )
    .await;

    let served = ctx.served("clients/mount-dst", "v1").await;
    ctx.check_eq(
        served.digest.as_str(),
        image.digest(),
        "copied digest vs source",
    );
    ctx.check_blobs_served("clients/mount-dst", &image.content_blobs())
        .await;
    let mounted = ctx.requests("POST", "/v2/clients/mount-dst/blobs/uploads/", 201);
    let uploaded: Vec<String> = ctx
        .node
        .log()
        .lines()
        .filter(|l| l.contains("path=/v2/clients/mount-dst/blobs/uploads/"))
        .map(str::to_owned)
        .collect();
    ctx.check(mounted >= image.layers.len(), || {
        format!(
            "expected a cross-repository mount (POST .../uploads/?mount=&from= -> 201) for each of \
             the {} layers, saw {mounted}; upload requests to the destination:\n{}",
            image.layers.len(),
            uploaded.join("\n")
        )
    });
}

// ---------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------

impl Ctx {
    /// A podman command with private vfs storage in the test's directory.
    fn podman(&self, args: &[&str]) -> Command {
        let storage = self.path("podman");
        std::fs::create_dir_all(storage.join("tmp")).expect("podman tmp dir");
        let mut command = self.command("podman");
        command
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .arg("--tmpdir")
            .arg(storage.join("tmp"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .env("TMPDIR", storage.join("tmp"))
            .args(args);
        command
    }

    /// `podman login` as the site admin, which must store the credentials in the test's own
    /// auth file (`REGISTRY_AUTH_FILE`) after a token exchange.
    async fn podman_login(&self) {
        let registry = self.registry();
        let mark = self.request_log().len();
        self.run(&mut self.podman(&[
            "login",
            "--tls-verify=false",
            "-u",
            ADMIN,
            "-p",
            support::ADMIN_PASSWORD,
            &registry,
        ]))
        .await;
        self.check_token_requests(mark, "GET", "podman login");
        let path = self.config.auth_file();
        let auth: Value = serde_json::from_slice(&std::fs::read(&path).expect("podman auth file"))
            .expect("podman auth file JSON");
        let stored = auth["auths"][registry.as_str()]["auth"]
            .as_str()
            .and_then(|a| BASE64.decode(a).ok())
            .map(|a| String::from_utf8_lossy(&a).into_owned());
        self.check_eq(
            stored,
            Some(self.admin_creds()),
            &format!("credentials podman login stored in {}", path.display()),
        );
    }
}

/// podman, with private vfs storage: load from an OCI layout, `podman login`, push, remove, pull
/// back.
#[tokio::test]
async fn podman_pushes_and_pulls_an_image() {
    let ctx = Ctx::new().await;
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let (src, digest_file) = (ctx.path("src"), ctx.path("digest"));
    single_layout(&src, &image);
    let podman = |args: &[&str]| ctx.podman(args);
    let name = format!("{}/clients/podman:v1", ctx.registry());

    // `podman pull oci:<dir>` names the image after the directory, which fails on the capitals
    // of temporary directory names; `podman load` of the layout as an OCI archive names it after
    // the layout's tag (`localhost/v1:latest`).
    let archive = ctx.path("layout.tar");
    ctx.run(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    )
    .await;
    let loaded = ctx
        .run(&mut podman(&["load", "-i", &archive.display().to_string()]))
        .await;
    let id = loaded
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image:"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    ctx.check(!id.is_empty(), || {
        format!(
            "no image name from `{}`:\n{}",
            loaded.command, loaded.stdout
        )
    });
    ctx.run(&mut podman(&["tag", &id, &name])).await;
    ctx.podman_login().await;
    let mark = ctx.request_log().len();
    let digest_arg = digest_file.display().to_string();
    ctx.run(&mut podman(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        &digest_arg,
        &name,
    ]))
    .await;
    ctx.check_token_requests(mark, "GET", "podman push after podman login");
    let pushed = read_digest_file(&digest_file);
    let served = ctx.served("clients/podman", "v1").await;
    ctx.check_eq(
        served.digest.as_str(),
        pushed.as_str(),
        "served digest vs podman's pushed digest",
    );

    ctx.run(&mut podman(&["rmi", "-f", &name, &id])).await;
    let left = ctx.run(&mut podman(&["images", "-q"])).await;
    ctx.check(left.stdout.trim().is_empty(), || {
        format!("images left after rmi: {}", left.stdout)
    });
    ctx.run(&mut podman(&["pull", "--tls-verify=false", &name]))
        .await;
    let inspect = ctx
        .run(&mut podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}}",
            &name,
        ]))
        .await;
    ctx.check_eq(
        inspect.stdout.trim(),
        pushed.as_str(),
        "pulled image digest vs pushed",
    );
}

// ---------------------------------------------------------------------------------------------
// anonymous access
// ---------------------------------------------------------------------------------------------

/// `text` with what differs between two repositories' error messages made equal: the name, and
/// the timestamps of containers/image's log lines.
fn normalized(text: &str, repo: &str) -> String {
    text.replace(repo, "<repo>")
        .lines()
        .map(|l| l.split_once("msg=").map_or(l, |(_, msg)| msg))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Anonymous skopeo and podman (no credentials, empty auth files) pull a repository the admin
/// made public with `PATCH /api/v1/repos/<name>`, but cannot push to it; a private repository
/// refuses them exactly like a repository that does not exist.
#[tokio::test]
async fn anonymous_clients_pull_public_repositories_only() {
    let ctx = Ctx::new().await;
    let seed = fresh_seed();
    let public = image::image(seed, 2, LAYER_SIZE, host_arch());
    let private = image::image(seed.wrapping_add(1), 2, LAYER_SIZE, host_arch());
    let client = ctx.node.client();
    for (repo, image) in [("clients/public", &public), ("clients/private", &private)] {
        client
            .push_image(repo, "v1", image)
            .await
            .unwrap_or_else(|e| ctx.fail(format!("pushing {repo}:v1 as admin: {e:#}")));
    }
    let repo = ctx
        .manage(
            Method::PATCH,
            "/api/v1/repos/clients/public",
            serde_json::json!({"visibility": "public"}),
            StatusCode::OK,
        )
        .await;
    ctx.check_eq(
        repo["visibility"].as_str(),
        Some("public"),
        "visibility after PATCH",
    );
    let registry = ctx.registry();
    let reference = |repo: &str| format!("docker://{registry}/{repo}:v1");

    // Public: skopeo and podman pull anonymously.
    let back = ctx.path("back");
    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(reference("clients/public"))
            .arg(format!("oci:{}:v1", back.display())),
    )
    .await;
    ctx.check_eq(
        layout_digest(&back, "v1").as_str(),
        public.digest(),
        "anonymously pulled digest vs source",
    );
    check_layout_blobs(&back, &public.all_blobs(), false);
    let name = format!("{registry}/clients/public:v1");
    ctx.run(&mut ctx.podman(&["pull", "--tls-verify=false", &name]))
        .await;
    let inspect = ctx
        .run(&mut ctx.podman(&["image", "inspect", "--format", "{{.Digest}}", &name]))
        .await;
    ctx.check_eq(
        inspect.stdout.trim(),
        public.digest(),
        "podman's anonymously pulled digest",
    );

    // Public is not writable: an anonymous push is refused and changes nothing.
    ctx.run_failing(
        ctx.command("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", back.display()))
            .arg(format!("docker://{registry}/clients/public:v2")),
    )
    .await;
    ctx.check_eq(
        ctx.manifest_status("clients/public", "v2").await,
        StatusCode::NOT_FOUND,
        "clients/public:v2 after an anonymous push",
    );

    // Private: refused, and indistinguishable from a missing repository.
    let inspect_anonymously = |repo: &str| {
        let mut command = ctx.command("skopeo");
        command
            .args(["inspect", "--tls-verify=false"])
            .arg(reference(repo));
        command
    };
    let refused = ctx
        .run_failing(&mut inspect_anonymously("clients/private"))
        .await;
    let missing = ctx
        .run_failing(&mut inspect_anonymously("clients/missing"))
        .await;
    ctx.check(
        refused.stderr.contains("unauthorized") || refused.stderr.contains("denied"),
        || {
            format!(
                "`{}` failed otherwise:\n{}",
                refused.command, refused.stderr
            )
        },
    );
    ctx.check_eq(
        normalized(&refused.stderr, "clients/private"),
        normalized(&missing.stderr, "clients/missing"),
        "skopeo's errors for a private and a missing repository",
    );
    ctx.check_eq(
        ctx.requests("GET", "/v2/clients/private/manifests/v1", 200),
        0,
        "anonymous manifest GETs of the private repository answered 200",
    );
    let private_name = format!("{registry}/clients/private:v1");
    let pull = ctx
        .run_failing(&mut ctx.podman(&["pull", "--tls-verify=false", &private_name]))
        .await;
    ctx.check(
        pull.stderr.contains("unauthorized") || pull.stderr.contains("denied"),
        || format!("`{}` failed otherwise:\n{}", pull.command, pull.stderr),
    );
    let images = ctx.run(&mut ctx.podman(&["images", "-q"])).await;
    ctx.check_eq(
        images.stdout.lines().count(),
        1,
        "podman images after the refused pull (only the public one)",
    );
}

// ---------------------------------------------------------------------------------------------
// docker
// ---------------------------------------------------------------------------------------------

/// The private daemons, started once per test process.
fn daemons() -> &'static Daemons {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/client-daemons.sh");
    clients::daemons(&script).unwrap_or_else(|e| panic!("{e:#}"))
}

impl Ctx {
    /// A docker CLI command talking to the private dockerd, with the test's `DOCKER_CONFIG`.
    fn docker(&self, daemons: &Daemons, args: &[&str]) -> Command {
        let mut command = self.command("docker");
        command
            .env("DOCKER_HOST", daemons.docker_host().expect("DOCKER_HOST"))
            .args(args);
        command
    }

    /// Gets `image` into dockerd as `name` (OCI layout -> docker-archive -> `docker load`).
    async fn docker_load(&self, daemons: &Daemons, image: &Image, name: &str) {
        let tag = name.rsplit(':').next().unwrap_or("latest");
        let (src, archive) = (
            self.path(&format!("src-{tag}")),
            self.path(&format!("{tag}.tar")),
        );
        single_layout(&src, image);
        self.run(
            self.command("skopeo")
                .arg("copy")
                .arg(format!("oci:{}:v1", src.display()))
                .arg(format!("docker-archive:{}:{name}", archive.display())),
        )
        .await;
        let archive = archive.display().to_string();
        self.run(&mut self.docker(daemons, &["load", "-i", &archive]))
            .await;
    }

    /// `docker login` as `user` into the test's `DOCKER_CONFIG`: dockerd fetches a token with
    /// `offline_token=true` (`GET /auth/token`, Basic credentials) and the CLI keeps only the
    /// refresh token it got (`identitytoken`), never the password. Returns that refresh token.
    async fn docker_login(&self, daemons: &Daemons, user: &str, password: &str) -> String {
        let registry = self.registry();
        let mark = self.request_log().len();
        let login = self
            .run(&mut self.docker(daemons, &["login", "-u", user, "-p", password, &registry]))
            .await;
        self.check(login.stdout.contains("Login Succeeded"), || {
            format!("`{}` printed:\n{}", login.command, login.stdout)
        });
        self.check_token_requests(mark, "GET", "docker login");
        let path = self.config.docker_config().join("config.json");
        let text = std::fs::read_to_string(&path).expect("docker config.json");
        self.check(!text.contains(password), || {
            format!(
                "docker login stored the password in {}:\n{text}",
                path.display()
            )
        });
        let config: Value = serde_json::from_str(&text).expect("docker config.json JSON");
        let entry = &config["auths"][registry.as_str()];
        let stored = entry["auth"]
            .as_str()
            .and_then(|a| BASE64.decode(a).ok())
            .map(|a| String::from_utf8_lossy(&a).into_owned());
        self.check_eq(
            stored.as_deref(),
            Some(format!("{user}:").as_str()),
            &format!(
                "`auth` docker login stored in {} (user, no password)",
                path.display()
            ),
        );
        entry["identitytoken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| {
                self.fail(format!(
                    "no identitytoken (refresh token) in {}:\n{text}",
                    path.display()
                ))
            })
            .to_owned()
    }

    /// `docker push name`, which must redeem the stored refresh token (`POST /auth/token`, no
    /// `GET`, which would mean Basic credentials); returns the pushed digest.
    async fn docker_push(&self, daemons: &Daemons, name: &str) -> String {
        let mark = self.request_log().len();
        let push = self.run(&mut self.docker(daemons, &["push", name])).await;
        self.check_token_requests(mark, "POST", &format!("docker push {name}"));
        digest_after(&push.stdout, "digest:").unwrap_or_else(|| {
            self.fail(format!(
                "no digest in `{}` output:\n{}",
                push.command, push.stdout
            ))
        })
    }
}

/// docker: `docker load` a docker-archive, `docker login`, push, remove, pull back, compare the
/// `RepoDigest`.
#[tokio::test]
async fn docker_pushes_and_pulls_an_image() {
    let ctx = Ctx::new().await;
    let daemons = daemons();
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let repo = format!("{}/clients/docker", ctx.registry());
    let name = format!("{repo}:v1");
    let docker = |args: &[&str]| ctx.docker(daemons, args);

    ctx.docker_load(daemons, &image, &name).await;
    ctx.docker_login(daemons, ADMIN, support::ADMIN_PASSWORD)
        .await;
    let pushed = ctx.docker_push(daemons, &name).await;
    let served = ctx.served("clients/docker", "v1").await;
    ctx.check_eq(
        served.digest.as_str(),
        pushed.as_str(),
        "served digest vs docker push digest",
    );
    ctx.check_eq(
        served.media_type.as_str(),
        DOCKER_MANIFEST,
        "served media type",
    );

    ctx.run(&mut docker(&["rmi", &name])).await;
    let mark = ctx.request_log().len();
    let pull = ctx.run(&mut docker(&["pull", &name])).await;
    ctx.check_token_requests(mark, "POST", "docker pull after docker login");
    ctx.check(pull.stdout.contains("Downloaded newer image"), || {
        format!(
            "`{}` did not download the image:\n{}",
            pull.command, pull.stdout
        )
    });
    ctx.check_eq(
        digest_after(&pull.stdout, "Digest:"),
        Some(pushed.clone()),
        "docker pull digest",
    );
    let inspect = ctx
        .run(&mut docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &name,
        ]))
        .await;
    let repo_digests: Vec<String> =
        serde_json::from_str(inspect.stdout.trim()).expect("RepoDigests JSON");
    ctx.check(repo_digests.contains(&format!("{repo}@{pushed}")), || {
        format!("RepoDigests {repo_digests:?} lack {repo}@{pushed}")
    });
    ctx.run(&mut docker(&["rmi", &name])).await;
}

/// docker: one `docker login`, then two pushes of different images. Each push redeems the refresh
/// token the login stored (`POST /auth/token`, `grant_type=refresh_token`): the password is neither
/// stored nor sent again, and once the stored refresh token is spoiled a third push is refused.
#[tokio::test]
async fn docker_pushes_twice_with_the_refresh_token_of_one_login() {
    let ctx = Ctx::new().await;
    let daemons = daemons();
    let seed = fresh_seed();
    let first = image::image(seed, 1, LAYER_SIZE, host_arch());
    let second = image::image(seed.wrapping_add(1), 1, LAYER_SIZE, host_arch());
    let repo = format!("{}/clients/docker-refresh", ctx.registry());
    let (v1, v2, v3) = (
        format!("{repo}:v1"),
        format!("{repo}:v2"),
        format!("{repo}:v3"),
    );
    ctx.docker_load(daemons, &first, &v1).await;
    ctx.docker_load(daemons, &second, &v2).await;

    let refresh_token = ctx
        .docker_login(daemons, ADMIN, support::ADMIN_PASSWORD)
        .await;
    let login_gets = ctx.requests_since(0, "GET", TOKEN_PATH, None);
    for (name, tag) in [(&v1, "v1"), (&v2, "v2")] {
        let pushed = ctx.docker_push(daemons, name).await;
        ctx.check_eq(
            ctx.served("clients/docker-refresh", tag).await.digest,
            pushed,
            &format!("served digest of {tag} vs docker push digest"),
        );
    }
    ctx.check_eq(
        ctx.requests_since(0, "GET", TOKEN_PATH, None),
        login_gets,
        "GET /auth/token (Basic credentials) after docker login",
    );

    // Nothing but the refresh token authenticates these pushes: spoil it and pushing stops.
    let path = ctx.config.docker_config().join("config.json");
    let text = std::fs::read_to_string(&path).expect("docker config.json");
    let last = if refresh_token.ends_with('x') {
        "y"
    } else {
        "x"
    };
    let spoiled = format!("{}{last}", &refresh_token[..refresh_token.len() - 1]);
    std::fs::write(&path, text.replace(&refresh_token, &spoiled)).expect("config.json written");
    ctx.run(&mut ctx.docker(daemons, &["tag", &v2, &v3])).await;
    let mark = ctx.request_log().len();
    let refused = ctx
        .run_failing(&mut ctx.docker(daemons, &["push", &v3]))
        .await;
    ctx.check(refused.stderr.contains("unauthorized"), || {
        format!(
            "`{}` failed otherwise:\n{}",
            refused.command, refused.stderr
        )
    });
    ctx.check(
        ctx.requests_since(mark, "POST", TOKEN_PATH, Some(401)) >= 1
            && ctx.requests_since(mark, "POST", TOKEN_PATH, Some(200)) == 0,
        || {
            format!(
                "a spoiled refresh token was not refused; requests:\n{}",
                ctx.requests_after(mark)
            )
        },
    );
    ctx.run(&mut ctx.docker(daemons, &["rmi", &v1, &v2, &v3]))
        .await;
}

/// A user without admin rights logs in with `docker login`, pushes to their own namespace and pulls
/// back, and is refused pushing into the site admin's and another user's namespace.
#[tokio::test]
async fn docker_user_pushes_to_their_own_namespace_only() {
    let ctx = Ctx::new().await;
    let daemons = daemons();
    let (alice, bob) = (("alice", "alice-password-1"), ("bob", "bob-password-1"));
    ctx.create_user(alice.0, alice.1).await;
    ctx.create_user(bob.0, bob.1).await;
    let image = image::image(fresh_seed(), 1, LAYER_SIZE, host_arch());
    let registry = ctx.registry();
    let own = format!("{registry}/alice/app:v1");
    let foreign = [
        ("admin/app", format!("{registry}/admin/app:v1")),
        ("bob/app", format!("{registry}/bob/app:v1")),
    ];
    ctx.docker_load(daemons, &image, &own).await;
    for (_, name) in &foreign {
        ctx.run(&mut ctx.docker(daemons, &["tag", &own, name]))
            .await;
    }

    ctx.docker_login(daemons, alice.0, alice.1).await;
    let pushed = ctx.docker_push(daemons, &own).await;
    ctx.check_eq(
        ctx.served("alice/app", "v1").await.digest,
        pushed.clone(),
        "served digest vs alice's push",
    );
    for (repo, name) in &foreign {
        let refused = ctx
            .run_failing(&mut ctx.docker(daemons, &["push", name]))
            .await;
        ctx.check(refused.stderr.contains("denied"), || {
            format!(
                "`{}` failed otherwise:\n{}",
                refused.command, refused.stderr
            )
        });
        ctx.check_eq(
            ctx.manifest_status(repo, "v1").await,
            StatusCode::NOT_FOUND,
            &format!("{repo}:v1 after alice's refused push"),
        );
    }

    ctx.run(&mut ctx.docker(daemons, &["rmi", &own])).await;
    let pull = ctx.run(&mut ctx.docker(daemons, &["pull", &own])).await;
    ctx.check_eq(
        digest_after(&pull.stdout, "Digest:"),
        Some(pushed),
        "alice's docker pull digest",
    );
    let mut names = vec![own.as_str()];
    names.extend(foreign.iter().map(|(_, n)| n.as_str()));
    let mut rmi = ctx.docker(daemons, &["rmi"]);
    rmi.args(&names);
    ctx.run(&mut rmi).await;
}

// ---------------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------------

/// ctr: import an OCI layout (an image and a multi-platform index), push both with `--user`,
/// remove them and their content, pull them back. containerd asks the token endpoint with a POST
/// (`grant_type=password`) first.
#[tokio::test]
async fn ctr_pushes_and_pulls_an_image_and_an_index() {
    let ctx = Ctx::new().await;
    let daemons = daemons();
    let seed = fresh_seed();
    let single = image::image(seed, 3, LAYER_SIZE, host_arch());
    let amd64 = image::image(seed.wrapping_add(1), 2, LAYER_SIZE, "amd64");
    let arm64 = image::image(seed.wrapping_add(1), 2, LAYER_SIZE, "arm64/v8");
    let index = image::index(&[(&amd64, "amd64"), (&arm64, "arm64/v8")]);
    let blobs: Vec<&Blob> = [&single, &amd64, &arm64]
        .into_iter()
        .flat_map(Image::all_blobs)
        .collect();
    let (src, archive) = (ctx.path("src"), ctx.path("layout.tar"));
    image::write_oci_layout(&src, &[("v1", &single.manifest), ("multi", &index)], &blobs)
        .expect("OCI layout written");
    ctx.run(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    )
    .await;

    let base = format!("{}/clients/ctr", ctx.registry());
    let (v1, multi) = (format!("{base}:v1"), format!("{base}:multi"));
    let address = daemons
        .containerd_address()
        .expect("CONTAINERD_ADDRESS")
        .to_owned();
    let namespace = format!("aerugo-test-{}", ctx.node.port());
    let user = ctx.admin_creds();
    let ctr = |args: &[&str]| {
        let mut command = ctx.command("ctr");
        command.args(["-a", &address, "-n", &namespace]).args(args);
        command
    };

    let archive_arg = archive.display().to_string();
    ctx.run(&mut ctr(&[
        "images",
        "import",
        "--all-platforms",
        "--base-name",
        &base,
        &archive_arg,
    ]))
    .await;
    let mark = ctx.request_log().len();
    ctx.run(&mut ctr(&[
        "images",
        "push",
        "--plain-http",
        "--user",
        &user,
        &v1,
    ]))
    .await;
    ctx.run(&mut ctr(&[
        "images",
        "push",
        "--plain-http",
        "--user",
        &user,
        &multi,
    ]))
    .await;
    ctx.check_token_requests(mark, "POST", "ctr images push --user");
    ctx.check_eq(
        ctx.served("clients/ctr", "v1").await.digest.as_str(),
        single.digest(),
        "served v1",
    );
    ctx.check_eq(
        ctx.served("clients/ctr", "multi").await.digest,
        index.digest.clone(),
        "served multi",
    );
    for child in [&amd64, &arm64] {
        ctx.served("clients/ctr", child.digest()).await;
    }

    // `--sync` waits for containerd's garbage collection, which otherwise races the prune
    // ("content digest …: not found").
    ctx.run(&mut ctr(&["images", "rm", "--sync", &v1, &multi]))
        .await;
    ctx.run(&mut ctr(&["content", "prune", "references"])).await;
    let content = ctx.run(&mut ctr(&["content", "ls", "-q"])).await;
    ctx.check(
        !content.stdout.contains(single.layers[0].digest.as_str()),
        || {
            format!(
                "layer still in the content store after prune:\n{}",
                content.stdout
            )
        },
    );
    let mark = ctx.request_log().len();
    for name in [&v1, &multi] {
        ctx.run(&mut ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--all-platforms",
            "--user",
            &user,
            name,
        ]))
        .await;
    }
    ctx.check_token_requests(mark, "POST", "ctr images pull --user");

    let list = ctx.run(&mut ctr(&["images", "ls"])).await;
    let digest_of = |name: &str| {
        list.stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(2).map(|d| (*d).to_owned()))
    };
    ctx.check_eq(
        digest_of(&v1).as_deref(),
        Some(single.digest()),
        "pulled v1 digest",
    );
    ctx.check_eq(
        digest_of(&multi).as_deref(),
        Some(index.digest.as_str()),
        "pulled multi digest",
    );
    let content = ctx.run(&mut ctr(&["content", "ls", "-q"])).await;
    for blob in &blobs {
        ctx.check(content.stdout.contains(blob.digest.as_str()), || {
            format!(
                "blob {} missing from the content store after pull",
                blob.digest
            )
        });
    }

    ctx.run(&mut ctr(&["images", "rm", "--sync", &v1, &multi]))
        .await;
    ctx.run(&mut ctr(&["content", "prune", "references"])).await;
    let mut remove_namespace = ctx.command("ctr");
    remove_namespace.args(["-a", &address, "namespaces", "rm", &namespace]);
    ctx.run(&mut remove_namespace).await;
}

// ---------------------------------------------------------------------------------------------
// oras
// ---------------------------------------------------------------------------------------------

/// `aerugo-oras` (oras-py) with credentials: artifacts with a `subject` become referrers of the
/// image, listed by the Referrers API (directly and through the client) with their `artifactType`
/// and annotations. Without credentials the push is refused.
///
/// oras-py 0.2.43 keeps its first token and, answered 401 `insufficient_scope`, retries with the
/// same token (it fetches a new one only after a 403), so a push whose first request was a pull
/// fails against a registry that, like distribution and Aerugo, answers 401. `aerugo-oras push`
/// therefore asks for a `pull,push` token up front, as the Go `oras` CLI does.
#[tokio::test]
async fn oras_pushes_artifacts_with_subject_and_lists_referrers() {
    let ctx = Ctx::new().await;
    let help = ctx
        .run(ctx.command("aerugo-oras").args(["push", "--help"]))
        .await;
    ctx.check(help.stdout.contains("--username"), || {
        format!("aerugo-oras has no --username (outdated helper): {INSTALL_HINT}")
    });
    let image = image::image(fresh_seed(), 2, LAYER_SIZE, host_arch());
    let client = ctx.node.client();
    client
        .push_image("clients/oras", "v1", &image)
        .await
        .expect("image pushed");
    let work = ctx.path("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let sbom = br#"{"spdxVersion":"SPDX-2.3","name":"demo"}"#;
    std::fs::write(work.join("sbom.json"), sbom).expect("sbom.json");
    std::fs::write(work.join("sig.txt"), b"signature\n").expect("sig.txt");
    let (sbom_type, sig_type) = ("application/spdx+json", "application/vnd.example.sig");
    let registry = ctx.registry();
    // `aerugo-oras <command> -u admin -p <password> <args>…`
    let oras = |args: &[&str]| {
        let mut command = ctx.command("aerugo-oras");
        command
            .current_dir(&work)
            .args(&args[..1])
            .args(["-u", ADMIN, "-p", support::ADMIN_PASSWORD])
            .args(&args[1..]);
        command
    };

    let subject_ref = format!("{registry}/clients/oras:v1");
    let anonymous = ctx
        .run_failing(
            ctx.command("aerugo-oras")
                .current_dir(&work)
                .args(["push", "--plain-http"])
                .arg(format!("{registry}/clients/oras:anonymous"))
                .arg("sig.txt"),
        )
        .await;
    ctx.check(anonymous.stderr.contains("UNAUTHORIZED"), || {
        format!(
            "anonymous `{}` failed otherwise:\n{}",
            anonymous.command, anonymous.stderr
        )
    });
    ctx.check_eq(
        ctx.requests("PUT", "/v2/clients/oras/manifests/anonymous", 201),
        0,
        "anonymous manifest PUTs accepted",
    );

    let mark = ctx.request_log().len();
    let push = ctx
        .run(&mut oras(&[
            "push",
            "--plain-http",
            &format!("{registry}/clients/oras:v1-sbom"),
            "sbom.json:application/spdx+json",
            "--artifact-type",
            sbom_type,
            "--subject",
            &subject_ref,
            "-a",
            "org.example.kind=sbom",
        ]))
        .await;
    let sbom_digest = digest_after(&push.stdout, "Digest:").unwrap_or_else(|| {
        ctx.fail(format!(
            "no digest from `{}`:\n{}",
            push.command, push.stdout
        ))
    });
    ctx.check_eq(
        digest_after(&push.stdout, "OCI-Subject:").as_deref(),
        Some(image.digest()),
        "OCI-Subject header of the artifact PUT (as reported by aerugo-oras)",
    );
    ctx.check_token_requests(mark, "GET", "aerugo-oras push -u");
    ctx.check_eq(
        ctx.requests_since(mark, "POST", "/v2/clients/oras/blobs/uploads/", Some(401)),
        0,
        "upload starts challenged although aerugo-oras asked for a pull,push token",
    );
    let push = ctx
        .run(&mut oras(&[
            "push",
            "--plain-http",
            &format!("{registry}/clients/oras:v1-sig"),
            "sig.txt",
            "--artifact-type",
            sig_type,
            "--subject",
            image.digest(),
        ]))
        .await;
    let sig_digest = digest_after(&push.stdout, "Digest:").unwrap_or_else(|| {
        ctx.fail(format!(
            "no digest from `{}`:\n{}",
            push.command, push.stdout
        ))
    });
    ctx.check(push.stdout.contains("OCI-Subject:"), || {
        format!("no OCI-Subject:\n{}", push.stdout)
    });

    let served = ctx.served("clients/oras", "v1-sbom").await;
    ctx.check_eq(
        served.digest.as_str(),
        sbom_digest.as_str(),
        "served artifact digest",
    );
    let manifest: Value = serde_json::from_slice(&served.body).expect("artifact JSON");
    ctx.check_eq(
        manifest["artifactType"].as_str(),
        Some(sbom_type),
        "artifactType",
    );
    ctx.check_eq(
        manifest["subject"]["digest"].as_str(),
        Some(image.digest()),
        "subject",
    );

    // The Referrers API, directly.
    let path = format!("/v2/clients/oras/referrers/{}", image.digest());
    let res = support::send(&client, Method::GET, &path).await;
    let status = res.status();
    let content_type = support::header(&res, "content-type");
    let text = res.text().await.expect("referrers body");
    ctx.check_eq(status, StatusCode::OK, &format!("GET {path} ({text})"));
    ctx.check_eq(
        content_type.as_deref(),
        Some(OCI_INDEX),
        "referrers Content-Type",
    );
    let referrers: Value = serde_json::from_str(&text).expect("referrers JSON");
    let descriptors = referrers["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ctx.check_eq(descriptors.len(), 2, &format!("referrers count ({text})"));
    let find = |digest: &str| {
        descriptors
            .iter()
            .find(|d| d["digest"] == digest)
            .cloned()
            .unwrap_or_else(|| ctx.fail(format!("{digest} not among the referrers: {text}")))
    };
    let sbom_desc = find(&sbom_digest);
    ctx.check_eq(
        sbom_desc["artifactType"].as_str(),
        Some(sbom_type),
        "sbom artifactType",
    );
    ctx.check_eq(
        sbom_desc["mediaType"].as_str(),
        Some(OCI_MANIFEST),
        "sbom mediaType",
    );
    ctx.check_eq(
        sbom_desc["size"].as_u64(),
        Some(served.body.len() as u64),
        "sbom size",
    );
    ctx.check_eq(
        sbom_desc["annotations"]["org.example.kind"].as_str(),
        Some("sbom"),
        "sbom annotations",
    );
    ctx.check_eq(
        find(&sig_digest)["artifactType"].as_str(),
        Some(sig_type),
        "sig artifactType",
    );

    // Filtered by artifactType: if the registry says it filtered, only the sbom may be left.
    let res = support::send(
        &client,
        Method::GET,
        &format!("{path}?artifactType={}", sbom_type.replace('+', "%2B")),
    )
    .await;
    let filtered = support::header(&res, "oci-filters-applied");
    let text = res.text().await.expect("referrers body");
    let body: Value = serde_json::from_str(&text).expect("referrers JSON");
    let count = body["manifests"].as_array().map_or(0, Vec::len);
    if filtered.as_deref() == Some("artifactType") {
        ctx.check_eq(count, 1, &format!("filtered referrers ({text})"));
        ctx.check_eq(
            body["manifests"][0]["digest"].as_str(),
            Some(sbom_digest.as_str()),
            "filtered",
        );
    } else {
        ctx.check_eq(
            count,
            2,
            &format!("unfiltered referrers without OCI-Filters-Applied ({text})"),
        );
    }

    // The same through the client, which uses the API (and says so on stderr).
    let listed = ctx
        .run(&mut oras(&["referrers", "--plain-http", &subject_ref]))
        .await;
    ctx.check(listed.stderr.contains("via referrers API"), || {
        format!(
            "aerugo-oras did not use the Referrers API:\n{}",
            listed.stderr
        )
    });
    let index: Value = serde_json::from_str(&listed.stdout).expect("aerugo-oras referrers JSON");
    let mut digests: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    digests.sort_unstable();
    let mut expected = vec![sbom_digest.as_str(), sig_digest.as_str()];
    expected.sort_unstable();
    ctx.check_eq(digests, expected, "aerugo-oras referrers");
    let listed = ctx
        .run(&mut oras(&[
            "referrers",
            "--plain-http",
            &format!("{registry}/clients/oras@{}", image.digest()),
            "--artifact-type",
            sig_type,
        ]))
        .await;
    let index: Value = serde_json::from_str(&listed.stdout).expect("aerugo-oras referrers JSON");
    ctx.check_eq(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "filtered by the client",
    );
    ctx.check_eq(
        index["manifests"][0]["digest"].as_str(),
        Some(sig_digest.as_str()),
        "sig only",
    );

    // No referrers tag-schema fallback was written, and the payload comes back.
    let tags = ctx
        .run(
            ctx.command("skopeo")
                .args([
                    "list-tags",
                    "--tls-verify=false",
                    "--creds",
                    &ctx.admin_creds(),
                ])
                .arg(format!("docker://{registry}/clients/oras")),
        )
        .await;
    ctx.check(!tags.stdout.contains("sha256-"), || {
        format!("fallback tag present:\n{}", tags.stdout)
    });
    let out = ctx.path("out");
    ctx.run(&mut oras(&[
        "pull",
        "--plain-http",
        &format!("{registry}/clients/oras:v1-sbom"),
        "-o",
        &out.display().to_string(),
    ]))
    .await;
    let pulled = std::fs::read(out.join("sbom.json")).expect("pulled sbom.json");
    ctx.check(pulled == sbom, || "pulled sbom.json differs".into());
}
