//! Output: the JSON document and the markdown tables, including the issue-6 targets.
//!
//! The first `--target` is the candidate (Aerugo), the second the reference (distribution),
//! and the static server the ceiling. Ratios read as "how many times better the candidate
//! is", so above 1 is always good whatever the unit. Target thresholds live in
//! [`targets`], next to the wording the issue uses.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use super::cli::{Context, Options};
use super::workloads::{Results, STATIC_NAME, WorkloadResult};

/// Tolerance of "the same cost at 10× the entries": large p50 ≤ small p50 × this + slack.
const SAME_COST_FACTOR: f64 = 1.25;
/// Absolute slack (ms) of the same-cost check, for pages that take well under a millisecond.
const SAME_COST_SLACK_MS: f64 = 0.2;

/// One issue-6 target, judged.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    /// The goal, as the issue states it.
    pub(crate) goal: String,
    /// What was measured.
    pub(crate) measured: String,
    /// Met, missed, or not measurable in this run.
    pub(crate) met: Option<bool>,
}

#[derive(Serialize)]
struct Document<'a> {
    schema: u32,
    options: &'a Options,
    context: &'a Context,
    results: &'a Results,
    targets: Vec<Check>,
}

/// Writes the JSON and markdown outputs the options ask for, and prints the summary table.
pub(crate) fn write(o: &Options, results: &Results) -> anyhow::Result<()> {
    let checks = targets(o, results);
    let markdown = markdown(o, results, &checks);
    if let Some(path) = &o.json {
        let doc = Document {
            schema: 1,
            options: o,
            context: &o.context,
            results,
            targets: checks,
        };
        let json = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &o.markdown {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{markdown}");
    Ok(())
}

fn names(results: &Results) -> (Option<&str>, Option<&str>) {
    let mut registries = results.targets.iter().filter(|t| !t.is_static);
    (
        registries.next().map(|t| t.name.as_str()),
        registries.next().map(|t| t.name.as_str()),
    )
}

/// A number with as many decimals as its size deserves.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), num)
}

fn markdown(o: &Options, results: &Results, checks: &[Check]) -> String {
    let (cand, refn) = names(results);
    let regs: Vec<&str> = results
        .targets
        .iter()
        .filter(|t| !t.is_static)
        .map(|t| t.name.as_str())
        .collect();
    let has_static = results.targets.iter().any(|t| t.is_static);
    let mut md = String::new();
    let _ = writeln!(md, "### Results\n");
    let _ = writeln!(
        md,
        "Each cell is the median of {} alternating run(s) by the row's unit; the ratio is how many times better {} is than {} (above 1 is better, whatever the unit).",
        o.repeats,
        cand.unwrap_or("the first target"),
        refn.unwrap_or("the second target"),
    );
    if has_static {
        let _ = writeln!(
            md,
            "The {STATIC_NAME} column is the static-file ceiling measured with the same client in the same rounds: a file of the manifest's size ({} bytes) for manifest GET, a {} MiB file for blob pull.",
            results.manifest_bytes, o.blob_mib
        );
    }
    let _ = writeln!(md);
    let mut header = String::from("| workload | unit |");
    let mut rule = String::from("| --- | --- |");
    for r in &regs {
        let _ = write!(header, " {r} |");
        rule.push_str(" ---: |");
    }
    if regs.len() >= 2 {
        header.push_str(" ratio |");
        rule.push_str(" ---: |");
    }
    if has_static {
        let _ = write!(header, " {STATIC_NAME} |");
        rule.push_str(" ---: |");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for w in &results.workloads {
        let mut row = format!("| {} (`{}`) | {} |", w.title, w.name, w.unit);
        for r in &regs {
            let cell = w.reported(r).map_or_else(|| "–".into(), |m| num(m.value));
            let _ = write!(row, " {cell} |");
        }
        if let (Some(a), Some(b)) = (cand, refn) {
            let ratio = ratio(w, a, b).map_or_else(|| "–".into(), |r| format!("{}×", num(r)));
            let _ = write!(row, " {ratio} |");
        }
        if has_static {
            let cell = w
                .reported(STATIC_NAME)
                .map_or_else(String::new, |m| num(m.value));
            let _ = write!(row, " {cell} |");
        }
        let _ = writeln!(md, "{row}");
    }

    let _ = writeln!(md, "\n### Latency, errors and server resources\n");
    let _ = writeln!(
        md,
        "Per reported run: operations per second, operation latency, failed operations, server CPU time per HTTP request, the server's peak RSS during the run (largest over all runs), and, for servers with Aerugo's `/metrics`, database queries per HTTP request and the share of cache lookups a cache tier answered. A blob push or pull is one operation; an image push is one operation of 7 requests; a mixed operation is an image pull (3 requests) or push (7).\n"
    );
    let _ = writeln!(
        md,
        "| workload | target | ops/s | p50 ms | p99 ms | errors | requests | CPU s | CPU µs/req | peak RSS MiB | DB queries/req | cache hits | note |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for w in &results.workloads {
        for runs in &w.runs {
            let Some(m) = &runs.reported else { continue };
            let note = m
                .note
                .clone()
                .or_else(|| m.first_errors.first().map(|e| format!("error: {e}")))
                .unwrap_or_default()
                .replace('|', "\\|");
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w.name,
                runs.target,
                num(m.ops_per_s),
                num(m.p50_ms),
                num(m.p99_ms),
                w.runs
                    .iter()
                    .find(|r| r.target == runs.target)
                    .map_or(0, |r| r.all.iter().map(|m| m.errors).sum::<u64>()),
                m.requests,
                opt(m.cpu_s),
                opt(m.cpu_us_per_request),
                opt(runs.max_peak_rss_mib),
                m.db_queries_per_request
                    .map_or_else(String::new, |q| format!("{q:.3}")),
                m.cache_hit_ratio
                    .map_or_else(String::new, |h| format!("{:.1}%", h * 100.0)),
                note,
            );
        }
    }

    if !results.populate.is_empty() {
        let _ = writeln!(md, "\n### Creating the fixtures\n");
        let _ = writeln!(
            md,
            "Tags are manifest PUTs by tag ({} clients); a repository is one cross-repository blob mount (both registries list a repository holding only a blob; one that does not gets a manifest too). One pass per target, not alternated: a rough write-throughput indication.\n",
            o.populate_concurrency
        );
        let _ = writeln!(
            md,
            "| target | what | from → to | seconds | req/s | errors |\n| --- | --- | --- | ---: | ---: | ---: |"
        );
        for p in &results.populate {
            let _ = writeln!(
                md,
                "| {} | {} | {} → {} | {} | {} | {} |",
                p.target,
                p.what,
                p.from,
                p.to,
                num(p.seconds),
                num(p.requests_per_s),
                p.errors
            );
        }
    }
    for (name, max) in &o.max_entries {
        let _ = writeln!(
            md,
            "\n{name} gets at most {max} tags and repositories (`--max-entries`); its list rows above that are empty."
        );
    }
    if !results.skipped.is_empty() {
        let _ = writeln!(
            md,
            "\nSkipped after the deadline: {}.",
            results.skipped.join(", ")
        );
    }

    let _ = writeln!(md, "\n### Targets (issue 6)\n");
    let _ = writeln!(md, "| goal | measured | met |\n| --- | --- | --- |");
    for c in checks {
        let met = match c.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {met} |", c.goal, c.measured);
    }
    md
}

fn ratio(w: &WorkloadResult, a: &str, b: &str) -> Option<f64> {
    let (ma, mb) = (w.reported(a)?, w.reported(b)?);
    w.metric.advantage(ma.value, mb.value)
}

fn find<'a>(results: &'a Results, name: &str) -> Option<&'a WorkloadResult> {
    results.workloads.iter().find(|w| w.name == name)
}

