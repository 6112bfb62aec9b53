//! The workloads, the fixtures they need, and the alternating schedule that runs them.
//!
//! Order: large-blob push (monolithic, chunked) and pull; manifest GET and HEAD and blob HEAD
//! at high concurrency; 100 small images; the mixed pull-heavy load; then tags lists and
//! catalog pages at the small scale, the fixtures grown to the large scale, and the same pages
//! again. Fixtures (tags, repositories) are created through the API with one small manifest
//! and many references to it; their creation rate is reported too, as an untimed-by-design
//! "populate" table (each target populates once, so it is not alternated).
//!
//! Repository layout under `--prefix` (default `bench`): `base` (the small image, tag
//! `latest`), `big` (large blobs), `tags` (the tag-list repository), `cat/rNNNNNN` (catalog
//! fillers), `img/rN` (image pushes of round N), `mixed` (the mixed workload).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, LINK};
use reqwest::{Response, StatusCode, Url};
use serde::Serialize;

use super::cli::Options;
use super::data::{self, Blob, MANIFEST_ACCEPT, MANIFEST_TYPE, SmallImage, SplitMix64};
use super::http::{RegistryHttp, SMALL_TIMEOUT};
use super::procfs::Watch;
use super::stats::{Measurement, Metric, Outcome, Tally, median_index};

/// How long one large-blob request may take.
const LARGE_TIMEOUT: Duration = Duration::from_secs(300);
/// Untimed load before each request-rate run, so connections are open and caches warm.
const WARMUP: Duration = Duration::from_millis(250);
/// Images the mixed workload pulls from.
const MIXED_IMAGES: u64 = 16;
/// The name of the static-file target.
pub(crate) const STATIC_NAME: &str = "nginx";
const OCTET_STREAM: &str = "application/octet-stream";

/// Everything a benchmark run produced.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    /// Start of the run, in seconds since the Unix epoch.
    pub(crate) started_unix: u64,
    /// Wall-clock length of the whole run.
    pub(crate) total_s: f64,
    /// The measured targets, in alternation order (the static server last, if any).
    pub(crate) targets: Vec<TargetInfo>,
    /// Size of the small manifest every manifest request returns.
    pub(crate) manifest_bytes: usize,
    /// One entry per workload, in run order.
    pub(crate) workloads: Vec<WorkloadResult>,
    /// How fast each target accepted the tag and repository fixtures.
    pub(crate) populate: Vec<Populate>,
    /// Workloads skipped because the deadline passed.
    pub(crate) skipped: Vec<String>,
}

/// A measured server.
#[derive(Debug, Serialize)]
pub(crate) struct TargetInfo {
    /// Its name (`--target NAME=…`).
    pub(crate) name: String,
    /// Its base URL.
    pub(crate) url: String,
    /// Its PID, when given.
    pub(crate) pid: Option<u32>,
    /// Whether it is the static-file ceiling rather than a registry.
    pub(crate) is_static: bool,
}

/// All runs of one workload.
#[derive(Debug, Serialize)]
pub(crate) struct WorkloadResult {
    /// Short name (used by `--only`).
    pub(crate) name: String,
    /// What it does, for tables.
    pub(crate) title: String,
    /// Its main number.
    pub(crate) metric: Metric,
    /// Unit of the main number.
    pub(crate) unit: &'static str,
    /// Runs by target, in alternation order.
    pub(crate) runs: Vec<TargetRuns>,
}

/// One target's runs of a workload.
#[derive(Debug, Serialize)]
pub(crate) struct TargetRuns {
    /// The target's name.
    pub(crate) target: String,
    /// The reported run: the median by the workload's metric.
    pub(crate) reported: Option<Measurement>,
    /// The largest peak RSS over all runs, in MiB.
    pub(crate) max_peak_rss_mib: Option<f64>,
    /// Every run, in order.
    pub(crate) all: Vec<Measurement>,
}

impl WorkloadResult {
    /// The reported run of `target`.
    pub(crate) fn reported(&self, target: &str) -> Option<&Measurement> {
        self.runs
            .iter()
            .find(|r| r.target == target)
            .and_then(|r| r.reported.as_ref())
    }

    /// All runs of `target`.
    pub(crate) fn target_runs(&self, target: &str) -> Option<&TargetRuns> {
        self.runs.iter().find(|r| r.target == target)
    }
}

/// How fast one target accepted one batch of fixtures.
#[derive(Debug, Serialize)]
pub(crate) struct Populate {
    /// The target's name.
    pub(crate) target: String,
    /// `tags` or `repositories`.
    pub(crate) what: &'static str,
    /// Count before the batch.
    pub(crate) from: usize,
    /// Count after the batch.
    pub(crate) to: usize,
    /// Wall-clock seconds.
    pub(crate) seconds: f64,
    /// HTTP requests per second.
    pub(crate) requests_per_s: f64,
    /// Failed items.
    pub(crate) errors: u64,
    /// The first errors.
    pub(crate) first_errors: Vec<String>,
}

/// What a workload does.
#[derive(Debug, Clone, Copy)]
enum Kind {
    PushMonolithic,
    PushChunked,
    Pull,
    ManifestGet,
    ManifestGetToken,
    ManifestHead,
    BlobHead,
    PushImages,
    Mixed,
    TagsList { entries: usize, deep: bool },
    Catalog { entries: usize, deep: bool },
    StaticSmall,
    StaticLarge,
}

