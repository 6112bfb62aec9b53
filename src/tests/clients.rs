//! Real-client end-to-end tests: `skopeo`, `podman`, `docker` (private dockerd), containerd's `ctr`
//! (private containerd) and `aerugo-oras` push to and pull from an Aerugo node over plain HTTP,
//! and the digests they report must match the source images and what the registry serves.
//!
//! The clients come from `scripts/install-clients.sh`; a missing client fails the test with a
//! message saying so. The daemons are started once per test process by
//! `scripts/client-daemons.sh start` and left running (CI stops them). Every client gets an empty
//! Docker config and auth file (no logins) and keeps its storage in a temporary directory, except
//! the daemons' stores, which are shared: tests there use image content unique to the run and
//! names that include the node's port, and remove their images at the end.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aerugo_testkit::clients::{self, COMMAND_TIMEOUT, ClientConfig, Daemons, Output};
use aerugo_testkit::image::{
    self, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, REF_NAME_ANNOTATION,
    sha256_digest,
};
use aerugo_testkit::{Blob, Image, Node};
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

/// One test's world: a fresh node and a temporary directory with an empty client configuration.
struct Ctx {
    node: Node,
    config: ClientConfig,
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

    /// Lines of the node's request log for `method path` that finished with `status`.
    fn requests(&self, method: &str, path: &str, status: u16) -> usize {
        let needle = format!("method={method} path={path} ");
        let status = format!("status={status} ");
        self.node
            .log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains(&status))
            .count()
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

/// An OCI image goes to Aerugo unchanged and comes back byte-identical.
#[tokio::test]
async fn skopeo_copies_an_oci_image_there_and_back() {
    let ctx = Ctx::new().await;
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let (src, back, digest_file) = (ctx.path("src"), ctx.path("back"), ctx.path("digest"));
    single_layout(&src, &image);
    let target = format!("docker://{}/clients/skopeo:v1", ctx.registry());

    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .arg(format!("oci:{}:v1", src.display()))
            .arg(&target),
    )
    .await;
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
            .args(["copy", "--src-tls-verify=false"])
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
                .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
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
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let (src, back, digest_file) = (ctx.path("src"), ctx.path("back"), ctx.path("digest"));
    single_layout(&src, &image);
    let target = format!("docker://{}/clients/skopeo:v1-docker", ctx.registry());

    ctx.run(
        ctx.command("skopeo")
            .args([
                "copy",
                "--dest-tls-verify=false",
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
            .args(["copy", "--src-tls-verify=false"])
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
            .args(["copy", "--all", "--dest-tls-verify=false", "--digestfile"])
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
            .args(["copy", "--all", "--src-tls-verify=false"])
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
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let src = ctx.path("src");
    single_layout(&src, &image);
    let from = format!("docker://{}/clients/mount-src:v1", ctx.registry());
    let to = format!("docker://{}/clients/mount-dst:v1", ctx.registry());

    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(&from),
    )
    .await;
    ctx.run(
        ctx.command("skopeo")
            .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
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

/// podman, with private vfs storage: load from an OCI layout, push, remove, pull back.
#[tokio::test]
async fn podman_pushes_and_pulls_an_image() {
    let ctx = Ctx::new().await;
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let (src, digest_file) = (ctx.path("src"), ctx.path("digest"));
    single_layout(&src, &image);
    let storage = ctx.path("podman");
    std::fs::create_dir_all(storage.join("tmp")).expect("podman tmp dir");
    let podman = |args: &[&str]| {
        let mut command = ctx.command("podman");
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
    };
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
    let digest_arg = digest_file.display().to_string();
    ctx.run(&mut podman(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        &digest_arg,
        &name,
    ]))
    .await;
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
// docker
// ---------------------------------------------------------------------------------------------

/// The private daemons, started once per test process.
fn daemons() -> &'static Daemons {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/client-daemons.sh");
    clients::daemons(&script).unwrap_or_else(|e| panic!("{e:#}"))
}

/// docker: `docker load` a docker-archive, push, remove, pull back, compare the `RepoDigest`.
#[tokio::test]
async fn docker_pushes_and_pulls_an_image() {
    let ctx = Ctx::new().await;
    let daemons = daemons();
    let image = image::image(fresh_seed(), 3, LAYER_SIZE, host_arch());
    let (src, archive) = (ctx.path("src"), ctx.path("image.tar"));
    single_layout(&src, &image);
    let repo = format!("{}/clients/docker", ctx.registry());
    let name = format!("{repo}:v1");
    let docker = |args: &[&str]| {
        let mut command = ctx.command("docker");
        command
            .env("DOCKER_HOST", daemons.docker_host().expect("DOCKER_HOST"))
            .args(args);
        command
    };

    ctx.run(
        ctx.command("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker-archive:{}:{name}", archive.display())),
    )
    .await;
    ctx.run(&mut docker(&["load", "-i", &archive.display().to_string()]))
        .await;
    let push = ctx.run(&mut docker(&["push", &name])).await;
    let pushed = digest_after(&push.stdout, "digest:").unwrap_or_else(|| {
        ctx.fail(format!(
            "no digest in `{}` output:\n{}",
            push.command, push.stdout
        ))
    });
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
    let pull = ctx.run(&mut docker(&["pull", &name])).await;
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

// ---------------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------------

/// ctr: import an OCI layout (an image and a multi-platform index), push both, remove them and
/// their content, pull them back.
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
    ctx.run(&mut ctr(&["images", "push", "--plain-http", &v1]))
        .await;
    ctx.run(&mut ctr(&["images", "push", "--plain-http", &multi]))
        .await;
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

    ctx.run(&mut ctr(&["images", "rm", &v1, &multi])).await;
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
    ctx.run(&mut ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--all-platforms",
        &v1,
    ]))
    .await;
    ctx.run(&mut ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--all-platforms",
        &multi,
    ]))
    .await;

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

    ctx.run(&mut ctr(&["images", "rm", &v1, &multi])).await;
    ctx.run(&mut ctr(&["content", "prune", "references"])).await;
    let mut remove_namespace = ctx.command("ctr");
    remove_namespace.args(["-a", &address, "namespaces", "rm", &namespace]);
    ctx.run(&mut remove_namespace).await;
}

// ---------------------------------------------------------------------------------------------
// oras
// ---------------------------------------------------------------------------------------------

/// `aerugo-oras`: artifacts with a `subject` become referrers of the image, listed by the
/// Referrers API (directly and through the client) with their `artifactType` and annotations.
#[tokio::test]
async fn oras_pushes_artifacts_with_subject_and_lists_referrers() {
    let ctx = Ctx::new().await;
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
    let oras = |args: &[&str]| {
        let mut command = ctx.command("aerugo-oras");
        command.current_dir(&work).args(args);
        command
    };

    let subject_ref = format!("{registry}/clients/oras:v1");
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
                .args(["list-tags", "--tls-verify=false"])
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
