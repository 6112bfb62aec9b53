//! Helpers for driving real container clients (`skopeo`, `podman`, `docker`,
//! `ctr`, `aerugo-oras`) against a node.
//!
//! - [`require`] finds a client on `PATH` and otherwise fails with a message
//!   that says how to install it (tests must fail, not skip, when a client is
//!   missing).
//! - [`run`] runs one command with a timeout, capturing stdout and stderr, and
//!   fails with the full command line, its environment overrides, its exit
//!   status and its output when it does not succeed; [`run_expecting_failure`]
//!   is its mirror image for commands that must be refused.
//! - [`daemons`] starts the private `dockerd` and `containerd` of
//!   `scripts/client-daemons.sh` once per process (tests run in parallel
//!   threads) and returns the environment that points clients at them. The
//!   daemons are left running; CI stops them with `client-daemons.sh stop`.
//! - [`ClientConfig`] is a temporary directory holding an empty Docker config
//!   and an empty containers auth file, so no client sees the user's logins.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tempfile::TempDir;
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

/// The default time limit for one client command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What to do when a client or daemon is missing.
pub const INSTALL_HINT: &str = "run `scripts/install-clients.sh` (as root) to install the real clients the interop tests drive";

/// Finds `program` on `PATH`, failing with [`INSTALL_HINT`] when it is absent.
pub fn require(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| anyhow!("client `{program}` not found on PATH: {INSTALL_HINT}"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The captured result of a successful command.
#[derive(Debug, Clone)]
pub struct Output {
    /// How the command was run, for messages.
    pub command: String,
    /// Everything the command wrote to stdout, lossily decoded.
    pub stdout: String,
    /// Everything the command wrote to stderr, lossily decoded.
    pub stderr: String,
}

/// Renders `command` as a shell-like line, with the environment variables it
/// sets and its working directory.
pub fn describe(command: &Command) -> String {
    let std = command.as_std();
    let mut line = String::new();
    if let Some(dir) = std.get_current_dir() {
        let _ = write!(line, "(cd {}) ", dir.display());
    }
    for (key, value) in std.get_envs() {
        match value {
            Some(value) => {
                let _ = write!(line, "{}={} ", quote(key), quote(value));
            }
            None => {
                let _ = write!(line, "-u {} ", quote(key));
            }
        }
    }
    line.push_str(&quote(std.get_program()));
    for arg in std.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `command` to completion within `limit`, with stdin closed and stdout
/// and stderr captured.
///
/// Fails (with the command line, exit status or timeout, stdout and stderr)
/// when the program cannot be started, exits unsuccessfully or runs too long;
/// in the last case it is killed.
pub async fn run(command: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let line = describe(command);
    let (status, stdout, stderr) = run_raw(command, limit)
        .await
        .with_context(|| format!("running `{line}`"))?;
    match status {
        Some(status) if status.success() => Ok(Output {
            command: line,
            stdout,
            stderr,
        }),
        Some(status) => bail!(
            "`{line}` failed ({status})\n{}",
            render_output(&stdout, &stderr)
        ),
        None => bail!(
            "`{line}` did not finish within {limit:?} and was killed\n{}",
            render_output(&stdout, &stderr)
        ),
    }
}

/// Runs `command` like [`run`] but expects it to fail: returns its output when it exits
/// unsuccessfully, and fails (with the command line and its output) when it succeeds, cannot be
/// started or runs longer than `limit`.
pub async fn run_expecting_failure(
    command: &mut Command,
    limit: Duration,
) -> anyhow::Result<Output> {
    let line = describe(command);
    let (status, stdout, stderr) = run_raw(command, limit)
        .await
        .with_context(|| format!("running `{line}`"))?;
    match status {
        Some(status) if status.success() => bail!(
            "`{line}` succeeded but was expected to fail\n{}",
            render_output(&stdout, &stderr)
        ),
        Some(_) => Ok(Output {
            command: line,
            stdout,
            stderr,
        }),
        None => bail!(
            "`{line}` did not finish within {limit:?} and was killed\n{}",
            render_output(&stdout, &stderr)
        ),
    }
}

/// Formats captured output for an error message.
fn render_output(stdout: &str, stderr: &str) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
        stdout.trim_end(),
        stderr.trim_end()
    )
}

/// Runs the command; `None` as status means it timed out and was killed.
async fn run_raw(
    command: &mut Command,
    limit: Duration,
) -> anyhow::Result<(Option<ExitStatus>, String, String)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = child.stdout.take().context("stdout is piped")?;
    let mut err = child.stderr.take().context("stderr is piped")?;
    // Read both pipes on their own tasks so a chatty child never blocks on a
    // full pipe, and so whatever it wrote before a timeout is kept.
    let out_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf).await;
        buf
    });
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf).await;
        buf
    });
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_elapsed) => {
            let _ = child.kill().await;
            None
        }
    };
    // A grandchild that inherited the pipes may keep them open; do not wait
    // for it forever.
    let collect = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(buf)) => String::from_utf8_lossy(&buf).into_owned(),
            _ => "<output not collected: pipe still open>".to_owned(),
        }
    };
    let stdout = collect(out_task).await;
    let stderr = collect(err_task).await;
    Ok((status, stdout, stderr))
}