/// A workload as scheduled: the registry kind, and the static-server kind measured with it.
struct Workload {
    name: String,
    title: String,
    metric: Metric,
    unit: &'static str,
    kind: Kind,
    with_static: Option<Kind>,
}

enum Step {
    Run(Workload),
    Populate { tags: usize, repos: usize },
}

struct Target {
    name: String,
    index: u64,
    http: Arc<RegistryHttp>,
    pid: Option<u32>,
    is_static: bool,
}

/// What a registry target holds between workloads.
#[derive(Default)]
struct State {
    /// Digest and size of a large blob in `<prefix>/big`.
    big: Option<(String, u64)>,
    tags_ready: bool,
    tags: usize,
    repos: usize,
    /// Whether catalog fillers need a manifest to be listed (see `blob_makes_repository`).
    repo_manifests: bool,
    mixed_ready: bool,
}

/// Shared, cheaply cloned inputs of one run.
struct Run {
    http: Arc<RegistryHttp>,
    name: String,
    prefix: String,
    target_index: u64,
    repeat: u64,
}

fn plan(o: &Options) -> Vec<Step> {
    let mib = o.blob_mib;
    let c = o.concurrency;
    let w = |name: &str, title: String, metric: Metric, unit: &'static str, kind: Kind| Workload {
        name: name.to_owned(),
        title,
        metric,
        unit,
        kind,
        with_static: None,
    };
    let mut steps = vec![
        Step::Run(w(
            "blob-push-monolithic",
            format!("push one {mib} MiB blob (POST + PUT)"),
            Metric::MbPerSec,
            "MB/s",
            Kind::PushMonolithic,
        )),
        Step::Run(w(
            "blob-push-chunked",
            format!("push one {mib} MiB blob in {} MiB PATCHes", o.chunk_mib),
            Metric::MbPerSec,
            "MB/s",
            Kind::PushChunked,
        )),
        Step::Run(Workload {
            with_static: Some(Kind::StaticLarge),
            ..w(
                "blob-pull",
                format!("pull the {mib} MiB blob"),
                Metric::MbPerSec,
                "MB/s",
                Kind::Pull,
            )
        }),
        Step::Run(Workload {
            with_static: Some(Kind::StaticSmall),
            ..w(
                "manifest-get",
                format!("manifest GET by tag, {c} clients"),
                Metric::OpsPerSec,
                "req/s",
                Kind::ManifestGet,
            )
        }),
        Step::Run(w(
            "manifest-get-token",
            format!("manifest GET by tag with a Bearer token, {c} clients"),
            Metric::OpsPerSec,
            "req/s",
            Kind::ManifestGetToken,
        )),
        Step::Run(w(
            "manifest-head",
            format!("manifest HEAD by tag, {c} clients"),
            Metric::OpsPerSec,
            "req/s",
            Kind::ManifestHead,
        )),
        Step::Run(w(
            "blob-head",
            format!("blob HEAD, {c} clients"),
            Metric::OpsPerSec,
            "req/s",
            Kind::BlobHead,
        )),
        Step::Run(w(
            "push-images",
            format!(
                "push {} small images ({} KiB layer), {} clients",
                o.images, o.layer_kib, o.image_concurrency
            ),
            Metric::Seconds,
            "s",
            Kind::PushImages,
        )),
        Step::Run(w(
            "mixed",
            format!(
                "mixed: {}% image pulls, {}% image pushes, {} clients",
                o.mixed_pull_percent,
                100 - o.mixed_pull_percent,
                o.mixed_concurrency
            ),
            Metric::OpsPerSec,
            "ops/s",
            Kind::Mixed,
        )),
    ];
    for entries in [o.tags.0, o.tags.1] {
        let repos = if entries == o.tags.0 {
            o.repos.0
        } else {
            o.repos.1
        };
        steps.push(Step::Populate {
            tags: entries,
            repos,
        });
        let page = o.page;
        for (deep, which) in [(false, "first"), (true, "deep")] {
            steps.push(Step::Run(w(
                &format!("tags-list-{which}-{entries}"),
                format!("tags list, {which} page of {page}, {entries} tags"),
                Metric::P50Ms,
                "ms p50",
                Kind::TagsList { entries, deep },
            )));
        }
        for (deep, which) in [(false, "first"), (true, "deep")] {
            steps.push(Step::Run(w(
                &format!("catalog-{which}-{repos}"),
                format!("catalog, {which} page of {page}, {repos} repositories"),
                Metric::P50Ms,
                "ms p50",
                Kind::Catalog {
                    entries: repos,
                    deep,
                },
            )));
        }
    }
    steps
}

