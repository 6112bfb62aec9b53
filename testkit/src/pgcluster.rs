//! A private PostgreSQL cluster for fault tests: created with `initdb` in a temporary directory,
//! served by `pg_ctl` on a random loopback port, stopped and started at will, removed on drop.
//!
//! The binaries come from the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout), or
//! from `AERUGO_TEST_PG_BIN`. `initdb` refuses to run as root, so when the tests run as root every
//! PostgreSQL command runs as the `postgres` user (`runuser -u postgres --`) and the directory is
//! handed to that user. Authentication is `trust` for the `postgres` user, as on the shared server.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::process::Command;

/// Overrides where `initdb` and `pg_ctl` are looked up.
pub const PG_BIN_VAR: &str = "AERUGO_TEST_PG_BIN";

/// A PostgreSQL cluster owned by one test.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    // Declared last so the server is stopped (in `Drop`) before the directory goes.
    dir: TempDir,
}

/// The directory holding `initdb` and `pg_ctl`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var(PG_BIN_VAR) {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "no PostgreSQL server binaries under {} (install the `postgresql` package, \
                 or set {PG_BIN_VAR})",
                root.display()
            )
        })?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .with_context(|| format!("no initdb under {}/<version>/bin", root.display()))
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

impl PgCluster {
    /// Creates and starts a cluster.
    pub async fn start_new() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("aerugo-pg-")
            .tempdir()
            .context("creating the cluster directory")?;
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .context("looking up the postgres user")?
                .context("running as root needs a `postgres` user to run initdb as")?;
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .context("handing the cluster directory to the postgres user")?;
        }
        let cluster = Self {
            bin,
            port: free_port()?,
            as_postgres,
            dir,
        };
        let data = cluster.data_dir();
        cluster
            .run(
                "initdb",
                &[
                    "-D",
                    data.to_str().context("non-UTF-8 temp path")?,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )
            .await?;
        cluster.start().await?;
        Ok(cluster)
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub async fn start(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().context("non-UTF-8 temp path")?,
                "-l",
                log.to_str().context("non-UTF-8 temp path")?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await
        .with_context(|| format!("starting the cluster; its log:\n{}", self.log()))
    }

    /// Stops the server (fast shutdown: open sessions are terminated) and waits until it is down.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().context("non-UTF-8 temp path")?,
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
        .await
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    async fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {tool} from {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Best effort and synchronous: the server must not outlive its directory.
        let data = self.data_dir();
        let exe = self.bin.join("pg_ctl");
        let mut c = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        let _ = c
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