/// Judges the issue-6 targets for the first registry target.
pub(crate) fn targets(o: &Options, results: &Results) -> Vec<Check> {
    let (Some(cand), refn) = names(results) else {
        return Vec::new();
    };
    let mut checks = Vec::new();
    let mut check = |goal: String, measured: String, met: Option<bool>| {
        checks.push(Check {
            goal,
            measured,
            met,
        });
    };
    let ceiling = find(results, "manifest-get")
        .and_then(|w| w.reported(STATIC_NAME))
        .map(|m| m.value);
    for (name, what) in [("manifest-get", "GET"), ("manifest-head", "HEAD")] {
        let Some(w) = find(results, name) else {
            continue;
        };
        let Some(m) = w.reported(cand) else { continue };
        match ceiling {
            Some(c) => check(
                format!("manifest {what} by tag ≥ 25% of the nginx small-file ceiling"),
                format!(
                    "{} req/s = {:.0}% of {} req/s",
                    num(m.value),
                    m.value / c * 100.0,
                    num(c)
                ),
                Some(m.value >= 0.25 * c),
            ),
            None => check(
                format!("manifest {what} by tag ≥ 25% of the nginx small-file ceiling"),
                "no static server given".into(),
                None,
            ),
        }
        if let Some(r) = refn.and_then(|b| ratio(w, cand, b)) {
            check(
                format!("manifest {what} by tag ≥ 15× distribution"),
                format!("{}×", num(r)),
                Some(r >= 15.0),
            );
        }
        check(
            format!("manifest {what} p99 ≤ 10 ms at {} clients", o.concurrency),
            format!("{} ms", num(m.p99_ms)),
            Some(m.p99_ms <= 10.0),
        );
        check(
            format!("manifest {what} ≤ 50 µs server CPU per request"),
            m.cpu_us_per_request
                .map_or_else(|| "no PID given".into(), |c| format!("{} µs", num(c))),
            m.cpu_us_per_request.map(|c| c <= 50.0),
        );
        // The cache's promise: a hot pull by tag costs no database round trip. The few queries
        // left are entries refreshed when their TTL ends.
        check(
            format!("hot manifest {what} by tag performs no database query (≤ 0.01 per request)"),
            match (m.db_queries_per_request, m.cache_hit_ratio) {
                (Some(q), Some(h)) => format!("{q:.4} queries/req, {:.1}% cache hits", h * 100.0),
                (Some(q), None) => format!("{q:.4} queries/req"),
                _ => "the server has no Aerugo /metrics".into(),
            },
            m.db_queries_per_request.map(|q| q <= 0.01),
        );
    }
    let anonymous = find(results, "manifest-get").and_then(|w| w.reported(cand));
    let token = find(results, "manifest-get-token").and_then(|w| w.reported(cand));
    // The server's own cost, which does not depend on how fast this client can send: on one
    // machine the load generator's work per request (a 700-byte header more to send) moves the
    // throughput row as much as the server does.
    if let (Some(a), Some(t)) = (anonymous, token)
        && let (Some(ca), Some(ct)) = (a.cpu_us_per_request, t.cpu_us_per_request)
    {
        check(
            "manifest GET with a Bearer token: server CPU per request within 20% of anonymous"
                .into(),
            format!("{} µs vs {} µs", num(ct), num(ca)),
            Some(ct <= 1.2 * ca),
        );
    }
    match (anonymous, token) {
        (Some(a), Some(t)) => check(
            "manifest GET with a Bearer token within 20% of anonymous".into(),
            format!(
                "{} req/s = {:.0}% of {} req/s; {} µs CPU/req vs {}",
                num(t.value),
                t.value / a.value * 100.0,
                num(a.value),
                opt(t.cpu_us_per_request),
                opt(a.cpu_us_per_request),
            ),
            Some(t.value >= 0.8 * a.value),
        ),
        _ => check(
            "manifest GET with a Bearer token within 20% of anonymous".into(),
            "the server never asked for a token (run with --username/--password against one that does)".into(),
            None,
        ),
    }
    // A server that fsyncs every blob is judged against dd with fsync; one that does not,
    // against one core's SHA-256 rate. The other target does not apply to it.
    let fsyncs = o.fsync.iter().any(|n| n == cand);
    let sha = o.context.sha256_mbps;
    let dd = o.context.dd_fsync_mbps;
    for name in ["blob-push-monolithic", "blob-push-chunked"] {
        let Some(m) = find(results, name).and_then(|w| w.reported(cand)) else {
            continue;
        };
        let share = |of: Option<f64>, what: &str| match of {
            Some(r) => format!(
                "{} MB/s = {:.0}% of {what} {} MB/s",
                num(m.value),
                m.value / r * 100.0,
                num(r)
            ),
            None => format!("{} MB/s; {what} rate not given", num(m.value)),
        };
        check(
            format!("blob push (`{name}`) ≥ 50% of one core's SHA-256 rate, without fsync"),
            if fsyncs {
                format!(
                    "not applicable: {cand} fsyncs every blob before answering ({})",
                    share(sha, "SHA-256")
                )
            } else {
                share(sha, "SHA-256")
            },
            sha.filter(|_| !fsyncs).map(|s| m.value >= 0.5 * s),
        );
        check(
            format!("blob push (`{name}`) with fsync before answering ≥ 0.8× dd with fsync"),
            if fsyncs {
                share(dd, "dd with fsync")
            } else {
                format!("not applicable: {cand} does not fsync blobs before answering")
            },
            dd.filter(|_| fsyncs).map(|d| m.value >= 0.8 * d),
        );
    }
    if let Some(w) = find(results, "blob-pull")
        && let Some(m) = w.reported(cand)
    {
        let c = w.reported(STATIC_NAME).map(|s| s.value);
        check(
            "blob pull ≥ 0.9× nginx with the same client".into(),
            c.map_or_else(
                || format!("{} MB/s; no static server given", num(m.value)),
                |c| {
                    format!(
                        "{} MB/s = {:.2}× of {} MB/s",
                        num(m.value),
                        m.value / c,
                        num(c)
                    )
                },
            ),
            c.map(|c| m.value >= 0.9 * c),
        );
    }
    if let Some(m) = find(results, "push-images").and_then(|w| w.reported(cand)) {
        check(
            format!(
                "{} small images at concurrency {} in ≤ 0.4 s",
                o.images, o.image_concurrency
            ),
            format!("{} s", num(m.value)),
            Some(m.value <= 0.4 && m.errors == 0),
        );
    }
    for family in [
        "tags-list-first",
        "tags-list-deep",
        "catalog-first",
        "catalog-deep",
    ] {
        let (small, large) = if family.starts_with("tags") {
            o.tags
        } else {
            o.repos
        };
        let a = find(results, &format!("{family}-{small}")).and_then(|w| w.reported(cand));
        let b = find(results, &format!("{family}-{large}")).and_then(|w| w.reported(cand));
        if let (Some(a), Some(b)) = (a, b) {
            check(
                format!(
                    "`{family}` costs the same at {small} and {large} entries (p50 within {SAME_COST_FACTOR}× + {SAME_COST_SLACK_MS} ms)"
                ),
                format!("{} ms → {} ms", num(a.p50_ms), num(b.p50_ms)),
                Some(b.p50_ms <= a.p50_ms * SAME_COST_FACTOR + SAME_COST_SLACK_MS),
            );
        }
    }
    let peak = results
        .workloads
        .iter()
        .filter_map(|w| {
            w.target_runs(cand)
                .and_then(|r| r.max_peak_rss_mib)
                .map(|p| (p, w.name.as_str()))
        })
        .reduce(|a, b| if b.0 > a.0 { b } else { a });
    check(
        "peak RSS under these loads ≤ 48 MiB".into(),
        peak.map_or_else(
            || "no PID given".into(),
            |(p, w)| format!("{} MiB (during `{w}`)", num(p)),
        ),
        peak.map(|(p, _)| p <= 48.0),
    );
    checks
}