/// Runs every selected workload against every target, alternating, and collects the results.
pub(crate) async fn run_all(o: &Options) -> anyhow::Result<Results> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let credentials = o.username.clone().zip(o.password.clone());
    let max_conns = o
        .concurrency
        .max(o.populate_concurrency)
        .max(o.mixed_concurrency);
    let mut targets = Vec::new();
    for (i, (name, url)) in o.targets.iter().enumerate() {
        targets.push(Target {
            name: name.clone(),
            index: i as u64,
            http: Arc::new(RegistryHttp::new(url, credentials.clone(), max_conns)?),
            pid: o.pid(name),
            is_static: false,
        });
    }
    let static_target = match &o.static_url {
        Some(url) => Some(Target {
            name: STATIC_NAME.into(),
            index: targets.len() as u64,
            http: Arc::new(RegistryHttp::new(url, None, max_conns)?),
            pid: None,
            is_static: true,
        }),
        None => None,
    };
    let base = SmallImage::base();
    for t in &targets {
        check_registry(t).await?;
        push_image(&t.http, &format!("{}/base", o.prefix), "latest", &base)
            .await
            .with_context(|| format!("pushing the base image to {}", t.name))?;
    }
    if let Some(s) = &static_target {
        let url = s.http.url(&format!("/small/{}", data::static_name(0)))?;
        let res = s.http.send("", |c| c.get(url.clone())).await?;
        let res = expect(res, &[StatusCode::OK], "static file").await?;
        let body = res.bytes().await?;
        if body != base.manifest.data {
            bail!("the static server's small files are not the base manifest; run static-files");
        }
    }
    let mut states: Vec<State> = targets.iter().map(|_| State::default()).collect();
    let mut results = Results {
        started_unix,
        total_s: 0.0,
        targets: targets
            .iter()
            .chain(&static_target)
            .map(|t| TargetInfo {
                name: t.name.clone(),
                url: o
                    .targets
                    .iter()
                    .find(|(n, _)| *n == t.name)
                    .map(|(_, u)| u.clone())
                    .or_else(|| o.static_url.clone())
                    .unwrap_or_default(),
                pid: t.pid,
                is_static: t.is_static,
            })
            .collect(),
        manifest_bytes: base.manifest.data.len(),
        workloads: Vec::new(),
        populate: Vec::new(),
        skipped: Vec::new(),
    };
    let steps = plan(o);
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Populate { tags, repos } => {
                // Populate only when a later list workload at this scale is selected.
                let needed = steps[i + 1..]
                    .iter()
                    .take_while(|s| matches!(s, Step::Run(_)))
                    .any(|s| matches!(s, Step::Run(w) if o.selected(&w.name)));
                if !needed {
                    continue;
                }
                if started.elapsed() > o.deadline {
                    results
                        .skipped
                        .push(format!("populate {tags} tags, {repos} repositories"));
                    continue;
                }
                for (t, state) in targets.iter().zip(states.iter_mut()) {
                    results
                        .populate
                        .extend(populate(o, t, state, *tags, *repos).await?);
                }
            }
            Step::Run(w) => {
                if !o.selected(&w.name) {
                    continue;
                }
                if started.elapsed() > o.deadline {
                    eprintln!("deadline passed, skipping {}", w.name);
                    results.skipped.push(w.name.clone());
                    continue;
                }
                let mut runs: Vec<(String, Vec<Measurement>)> = targets
                    .iter()
                    .chain(w.with_static.and(static_target.as_ref()))
                    .map(|t| (t.name.clone(), Vec::new()))
                    .collect();
                for repeat in 0..o.repeats {
                    for (ti, t) in targets.iter().enumerate() {
                        let Some(m) =
                            run_once(o, w.kind, w.metric, t, &mut states[ti], repeat).await?
                        else {
                            continue;
                        };
                        log_run(&w.name, &t.name, &m, w.unit);
                        runs[ti].1.push(m);
                    }
                    if let (Some(kind), Some(s)) = (w.with_static, &static_target) {
                        let mut scratch = State::default();
                        let m = run_once(o, kind, w.metric, s, &mut scratch, repeat).await?;
                        if let (Some(m), Some(last)) = (m, runs.last_mut()) {
                            log_run(&w.name, &s.name, &m, w.unit);
                            last.1.push(m);
                        }
                    }
                }
                results.workloads.push(WorkloadResult {
                    name: w.name.clone(),
                    title: w.title.clone(),
                    metric: w.metric,
                    unit: w.unit,
                    runs: runs
                        .into_iter()
                        .map(|(target, all)| TargetRuns {
                            reported: median_index(&all, w.metric).map(|i| all[i].clone()),
                            max_peak_rss_mib: all
                                .iter()
                                .filter_map(|m| m.peak_rss_mib)
                                .reduce(f64::max),
                            target,
                            all,
                        })
                        .collect(),
                });
            }
        }
    }
    results.total_s = started.elapsed().as_secs_f64();
    Ok(results)
}

fn log_run(workload: &str, target: &str, m: &Measurement, unit: &str) {
    let cpu = m
        .cpu_us_per_request
        .map(|c| format!(", {c:.0} µs CPU/req"))
        .unwrap_or_default();
    let rss = m
        .peak_rss_mib
        .map(|r| format!(", peak RSS {r:.1} MiB"))
        .unwrap_or_default();
    let db = m
        .db_queries_per_request
        .map(|q| format!(", {q:.3} DB queries/req"))
        .unwrap_or_default();
    let hits = m
        .cache_hit_ratio
        .map(|h| format!(", cache hits {:.1}%", h * 100.0))
        .unwrap_or_default();
    eprintln!(
        "{workload:<24} {target:<14} #{}: {:>10.1} {unit}, p50 {:.2} ms, p99 {:.2} ms, {} errors{cpu}{rss}{db}{hits}",
        m.repeat + 1,
        m.value,
        m.p50_ms,
        m.p99_ms,
        m.errors,
    );
    if let Some(e) = m.first_errors.first() {
        eprintln!("    first error: {e}");
    }
}

/// Checks that a registry answers `/v2/` (possibly after authentication).
async fn check_registry(t: &Target) -> anyhow::Result<()> {
    let url = t.http.url("/v2/")?;
    let res = t
        .http
        .send("", |c| c.get(url.clone()).timeout(SMALL_TIMEOUT))
        .await
        .with_context(|| format!("{} does not answer at {url}", t.name))?;
    expect(res, &[StatusCode::OK], "GET /v2/").await?;
    Ok(())
}