/// A temporary client configuration with no credentials: `docker/config.json`
/// (for `DOCKER_CONFIG`) and `auth.json` (for `REGISTRY_AUTH_FILE`), both
/// `{"auths":{}}`.
#[derive(Debug)]
pub struct ClientConfig {
    dir: TempDir,
}

impl ClientConfig {
    /// Creates the directory and the empty configuration files.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("aerugo-client-")
            .tempdir()
            .context("creating a client config directory")?;
        let docker = dir.path().join("docker");
        std::fs::create_dir_all(&docker)?;
        std::fs::write(docker.join("config.json"), br#"{"auths":{}}"#)?;
        std::fs::write(dir.path().join("auth.json"), br#"{"auths":{}}"#)?;
        Ok(Self { dir })
    }

    /// The directory, which tests may also use for other scratch files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The value for `DOCKER_CONFIG`.
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// The value for `REGISTRY_AUTH_FILE`.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.path().join("auth.json")
    }

    /// Environment variables that keep a client away from the user's logins
    /// and from any proxy.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "DOCKER_CONFIG".to_owned(),
                self.docker_config().display().to_string(),
            ),
            (
                "REGISTRY_AUTH_FILE".to_owned(),
                self.auth_file().display().to_string(),
            ),
            ("NO_PROXY".to_owned(), "127.0.0.1,localhost".to_owned()),
            ("no_proxy".to_owned(), "127.0.0.1,localhost".to_owned()),
        ]
    }
}

/// Where the private daemons of `client-daemons.sh` listen.
#[derive(Debug, Clone)]
pub struct Daemons {
    /// Every `export` the script printed, in order.
    pub env: Vec<(String, String)>,
}

impl Daemons {
    /// The value of one exported variable.
    pub fn var(&self, name: &str) -> anyhow::Result<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .with_context(|| format!("client-daemons.sh did not export {name}: {:?}", self.env))
    }

    /// `DOCKER_HOST`, for example `unix:///tmp/aerugo-clients/docker/docker.sock`.
    pub fn docker_host(&self) -> anyhow::Result<&str> {
        self.var("DOCKER_HOST")
    }

    /// `CONTAINERD_ADDRESS`, the private containerd's socket.
    pub fn containerd_address(&self) -> anyhow::Result<&str> {
        self.var("CONTAINERD_ADDRESS")
    }
}

/// Starts the private `dockerd` and `containerd` with `script start` (the
/// repository's `scripts/client-daemons.sh`) once per process and returns
/// their environment.
///
/// Concurrent callers wait for the first one; a failure is remembered, so every
/// later caller fails the same way without retrying. Across processes the start
/// is serialized with a lock file next to the daemons' directory. The daemons
/// keep running afterwards.
pub fn daemons(script: &Path) -> anyhow::Result<&'static Daemons> {
    static DAEMONS: OnceLock<Result<Daemons, String>> = OnceLock::new();
    DAEMONS
        .get_or_init(|| start_daemons(script).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("starting the client daemons failed: {e}"))
}

fn start_daemons(script: &Path) -> anyhow::Result<Daemons> {
    for program in ["dockerd", "docker", "containerd", "ctr"] {
        require(program)?;
    }
    let base = std::env::var_os("AERUGO_CLIENTS_DIR")
        .map_or_else(|| PathBuf::from("/tmp/aerugo-clients"), PathBuf::from);
    let mut lock_path = base.into_os_string();
    lock_path.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", PathBuf::from(&lock_path).display()))?;
    lock.lock()
        .context("locking the client daemons lock file")?;

    let mut command = std::process::Command::new("bash");
    command.arg(script).arg("start").stdin(Stdio::null());
    let output = command
        .output()
        .with_context(|| format!("running bash {} start", script.display()))?;
    drop(lock);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "`bash {} start` failed ({}); {INSTALL_HINT} if a daemon is missing\n{}",
            script.display(),
            output.status,
            render_output(&stdout, &stderr)
        );
    }
    let env: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect();
    let daemons = Daemons { env };
    daemons.docker_host()?;
    daemons.containerd_address()?;
    Ok(daemons)
}
