//! Results of runs: latency percentiles, throughput, and picking the median of repeats.
//!
//! An "operation" is what a workload times as one unit (one request for manifest GET, one
//! whole image for the image push, one 256 MiB transfer for blob pushes); errors count failed
//! operations. Latencies are kept exactly (microseconds, one `u32` each) rather than in a
//! histogram: a run produces at most a few hundred thousand of them.

use std::time::Duration;

use serde::Serialize;

/// What a workload reports as its main number, and which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Metric {
    /// Operations per second (higher is better).
    OpsPerSec,
    /// Megabytes (10^6 bytes) per second (higher is better).
    MbPerSec,
    /// Wall-clock seconds of the whole run (lower is better).
    Seconds,
    /// Median latency in milliseconds (lower is better).
    P50Ms,
}

impl Metric {
    /// Whether a larger value is better.
    pub(crate) fn higher_is_better(self) -> bool {
        matches!(self, Self::OpsPerSec | Self::MbPerSec)
    }

    /// How many times better `a` is than `b` (above 1 means `a` is better).
    pub(crate) fn advantage(self, a: f64, b: f64) -> Option<f64> {
        let r = if self.higher_is_better() {
            a / b
        } else {
            b / a
        };
        r.is_finite().then_some(r)
    }
}

/// The raw outcome of one run of one workload against one target.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Per-operation latencies in microseconds.
    pub(crate) latencies_us: Vec<u32>,
    /// HTTP requests sent.
    pub(crate) requests: u64,
    /// Failed operations.
    pub(crate) errors: u64,
    /// Payload bytes moved (request plus response bodies).
    pub(crate) bytes: u64,
    /// The first few error messages, for diagnosis.
    pub(crate) first_errors: Vec<String>,
}

impl Tally {
    /// Records one operation.
    pub(crate) fn record(&mut self, latency: Duration, outcome: Outcome) {
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        self.requests += u64::from(outcome.requests);
        self.bytes += outcome.bytes;
        if let Some(e) = outcome.error {
            self.errors += 1;
            if self.first_errors.len() < 5 {
                self.first_errors.push(e);
            }
        }
    }

    /// Adds another worker's tally to this one.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.requests += other.requests;
        self.errors += other.errors;
        self.bytes += other.bytes;
        for e in other.first_errors {
            if self.first_errors.len() < 5 {
                self.first_errors.push(e);
            }
        }
    }
}

/// What one operation did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// HTTP requests it sent.
    pub(crate) requests: u32,
    /// Payload bytes it moved.
    pub(crate) bytes: u64,
    /// Why it failed, if it did.
    pub(crate) error: Option<String>,
}

impl Outcome {
    /// Turns a fallible operation's result into an outcome.
    pub(crate) fn from_result(requests: u32, result: anyhow::Result<u64>) -> Self {
        match result {
            Ok(bytes) => Self {
                requests,
                bytes,
                error: None,
            },
            Err(e) => Self {
                requests,
                bytes: 0,
                error: Some(format!("{e:#}")),
            },
        }
    }
}

/// The summary of one run, as written to the JSON output.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Measurement {
    /// Which round (0-based) of the alternation this run was.
    pub(crate) repeat: usize,
    /// The workload's main number (see [`Metric`]).
    pub(crate) value: f64,
    /// Timed operations.
    pub(crate) ops: u64,
    /// HTTP requests sent.
    pub(crate) requests: u64,
    /// Failed operations.
    pub(crate) errors: u64,
    /// Payload bytes moved.
    pub(crate) bytes: u64,
    /// Wall-clock length of the run.
    pub(crate) elapsed_s: f64,
    /// Operations per second.
    pub(crate) ops_per_s: f64,
    /// HTTP requests per second.
    pub(crate) requests_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub(crate) mb_per_s: f64,
    /// Median operation latency.
    pub(crate) p50_ms: f64,
    /// 99th percentile operation latency.
    pub(crate) p99_ms: f64,
    /// Slowest operation.
    pub(crate) max_ms: f64,
    /// Server CPU seconds during the run, when its PID was given.
    pub(crate) cpu_s: Option<f64>,
    /// Server CPU microseconds per HTTP request.
    pub(crate) cpu_us_per_request: Option<f64>,
    /// Server peak RSS during the run, in MiB.
    pub(crate) peak_rss_mib: Option<f64>,
    /// Database queries per HTTP request, from the server's `/metrics` (Aerugo only).
    pub(crate) db_queries_per_request: Option<f64>,
    /// Share of the server's cache lookups a cache tier answered, from its `/metrics`.
    pub(crate) cache_hit_ratio: Option<f64>,
    /// Extra facts (entries returned by a list, for example).
    pub(crate) note: Option<String>,
    /// The first few errors.
    pub(crate) first_errors: Vec<String>,
}