/// One timed run of `kind` against `t`, with the server's resource use; `None` when the
/// workload does not apply to the target (a token workload against a registry without auth).
async fn run_once(
    o: &Options,
    kind: Kind,
    metric: Metric,
    t: &Target,
    state: &mut State,
    repeat: usize,
) -> anyhow::Result<Option<Measurement>> {
    let run = Arc::new(Run {
        http: t.http.clone(),
        name: t.name.clone(),
        prefix: o.prefix.clone(),
        target_index: t.index,
        repeat: repeat as u64,
    });
    // Untimed preparation: fixtures and generated content.
    let prepared = prepare(o, kind, &run, state).await?;
    if let Prepared::Skip(why) = &prepared {
        if repeat == 0 {
            eprintln!("{}: skipping {kind:?}: {why}", t.name);
        }
        return Ok(None);
    }
    // The server's own counters (Aerugo's /metrics) around the timed part; the two scrapes are
    // outside the clock and add two requests the per-request figures ignore.
    let before = if t.is_static {
        None
    } else {
        super::prom::scrape(&t.http).await
    };
    let watch = t.pid.map(Watch::start);
    let (tally, elapsed, note) = execute(o, kind, &run, state, prepared).await?;
    let usage = match watch {
        Some(w) => Some(w.finish().await),
        None => None,
    };
    let after = match before {
        Some(_) => super::prom::scrape(&t.http).await,
        None => None,
    };
    let requests = tally.requests;
    let mut m = Measurement::new(metric, repeat, tally, elapsed, usage);
    if let (Some(before), Some(after)) = (before, after) {
        let counted = before.delta(&after, requests);
        m.db_queries_per_request = counted.db_queries_per_request;
        m.cache_hit_ratio = counted.cache_hit_ratio;
    }
    m.note = note;
    Ok(Some(m))
}

/// Inputs a run builds before its clock starts.
enum Prepared {
    None,
    Skip(&'static str),
    Blob(Blob),
    Images(Vec<SmallImage>),
    List {
        url: Url,
        scope: String,
        note: String,
    },
}

async fn prepare(
    o: &Options,
    kind: Kind,
    run: &Run,
    state: &mut State,
) -> anyhow::Result<Prepared> {
    let seed = (run.target_index << 32) | (run.repeat << 16);
    let len = usize::try_from(o.blob_mib * 1024 * 1024)?;
    Ok(match kind {
        Kind::PushMonolithic => Prepared::Blob(data::large_blob(seed | 1, len)),
        Kind::PushChunked => Prepared::Blob(data::large_blob(seed | 2, len)),
        Kind::Pull => {
            if state.big.is_none() {
                let blob = data::large_blob(seed | 3, len);
                let repo = format!("{}/big", run.prefix);
                upload_blob(&run.http, &repo, &blob.data, &blob.digest, LARGE_TIMEOUT).await?;
                state.big = Some((blob.digest, blob.data.len() as u64));
            }
            Prepared::None
        }
        Kind::PushImages => Prepared::Images(
            (0..o.images as u64)
                .map(|i| SmallImage::new((1 << 40) | seed | i, o.layer_kib * 1024))
                .collect(),
        ),
        Kind::Mixed => {
            if !state.mixed_ready {
                let repo = format!("{}/mixed", run.prefix);
                for i in 0..MIXED_IMAGES {
                    let img = SmallImage::new((2 << 40) | i, o.layer_kib * 1024);
                    push_image(&run.http, &repo, &format!("m{i:02}"), &img).await?;
                }
                state.mixed_ready = true;
            }
            Prepared::None
        }
        Kind::TagsList { entries, .. } | Kind::Catalog { entries, .. }
            if entries > o.max_entries(&run.name) =>
        {
            Prepared::Skip("more entries than --max-entries")
        }
        Kind::TagsList { entries, deep } => {
            let repo = format!("{}/tags", run.prefix);
            let mut path = format!("/v2/{repo}/tags/list?n={}", o.page);
            if deep {
                path.push_str(&format!("&last=t{:06}", entries * 9 / 10));
            }
            list_probe(run, &path, format!("repository:{repo}:pull")).await?
        }
        Kind::Catalog { entries, deep } => {
            let mut path = format!("/v2/_catalog?n={}", o.page);
            if deep {
                path.push_str(&format!(
                    "&last={}/cat/r{:06}",
                    run.prefix,
                    entries * 9 / 10
                ));
            }
            list_probe(run, &path, "registry:catalog:*".into()).await?
        }
        Kind::ManifestGetToken => {
            let scope = pull_scope(&format!("{}/base", run.prefix));
            if run.http.login(&format!("token:{scope}"), &scope).await? {
                Prepared::None
            } else {
                Prepared::Skip("the registry never asked for a token")
            }
        }
        Kind::ManifestGet
        | Kind::ManifestHead
        | Kind::BlobHead
        | Kind::StaticSmall
        | Kind::StaticLarge => Prepared::None,
    })
}

/// Fetches a list page once (untimed) to describe what it returns.
async fn list_probe(run: &Run, path: &str, scope: String) -> anyhow::Result<Prepared> {
    let url = run.http.url(path)?;
    let res = run
        .http
        .send(&scope, |c| c.get(url.clone()).timeout(SMALL_TIMEOUT))
        .await?;
    let res = expect(res, &[StatusCode::OK], "list").await?;
    let link = res.headers().contains_key(LINK);
    let body = res.bytes().await?;
    let json: serde_json::Value = serde_json::from_slice(&body).context("list is not JSON")?;
    let entries = json
        .get("tags")
        .or_else(|| json.get("repositories"))
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len);
    let note = format!(
        "{entries} entries, {} bytes, {}",
        body.len(),
        if link { "Link to next page" } else { "no Link" }
    );
    Ok(Prepared::List { url, scope, note })
}

