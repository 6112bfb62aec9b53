//! `aerugo-bench`: a load generator that measures any OCI registry through its HTTP API.
//!
//! It speaks only the Distribution API (with Docker token auth), so the same workloads run
//! unchanged against Aerugo, CNCF distribution or anything else, and it never links the
//! `aerugo` crate. A static-file server (nginx) can be given as a same-run ceiling: it is
//! measured with the very same HTTP client, so the ratio says how close a registry comes to
//! "serving bytes from memory".
//!
//! How a run is organised:
//! - Every target gets the same fixtures (a small base image, a 256 MiB blob, repositories
//!   with many tags, many repositories), pushed through the API.
//! - Workloads run one after the other. Inside a workload the targets alternate
//!   (A, B, A, B, ...) for `--repeats` rounds, so slow drifts of a shared 2-core machine hit
//!   every target alike. The reported run of a target is the **median** run by the
//!   workload's main metric; peak RSS is the maximum over all its runs.
//! - Given a server PID, each run also records the CPU time the server spent (utime + stime
//!   from `/proc/PID/stat`) and its peak RSS (`VmHWM`, reset before the run through
//!   `/proc/PID/clear_refs` when allowed).
//!
//! Invariants: every loop is bounded in count and in time; only loopback addresses are ever
//! contacted (registry URLs, `Location` headers and token realms alike); the 256 MiB blob is
//! held in memory at most once.

mod cli;
mod data;
mod http;
mod procfs;
mod prom;
mod report;
mod stats;
mod workloads;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use self::cli::Command;

/// Runs the `aerugo-bench` command line (`args` without the program name) and returns the
/// process exit code.
pub async fn main(args: Vec<String>) -> ExitCode {
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aerugo-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    match cli::parse(args)? {
        Command::Help => {
            print!("{}", cli::USAGE);
            Ok(())
        }
        Command::FreePorts(n) => {
            for port in free_ports(n)? {
                println!("{port}");
            }
            Ok(())
        }
        Command::Wait { url, timeout } => wait_for(&url, timeout).await,
        Command::Sha256 { mib } => {
            println!("{:.1}", sha256_rate(mib));
            Ok(())
        }
        Command::StaticFiles {
            dir,
            files,
            blob_mib,
        } => data::write_static_files(&dir, files, blob_mib),
        Command::Run(options) => {
            let results = workloads::run_all(&options).await?;
            report::write(&options, &results)
        }
    }
}

/// Finds `n` distinct free TCP ports on 127.0.0.1 by binding them all at once, then releasing
/// them. Another process may take one before the caller does; callers retry on failure.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    anyhow::ensure!(n <= 64, "at most 64 ports at once");
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Hashes `mib` MiB of pseudo-random bytes on this thread and returns the rate in MB/s.
fn sha256_rate(mib: u64) -> f64 {
    use sha2::Digest as _;
    // A 16 MiB buffer hashed repeatedly: large enough to leave the caches, small enough to keep
    // memory out of the measurement.
    let piece = data::large_blob(42, 16 * 1024 * 1024).data;
    let rounds = mib.div_ceil(16);
    let start = std::time::Instant::now();
    let mut hasher = sha2::Sha256::new();
    for _ in 0..rounds {
        hasher.update(&piece);
    }
    std::hint::black_box(hasher.finalize());
    (rounds * 16 * 1024 * 1024) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Waits until `url` (on a loopback address) answers any HTTP status, for at most `timeout`.
async fn wait_for(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let url = http::loopback_url(url)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match client.get(url.clone()).send().await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("{url} did not answer within {}s: {e}", timeout.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
