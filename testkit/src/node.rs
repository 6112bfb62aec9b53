//! Starting and controlling Aerugo server processes for tests.
//!
//! A [`Node`] owns one `aerugo serve` child process, its loopback port and its
//! data directory (a temporary directory unless the test supplies one). The
//! process is configured only through `AERUGO_*` environment variables, its
//! stdout and stderr are appended to `<data dir>/node.log`, and a node counts
//! as started only once `GET /readyz` answers `200 OK`.
//!
//! Invariants:
//! - While `Node::child` is `Some`, the process has not been reaped yet, so its
//!   pid cannot have been reused and signalling it is safe.
//! - The port and data directory never change over a node's life, so a
//!   restarted node keeps its URL and its state.
//! - Dropping a node sends `SIGKILL` to a process that is still running; the
//!   Tokio runtime reaps it afterwards.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::client::RegistryClient;

/// How long a node may take to answer `GET /readyz` with `200 OK`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(50);
/// The timeout of a single readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Node::stop`] waits after `SIGTERM` before resorting to `SIGKILL`.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports [`Node::spawn`] tries when the chosen one turns out taken.
const PORT_ATTEMPTS: usize = 5;
/// How many lines of `node.log` error messages include.
const LOG_TAIL_LINES: usize = 60;

/// How to start a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The `aerugo` executable; integration tests of the `aerugo` crate get it
    /// from `env!("CARGO_BIN_EXE_aerugo")`.
    pub binary: PathBuf,
    /// Extra environment variables, applied after (and so overriding) the
    /// defaults the node sets. Overriding `AERUGO_SERVER__LISTEN_ADDRESS` is not
    /// supported: readiness is polled on the port the node chose.
    pub env: Vec<(String, String)>,
    /// The data directory; a fresh temporary directory (deleted with the
    /// node) when `None`. It is created if missing.
    pub data_dir: Option<PathBuf>,
    /// Count the node as started once `GET /healthz` answers (the listener is up), without
    /// waiting for readiness: for tests of a node whose database is not there yet.
    pub live_only: bool,
}

impl NodeOptions {
    /// Options for running `binary` with default settings.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            ..Self::default()
        }
    }

    /// Adds an environment variable, overriding any default of the same name.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Counts the node as started once it is live, not ready (see [`NodeOptions::live_only`]).
    #[must_use]
    pub fn live_only(mut self) -> Self {
        self.live_only = true;
        self
    }

    /// Uses `dir` as the data directory instead of a temporary one, for
    /// example to start a second node on the state a first one left behind.
    #[must_use]
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
}

/// A running (or stopped) Aerugo server process.
#[derive(Debug)]
pub struct Node {
    binary: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
    pid: u32,
    last_status: Option<ExitStatus>,
    probe: reqwest::Client,
    live_only: bool,
    // Declared last so that the directory outlives everything else in drop
    // order; `None` when the caller supplied the directory.
    _temp_dir: Option<TempDir>,
}

/// Why a start attempt failed.
enum StartError {
    /// The process exited early and its port is (or was) in use by someone
    /// else, so another port may work.
    PortTaken(anyhow::Error),
    /// Any other failure.
    Other(anyhow::Error),
}

impl From<StartError> for anyhow::Error {
    fn from(error: StartError) -> Self {
        match error {
            StartError::PortTaken(error) | StartError::Other(error) => error,
        }
    }
}

impl Node {
    /// Starts `aerugo serve` on a free loopback port and waits until it is
    /// ready.
    ///
    /// The process gets `AERUGO_SERVER__LISTEN_ADDRESS`,
    /// `AERUGO_SERVER__PUBLIC_URL`, `AERUGO_DATABASE__URL` (`SQLite` in the data
    /// directory) and `AERUGO_STORAGE__ROOT` (`<data dir>/blobs`), then
    /// `opts.env`. If the process exits early because another process grabbed
    /// the port in the meantime, a new port is tried. Errors include the tail
    /// of `node.log`.
    pub async fn spawn(opts: NodeOptions) -> anyhow::Result<Self> {
        let (temp_dir, data_dir) = match opts.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("aerugo-node-")
                    .tempdir()
                    .context("creating a temporary data directory")?;
                let path = temp.path().to_owned();
                (Some(temp), path)
            }
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .context("building the readiness probe client")?;