async fn execute(
    o: &Options,
    kind: Kind,
    run: &Arc<Run>,
    state: &State,
    prepared: Prepared,
) -> anyhow::Result<(Tally, Duration, Option<String>)> {
    let prefix = &run.prefix;
    let http = &run.http;
    let c = o.concurrency;
    let d = o.duration;
    Ok(match (kind, prepared) {
        (Kind::PushMonolithic, Prepared::Blob(blob)) => {
            let repo = format!("{prefix}/big");
            let start = Instant::now();
            let r = upload_blob(http, &repo, &blob.data, &blob.digest, LARGE_TIMEOUT).await;
            let elapsed = start.elapsed();
            let mut tally = Tally::default();
            tally.record(
                elapsed,
                Outcome::from_result(2, r.map(|()| blob.data.len() as u64)),
            );
            (tally, elapsed, None)
        }
        (Kind::PushChunked, Prepared::Blob(blob)) => {
            let repo = format!("{prefix}/big");
            let chunk = usize::try_from(o.chunk_mib * 1024 * 1024)?;
            let start = Instant::now();
            let r = upload_chunked(http, &repo, &blob, chunk).await;
            let elapsed = start.elapsed();
            let requests = 2 + blob.data.len().div_ceil(chunk) as u32;
            let mut tally = Tally::default();
            tally.record(
                elapsed,
                Outcome::from_result(requests, r.map(|()| blob.data.len() as u64)),
            );
            (tally, elapsed, None)
        }
        (Kind::Pull | Kind::StaticLarge, _) => {
            let (path, scope, expected) = match (kind, &state.big) {
                (Kind::Pull, Some((digest, size))) => (
                    format!("/v2/{prefix}/big/blobs/{digest}"),
                    format!("repository:{prefix}/big:pull"),
                    Some(*size),
                ),
                (Kind::Pull, None) => bail!("no large blob to pull"),
                _ => ("/large.bin".to_owned(), String::new(), None),
            };
            let url = http.url(&path)?;
            let start = Instant::now();
            let r = download(http, &scope, &url, expected).await;
            let elapsed = start.elapsed();
            let mut tally = Tally::default();
            tally.record(elapsed, Outcome::from_result(1, r));
            (tally, elapsed, None)
        }
        (
            Kind::ManifestGet
            | Kind::ManifestGetToken
            | Kind::ManifestHead
            | Kind::BlobHead
            | Kind::StaticSmall,
            _,
        ) => {
            let base = SmallImage::base();
            let files = o.static_files as u64;
            let (path, scope) = match kind {
                Kind::BlobHead => (
                    format!("/v2/{prefix}/base/blobs/{}", base.layer.digest),
                    format!("repository:{prefix}/base:pull"),
                ),
                Kind::StaticSmall => (String::new(), String::new()),
                Kind::ManifestGetToken => (
                    format!("/v2/{prefix}/base/manifests/latest"),
                    format!("token:{}", pull_scope(&format!("{prefix}/base"))),
                ),
                _ => (
                    format!("/v2/{prefix}/base/manifests/latest"),
                    format!("repository:{prefix}/base:pull"),
                ),
            };
            let head = matches!(kind, Kind::ManifestHead | Kind::BlobHead);
            let urls: Arc<Vec<Url>> = Arc::new(if matches!(kind, Kind::StaticSmall) {
                (0..files)
                    .map(|i| http.url(&format!("/small/{}", data::static_name(i as usize))))
                    .collect::<anyhow::Result<_>>()?
            } else {
                vec![http.url(&path)?]
            });
            let scope: Arc<str> = scope.into();
            let note = if matches!(kind, Kind::StaticSmall) {
                None
            } else if matches!(kind, Kind::ManifestGetToken) {
                Some("Bearer token on every request".to_owned())
            } else {
                Some("anonymous".to_owned())
            };
            let scope_key = scope.clone();
            let op = {
                let http = http.clone();
                move |_worker: usize, seq: u64| {
                    let http = http.clone();
                    let urls = urls.clone();
                    let scope = scope.clone();
                    async move {
                        let url = &urls[(seq % urls.len() as u64) as usize];
                        Outcome::from_result(1, small_request(&http, &scope, url, head).await)
                    }
                }
            };
            let op = Arc::new(op);
            concurrent(c, WARMUP, u64::MAX, op.clone()).await;
            let (tally, elapsed) = concurrent(c, d, u64::MAX, op).await;
            // A registry that challenges anonymous requests (Docker token auth, where even a public
            // pull carries an anonymous or user token) makes every request carry a token.
            let note = note.map(|n| {
                if n == "anonymous" && http.has_auth(&scope_key) {
                    "with a token: the registry challenges anonymous requests (Docker token flow)"
                        .to_owned()
                } else {
                    n
                }
            });
            (tally, elapsed, note)
        }
        (Kind::PushImages, Prepared::Images(images)) => {
            let repo: Arc<str> = format!("{prefix}/img/r{}", run.repeat).into();
            let images = Arc::new(images);
            let count = images.len() as u64;
            let http = http.clone();
            let op = Arc::new(move |_worker: usize, seq: u64| {
                let http = http.clone();
                let images = images.clone();
                let repo = repo.clone();
                async move {
                    let img = &images[seq as usize];
                    let r = push_image(&http, &repo, &format!("i{seq:04}"), img).await;
                    Outcome::from_result(7, r)
                }
            });
            let (tally, elapsed) = concurrent(o.image_concurrency, LARGE_TIMEOUT, count, op).await;
            (tally, elapsed, None)
        }
        (Kind::Mixed, _) => {
            let pull_percent = u64::from(o.mixed_pull_percent);
            let layer_bytes = o.layer_kib * 1024;
            let run = run.clone();
            let op = Arc::new(move |worker: usize, seq: u64| {
                let run = run.clone();
                async move { mixed_op(&run, worker as u64, seq, pull_percent, layer_bytes).await }
            });
            let (tally, elapsed) = concurrent(o.mixed_concurrency, d, u64::MAX, op).await;
            (tally, elapsed, None)
        }
        (Kind::TagsList { .. } | Kind::Catalog { .. }, Prepared::List { url, scope, note }) => {
            let url = Arc::new(url);
            let scope: Arc<str> = scope.into();
            let http = http.clone();
            let op = Arc::new(move |_worker: usize, _seq: u64| {
                let http = http.clone();
                let url = url.clone();
                let scope = scope.clone();
                async move { Outcome::from_result(1, small_request(&http, &scope, &url, false).await) }
            });
            let (tally, elapsed) =
                concurrent(o.list_concurrency, o.list_duration, u64::MAX, op).await;
            (tally, elapsed, Some(note))
        }
        (kind, _) => bail!("internal: {kind:?} was not prepared"),
    })
}