impl Measurement {
    /// Summarises `tally`, a run of `elapsed`, with the server's resource use.
    pub(crate) fn new(
        metric: Metric,
        repeat: usize,
        mut tally: Tally,
        elapsed: Duration,
        usage: Option<super::procfs::Usage>,
    ) -> Self {
        tally.latencies_us.sort_unstable();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ops = tally.latencies_us.len() as u64;
        let p50_ms = percentile(&tally.latencies_us, 0.50);
        let ops_per_s = ops as f64 / secs;
        let mb_per_s = tally.bytes as f64 / secs / 1e6;
        let value = match metric {
            Metric::OpsPerSec => ops_per_s,
            Metric::MbPerSec => mb_per_s,
            Metric::Seconds => secs,
            Metric::P50Ms => p50_ms,
        };
        let cpu_s = usage.and_then(|u| u.cpu_s);
        Self {
            repeat,
            value,
            ops,
            requests: tally.requests,
            errors: tally.errors,
            bytes: tally.bytes,
            elapsed_s: secs,
            ops_per_s,
            requests_per_s: tally.requests as f64 / secs,
            mb_per_s,
            p50_ms,
            p99_ms: percentile(&tally.latencies_us, 0.99),
            max_ms: tally
                .latencies_us
                .last()
                .map_or(0.0, |&v| f64::from(v) / 1e3),
            cpu_s,
            cpu_us_per_request: cpu_s
                .filter(|_| tally.requests > 0)
                .map(|c| c * 1e6 / tally.requests as f64),
            peak_rss_mib: usage
                .and_then(|u| u.peak_rss_kib)
                .map(|k| k as f64 / 1024.0),
            db_queries_per_request: None,
            cache_hit_ratio: None,
            note: None,
            first_errors: tally.first_errors,
        }
    }
}

/// The `q` quantile of sorted microsecond latencies, in milliseconds (nearest rank).
pub(crate) fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1e3
}

/// The index of the median run by `metric` (the lower median for an even count).
pub(crate) fn median_index(runs: &[Measurement], metric: Metric) -> Option<usize> {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    // Failed runs sort last, so the median prefers runs that worked.
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            let r = &runs[i];
            let v = if metric.higher_is_better() {
                -r.value
            } else {
                r.value
            };
            (r.errors > 0, v)
        };
        let (ea, va) = key(a);
        let (eb, vb) = key(b);
        ea.cmp(&eb).then(va.total_cmp(&vb))
    });
    order.get(order.len().saturating_sub(1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7000], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_median_run_is_picked_by_the_metric() {
        let run = |value: f64, errors: u64| {
            let mut m = Measurement::new(
                Metric::OpsPerSec,
                0,
                Tally::default(),
                Duration::from_secs(1),
                None,
            );
            m.value = value;
            m.errors = errors;
            m
        };
        let runs = vec![run(10.0, 0), run(30.0, 0), run(20.0, 0)];
        assert_eq!(median_index(&runs, Metric::OpsPerSec), Some(2));
        assert_eq!(median_index(&runs, Metric::Seconds), Some(2));
        let runs = vec![run(10.0, 0), run(30.0, 1), run(20.0, 0)];
        // Best first: 20, 10, then the failed 30; the lower median is 10.
        assert_eq!(median_index(&runs, Metric::OpsPerSec), Some(0));
    }
}