        let mut node = Self {
            binary: opts.binary,
            env: opts.env,
            port: 0,
            data_dir,
            child: None,
            pid: 0,
            last_status: None,
            probe,
            live_only: opts.live_only,
            _temp_dir: temp_dir,
        };
        let mut attempt = 1;
        loop {
            node.port = free_port()?;
            match node.start().await {
                Ok(()) => return Ok(node),
                // Another process took the port between our probe and the
                // server's bind; pick a new one.
                Err(StartError::PortTaken(_)) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The port the node listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (database, blobs and `node.log`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The path of the log file that collects the process's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("node.log")
    }

    /// Everything the node has logged so far, across restarts; empty if the
    /// log cannot be read.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The pid of the most recently started process (which may have exited).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A [`RegistryClient`] for this node.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(self.url())
    }

    /// Whether the process is still running; reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.child = None;
                self.last_status = Some(status);
                false
            }
            // The status cannot be collected, which only happens when the
            // process is gone; treat it as exited.
            Err(_) => {
                self.child = None;
                false
            }
        }
    }

    /// Kills the process with `SIGKILL`, as a crash or power loss would, and
    /// reaps it. Returns its exit status (that of the earlier exit if it had
    /// already exited on its own).
    pub async fn kill_hard(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return self.last_status.context("the node was never started");
        };
        child
            .kill()
            .await
            .with_context(|| format!("killing node process {}", self.pid))?;
        let status = child
            .wait()
            .await
            .with_context(|| format!("reaping node process {}", self.pid))?;
        self.last_status = Some(status);
        Ok(status)
    }

    /// Stops the process gracefully: `SIGTERM`, then up to 10 s for it to
    /// exit, then `SIGKILL`. Returns its exit status (that of the earlier exit
    /// if it had already exited on its own).
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return self.last_status.context("the node was never started");
        };
        // While the child is unreaped its pid stays valid, so this cannot hit
        // an unrelated process.
        let pid = Pid::from_raw(i32::try_from(self.pid).context("pid out of range")?);
        kill(pid, Signal::SIGTERM)
            .with_context(|| format!("sending SIGTERM to node process {pid}"))?;
        match timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => {
                let status = status.with_context(|| format!("waiting for node process {pid}"))?;
                self.child = None;
                self.last_status = Some(status);
                Ok(status)
            }
            Err(_elapsed) => self.kill_hard().await,
        }
    }

    /// Starts the node again with the same binary, port, data directory and
    /// environment, and waits until it is ready. A node that is still running
    /// is stopped gracefully first.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop().await?;
        }
        self.start().await.map_err(anyhow::Error::from)
    }

    /// Starts the process on `self.port` and waits for readiness.
    async fn start(&mut self) -> Result<(), StartError> {
        let log_path = self.log_path();
        let log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let (stdout, stderr) = self.open_log().map_err(StartError::Other)?;

        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .envs(self.default_env())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("executing {}", self.binary.display()))
            .map_err(StartError::Other)?;
        self.pid = child
            .id()
            .context("a freshly spawned process has no pid")
            .map_err(StartError::Other)?;
        self.child = Some(child);
        self.last_status = None;

        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(error) => {
                let tail = log_tail(&log_path, log_offset);
                let error = error.context(format!(
                    "node (pid {}, port {}) failed to start; tail of {}:\n{tail}",
                    self.pid,
                    self.port,
                    log_path.display()
                ));
                // The process exited on its own if `is_running` is false;
                // otherwise it timed out and must not linger.
                if self.is_running() {
                    // Killing is best effort: the start error matters more.
                    let _ = self.kill_hard().await;
                    return Err(StartError::Other(error));
                }
                if port_taken(self.port, &log_tail(&log_path, log_offset)) {
                    Err(StartError::PortTaken(error))
                } else {
                    Err(StartError::Other(error))
                }
            }
        }
    }

    /// Opens `node.log` for appending (once for stdout, once for stderr) and
    /// writes a banner for this start.
    fn open_log(&self) -> anyhow::Result<(File, File)> {
        let path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(
            log,
            "=== aerugo-testkit: starting {} serve on {} ===",
            self.binary.display(),
            self.addr()
        )?;
        let stderr = log.try_clone()?;
        Ok((log, stderr))
    }

    /// The environment every node gets before `NodeOptions::env`.
    fn default_env(&self) -> [(&'static str, String); 5] {
        let dir = self.data_dir.display();
        [
            ("AERUGO_SERVER__LISTEN_ADDRESS", self.addr().to_string()),
            ("AERUGO_SERVER__PUBLIC_URL", self.url()),
            ("AERUGO_DATABASE__URL", format!("sqlite://{dir}/aerugo.db")),
            ("AERUGO_STORAGE__ROOT", format!("{dir}/blobs")),
            (
                "AERUGO_AUTH__SIGNING_KEY_FILE",
                format!("{dir}/token-signing-key.pem"),
            ),
        ]
    }

    /// Polls `GET /readyz` until it answers `200 OK`, the process exits or the
    /// timeout passes.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let path = if self.live_only {
            "/healthz"
        } else {
            "/readyz"
        };
        self.wait_for(path, READY_TIMEOUT).await
    }

    /// Polls `GET /readyz` until it answers `200 OK` (within `limit`), e.g. after the node's
    /// database came back.
    pub async fn wait_until_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.wait_for("/readyz", limit).await
    }

    async fn wait_for(&mut self, path: &str, limit: Duration) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.url());
        let deadline = Instant::now() + limit;
        loop {
            if !self.is_running() {
                let status = self
                    .last_status
                    .map_or_else(|| "an unknown status".to_owned(), |s| s.to_string());
                bail!("the process exited with {status} before becoming ready");
            }
            let probe = match self.probe.get(&url).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(response) => format!("GET {path} answered {}", response.status()),
                Err(error) => format!("GET {path} failed: {error}"),
            };
            if Instant::now() >= deadline {
                return Err(anyhow!("not ready after {limit:?}; last probe: {probe}"));
            }
            sleep(READY_POLL).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Best effort: the process may be exiting already. Tokio reaps it
            // in the background because `kill_on_drop` is set.
            let _ = child.start_kill();
        }
    }
}

/// Finds a loopback port that is free right now by binding port 0.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether a start failure looks like it was caused by the port being taken:
/// the log says so, or the port cannot be bound now.
fn port_taken(port: u16, log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use")
        || log.contains("addrinuse")
        || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err()
}

/// The last [`LOG_TAIL_LINES`] lines of the log written since `offset`.
fn log_tail(path: &Path, offset: u64) -> String {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) => return format!("<cannot read {}: {error}>", path.display()),
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