/// One operation of the mixed workload: an image pull (manifest, config, layer) or push.
async fn mixed_op(run: &Run, worker: u64, seq: u64, pull_percent: u64, layer: usize) -> Outcome {
    let mut rng = SplitMix64((run.target_index << 48) ^ (run.repeat << 40) ^ (worker << 32) ^ seq);
    let repo = format!("{}/mixed", run.prefix);
    if rng.below(100) < pull_percent {
        let k = rng.below(MIXED_IMAGES);
        let r = pull_image(&run.http, &repo, &format!("m{k:02}")).await;
        Outcome::from_result(3, r)
    } else {
        let seed = (3 << 40) | (run.target_index << 32) | (run.repeat << 24) | seq;
        let img = SmallImage::new(seed, layer);
        let tag = format!("p{}-{seq}", run.repeat);
        Outcome::from_result(7, push_image(&run.http, &repo, &tag, &img).await)
    }
}

/// Runs `op(worker, seq)` on `workers` clients until `duration` passes or `max_ops`
/// operations started, whichever comes first. Each request has its own timeout, so the run
/// ends at most one request timeout after `duration`.
async fn concurrent<F, Fut>(
    workers: usize,
    duration: Duration,
    max_ops: u64,
    op: Arc<F>,
) -> (Tally, Duration)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let op = op.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= max_ops {
                        break;
                    }
                    let t = Instant::now();
                    let outcome = op(w, seq).await;
                    tally.record(t.elapsed(), outcome);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for h in handles {
        match h.await {
            Ok(t) => total.merge(t),
            Err(e) => total.record(
                Duration::ZERO,
                Outcome {
                    error: Some(format!("worker failed: {e}")),
                    ..Outcome::default()
                },
            ),
        }
    }
    (total, start.elapsed())
}

/// Creates tags and catalog repositories up to the given counts.
async fn populate(
    o: &Options,
    t: &Target,
    state: &mut State,
    tags: usize,
    repos: usize,
) -> anyhow::Result<Vec<Populate>> {
    let tags = tags.min(o.max_entries(&t.name));
    let repos = repos.min(o.max_entries(&t.name));
    let basic = if o.populate_tokens {
        None
    } else {
        t.http.preemptive_basic()?.map(Arc::new)
    };
    let http = basic.as_ref().unwrap_or(&t.http);
    let base = Arc::new(SmallImage::base());
    let from: Arc<str> = format!("{}/base", o.prefix).into();
    let mut out = Vec::new();
    let tag_repo: Arc<str> = format!("{}/tags", o.prefix).into();
    if !state.tags_ready {
        mount_blob(http, &tag_repo, &from, &base.config).await?;
        mount_blob(http, &tag_repo, &from, &base.layer).await?;
        state.tags_ready = true;
    }
    if tags > state.tags {
        let first = state.tags as u64;
        let http = http.clone();
        let (base2, repo) = (base.clone(), tag_repo.clone());
        let op = Arc::new(move |_w: usize, seq: u64| {
            let (http, base, repo) = (http.clone(), base2.clone(), repo.clone());
            async move {
                let tag = format!("t{:06}", first + seq);
                let r = put_manifest(&http, &repo, &tag, &base.manifest).await;
                Outcome::from_result(1, r.map(|()| 0))
            }
        });
        eprintln!("{}: creating tags {} to {tags}", t.name, state.tags);
        let count = (tags - state.tags) as u64;
        let (tally, elapsed) = concurrent(o.populate_concurrency, o.deadline, count, op).await;
        out.push(populate_result(t, "tags", state.tags, tags, tally, elapsed));
        state.tags = tags;
    }
    if repos > state.repos {
        if state.repos == 0 {
            state.repo_manifests = !blob_makes_repository(http, &o.prefix, &from, &base).await?;
        }
        let first = state.repos as u64;
        let http = http.clone();
        let prefix: Arc<str> = o.prefix.as_str().into();
        let full = state.repo_manifests;
        let op = Arc::new(move |_w: usize, seq: u64| {
            let (http, base, from, prefix) =
                (http.clone(), base.clone(), from.clone(), prefix.clone());
            async move {
                let repo = format!("{prefix}/cat/r{:06}", first + seq);
                let r = async {
                    mount_blob(&http, &repo, &from, &base.config).await?;
                    if full {
                        mount_blob(&http, &repo, &from, &base.layer).await?;
                        put_manifest(&http, &repo, "latest", &base.manifest).await?;
                    }
                    Ok(0)
                }
                .await;
                Outcome::from_result(if full { 3 } else { 1 }, r)
            }
        });
        eprintln!(
            "{}: creating repositories {} to {repos}",
            t.name, state.repos
        );
        let count = (repos - state.repos) as u64;
        let (tally, elapsed) = concurrent(o.populate_concurrency, o.deadline, count, op).await;
        out.push(populate_result(
            t,
            "repositories",
            state.repos,
            repos,
            tally,
            elapsed,
        ));
        state.repos = repos;
    }
    for p in &out {
        eprintln!(
            "{}: {} {}→{} in {:.1} s ({:.0} req/s, {} errors)",
            p.target, p.what, p.from, p.to, p.seconds, p.requests_per_s, p.errors
        );
    }
    Ok(out)
}

