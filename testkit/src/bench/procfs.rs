//! What a server process spent during one run, read from `/proc` (Linux only).
//!
//! CPU time is `utime + stime` of `/proc/PID/stat`, which includes threads that have already
//! exited, in clock ticks of `USER_HZ` (100 on every architecture Linux exposes to user
//! space). Peak RSS is `VmHWM` of `/proc/PID/status`; writing `5` to `/proc/PID/clear_refs`
//! resets it to the current RSS so that each run sees its own peak. Where that reset is not
//! allowed, a sampler polls `VmRSS` instead (and may miss short spikes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Clock ticks per second of the `/proc/PID/stat` times.
const USER_HZ: f64 = 100.0;
/// How often the fallback sampler reads `VmRSS`.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Resource use of a process over one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// CPU seconds (user + system) spent during the run.
    pub(crate) cpu_s: Option<f64>,
    /// Peak resident set during the run, in KiB.
    pub(crate) peak_rss_kib: Option<u64>,
}

/// A watch over one process, started before a run and finished after it.
pub(crate) struct Watch {
    pid: u32,
    cpu_start: Option<f64>,
    sampler: Option<(Arc<AtomicBool>, JoinHandle<u64>)>,
}

impl Watch {
    /// Starts watching `pid`: records its CPU time and resets (or starts sampling) its peak RSS.
    pub(crate) fn start(pid: u32) -> Self {
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let sampler = (!reset).then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let handle = tokio::spawn(async move {
                let mut peak = 0;
                // Bounded by the stop flag and, should the caller vanish, by an hour.
                for _ in 0..(3600 * 1000 / SAMPLE_EVERY.as_millis() as usize) {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    peak = peak.max(status_kib(pid, "VmRSS:").unwrap_or(0));
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
                peak
            });
            (stop, handle)
        });
        Self {
            pid,
            cpu_start: cpu_seconds(pid),
            sampler,
        }
    }

    /// Stops watching and returns what the process spent since [`Watch::start`].
    pub(crate) async fn finish(self) -> Usage {
        let cpu_s = match (self.cpu_start, cpu_seconds(self.pid)) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        };
        let peak_rss_kib = match self.sampler {
            Some((stop, handle)) => {
                stop.store(true, Ordering::Relaxed);
                let sampled = handle.await.unwrap_or(0);
                Some(sampled.max(status_kib(self.pid, "VmRSS:").unwrap_or(0)))
            }
            None => status_kib(self.pid, "VmHWM:"),
        };
        Usage {
            cpu_s,
            peak_rss_kib,
        }
    }
}

/// `utime + stime` of `pid` in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0], so utime (14) and stime (15) are fields[11] and fields[12].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `kB` field such as `VmHWM:` of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_process_has_cpu_time_and_a_peak() {
        let pid = std::process::id();
        let watch = Watch::start(pid);
        // Spend a little CPU so the difference can be non-zero; it is at least never negative.
        let mut x = 0_u64;
        for i in 0..2_000_000_u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let usage = watch.finish().await;
        assert!(usage.cpu_s.unwrap() >= 0.0);
        assert!(usage.peak_rss_kib.unwrap() > 0);
    }
}