/// Mounts a blob into `<prefix>/cat/r000000` and tells whether the catalog lists that
/// repository now. Both distribution and Aerugo do, which makes a catalog entry cost one
/// request; registries that list only repositories with manifests get a manifest per entry.
async fn blob_makes_repository(
    http: &RegistryHttp,
    prefix: &str,
    from: &str,
    base: &SmallImage,
) -> anyhow::Result<bool> {
    let repo = format!("{prefix}/cat/r000000");
    mount_blob(http, &repo, from, &base.config).await?;
    let url = http.url(&format!("/v2/_catalog?n=1&last={prefix}/cat/"))?;
    let res = http
        .send("registry:catalog:*", |c| {
            c.get(url.clone()).timeout(SMALL_TIMEOUT)
        })
        .await?;
    let res = expect(res, &[StatusCode::OK], "catalog").await?;
    let json: serde_json::Value = res.json().await?;
    Ok(json["repositories"]
        .as_array()
        .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(repo.as_str()))))
}

fn populate_result(
    t: &Target,
    what: &'static str,
    from: usize,
    to: usize,
    tally: Tally,
    elapsed: Duration,
) -> Populate {
    let seconds = elapsed.as_secs_f64();
    Populate {
        target: t.name.clone(),
        what,
        from,
        to,
        seconds,
        requests_per_s: tally.requests as f64 / seconds.max(1e-9),
        errors: tally.errors,
        first_errors: tally.first_errors,
    }
}

// --- Registry operations -------------------------------------------------------------------

/// Returns `res` when its status is one of `ok`, or an error naming the step and the body.
async fn expect(res: Response, ok: &[StatusCode], what: &str) -> anyhow::Result<Response> {
    if ok.contains(&res.status()) {
        return Ok(res);
    }
    let status = res.status();
    let url = res.url().clone();
    let body = res.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    bail!("{what} {url}: {status} {body}")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// A GET (body read to the end) or HEAD expecting 200; returns the body size.
async fn small_request(
    http: &RegistryHttp,
    scope: &str,
    url: &Url,
    head: bool,
) -> anyhow::Result<u64> {
    let res = http
        .send(scope, |c| {
            let req = if head {
                c.head(url.clone())
            } else {
                c.get(url.clone())
            };
            req.header(ACCEPT, MANIFEST_ACCEPT).timeout(SMALL_TIMEOUT)
        })
        .await?;
    let status = res.status();
    let body = res.bytes().await?;
    if status != StatusCode::OK {
        bail!("{url}: {status}");
    }
    Ok(body.len() as u64)
}

/// Streams a GET body to the end, checking its size when known; returns the bytes read.
async fn download(
    http: &RegistryHttp,
    scope: &str,
    url: &Url,
    expected: Option<u64>,
) -> anyhow::Result<u64> {
    let res = http
        .send(scope, |c| c.get(url.clone()).timeout(LARGE_TIMEOUT))
        .await?;
    let mut res = expect(res, &[StatusCode::OK], "GET").await?;
    let mut n = 0_u64;
    while let Some(chunk) = res.chunk().await? {
        n += chunk.len() as u64;
    }
    if let Some(e) = expected
        && e != n
    {
        bail!("{url}: read {n} bytes, expected {e}");
    }
    Ok(n)
}

/// `POST /v2/<repo>/blobs/uploads/`; returns the upload URL.
async fn start_upload(http: &RegistryHttp, repo: &str) -> anyhow::Result<Url> {
    let url = http.url(&format!("/v2/{repo}/blobs/uploads/"))?;
    let res = http
        .send(&push_scope(repo), |c| {
            c.post(url.clone()).timeout(SMALL_TIMEOUT)
        })
        .await?;
    let res = expect(res, &[StatusCode::ACCEPTED], "POST upload").await?;
    http.location(&res)
}

fn with_digest(mut url: Url, digest: &str) -> Url {
    url.query_pairs_mut().append_pair("digest", digest);
    url
}

/// A monolithic upload: POST, then PUT with the whole body and the digest.
async fn upload_blob(
    http: &RegistryHttp,
    repo: &str,
    data: &Bytes,
    digest: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let location = start_upload(http, repo).await?;
    let put = with_digest(location, digest);
    let res = http
        .send(&push_scope(repo), |c| {
            c.put(put.clone())
                .header(CONTENT_TYPE, OCTET_STREAM)
                .body(data.clone())
                .timeout(timeout)
        })
        .await?;
    expect(res, &[StatusCode::CREATED], "PUT blob").await?;
    Ok(())
}

/// A chunked upload: POST, one PATCH per `chunk` bytes (following `Location`), empty PUT.
async fn upload_chunked(
    http: &RegistryHttp,
    repo: &str,
    blob: &Blob,
    chunk: usize,
) -> anyhow::Result<()> {
    let scope = push_scope(repo);
    let mut location = start_upload(http, repo).await?;
    let len = blob.data.len();
    let mut offset = 0;
    // Bounded: every iteration advances `offset` by at least one byte.
    while offset < len {
        let end = (offset + chunk).min(len);
        let part = blob.data.slice(offset..end);
        let url = location.clone();
        let res = http
            .send(&scope, |c| {
                c.patch(url.clone())
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
                    .body(part.clone())
                    .timeout(LARGE_TIMEOUT)
            })
            .await?;
        let res = expect(res, &[StatusCode::ACCEPTED], "PATCH upload").await?;
        location = http.location(&res)?;
        offset = end;
    }
    let put = with_digest(location, &blob.digest);
    let res = http
        .send(&scope, |c| c.put(put.clone()).timeout(LARGE_TIMEOUT))
        .await?;
    expect(res, &[StatusCode::CREATED], "PUT upload").await?;
    Ok(())
}

/// Cross-repository mount of `blob` from `from`; falls back to uploading it.
async fn mount_blob(
    http: &RegistryHttp,
    repo: &str,
    from: &str,
    blob: &Blob,
) -> anyhow::Result<()> {
    let url = http.url(&format!(
        "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
        blob.digest
    ))?;
    let res = http
        .send(&push_scope(repo), |c| {
            c.post(url.clone()).timeout(SMALL_TIMEOUT)
        })
        .await?;
    let res = expect(res, &[StatusCode::CREATED, StatusCode::ACCEPTED], "mount").await?;
    if res.status() == StatusCode::CREATED {
        return Ok(());
    }
    let put = with_digest(http.location(&res)?, &blob.digest);
    let res = http
        .send(&push_scope(repo), |c| {
            c.put(put.clone())
                .header(CONTENT_TYPE, OCTET_STREAM)
                .body(blob.data.clone())
                .timeout(SMALL_TIMEOUT)
        })
        .await?;
    expect(res, &[StatusCode::CREATED], "PUT blob after refused mount").await?;
    Ok(())
}

/// `PUT /v2/<repo>/manifests/<reference>`.
async fn put_manifest(
    http: &RegistryHttp,
    repo: &str,
    reference: &str,
    manifest: &Blob,
) -> anyhow::Result<()> {
    let url = http.url(&format!("/v2/{repo}/manifests/{reference}"))?;
    let res = http
        .send(&push_scope(repo), |c| {
            c.put(url.clone())
                .header(CONTENT_TYPE, MANIFEST_TYPE)
                .body(manifest.data.clone())
                .timeout(SMALL_TIMEOUT)
        })
        .await?;
    expect(res, &[StatusCode::CREATED], "PUT manifest").await?;
    Ok(())
}

/// Pushes an image the way clients do: per blob a HEAD, then POST + PUT when missing, then
/// the manifest. Returns the bytes uploaded.
async fn push_image(
    http: &RegistryHttp,
    repo: &str,
    tag: &str,
    img: &SmallImage,
) -> anyhow::Result<u64> {
    let scope = push_scope(repo);
    let mut bytes = 0;
    for blob in [&img.config, &img.layer] {
        let url = http.url(&format!("/v2/{repo}/blobs/{}", blob.digest))?;
        let res = http
            .send(&scope, |c| c.head(url.clone()).timeout(SMALL_TIMEOUT))
            .await?;
        let res = expect(res, &[StatusCode::OK, StatusCode::NOT_FOUND], "HEAD blob").await?;
        if res.status() == StatusCode::NOT_FOUND {
            upload_blob(http, repo, &blob.data, &blob.digest, SMALL_TIMEOUT).await?;
            bytes += blob.data.len() as u64;
        }
    }
    put_manifest(http, repo, tag, &img.manifest).await?;
    Ok(bytes + img.manifest.data.len() as u64)
}

/// Pulls an image: the manifest by tag, then its config and layer. Returns the bytes read.
async fn pull_image(http: &RegistryHttp, repo: &str, tag: &str) -> anyhow::Result<u64> {
    let scope = pull_scope(repo);
    let url = http.url(&format!("/v2/{repo}/manifests/{tag}"))?;
    let res = http
        .send(&scope, |c| {
            c.get(url.clone())
                .header(ACCEPT, MANIFEST_ACCEPT)
                .timeout(SMALL_TIMEOUT)
        })
        .await?;
    let res = expect(res, &[StatusCode::OK], "GET manifest").await?;
    let body = res.bytes().await?;
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    let mut bytes = body.len() as u64;
    let digests = std::iter::once(&json["config"])
        .chain(json["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["digest"].as_str());
    for digest in digests {
        let url = http.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        bytes += download(http, &scope, &url, None).await?;
    }
    Ok(bytes)
}
