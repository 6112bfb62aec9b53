//! Command-line parsing for `aerugo-bench`, with the documented defaults.
//!
//! Hand-written rather than derived so the testkit needs no argument-parsing dependency;
//! `--quick` applies a preset first and explicit flags override it, whatever their order.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The help text; the defaults written here are the ones [`Options::default`] sets.
pub(crate) const USAGE: &str = "\
aerugo-bench: measure OCI registries over the Distribution API (loopback only).

USAGE:
  aerugo-bench run --target NAME=URL [--target NAME=URL ...] [options]
  aerugo-bench static-files DIR [--static-files N] [--blob-mib N]
  aerugo-bench free-ports N
  aerugo-bench sha256 [--blob-mib N]   one core's SHA-256 rate (the sha2 crate Aerugo uses), MB/s
  aerugo-bench wait URL [--timeout SECS]

RUN OPTIONS (defaults in brackets; --quick values in braces):
  --target NAME=URL          a registry to measure; targets alternate in this order
  --pid NAME=PID             its server process, for CPU time and peak RSS
  --fsync NAME               target NAME fsyncs every blob before answering (decides which of
                             the two blob push targets applies to it)
  --max-entries NAME=N       create at most N tags and N repositories on target NAME and skip
                             its list runs above that (for registries that write slowly)
  --static URL               static-file server with /small/fNNN and /large.bin (written by
                             `static-files`), measured as the same-client ceiling
  --static-files N           number of small static files [100]
  --username U, --password P Basic credentials sent to a Docker token realm (or Basic challenge)
  --prefix P                 repository prefix [bench]
  --repeats N                alternating rounds per workload; the median run is reported [3] {1}
  --duration SECS            length of each concurrent run [3] {2}
  --concurrency N            clients for manifest GET/HEAD, blob HEAD, static GET [64]
  --blob-mib N               size of the large blob [256]
  --chunk-mib N              PATCH size of the chunked push [8]
  --tags N,M                 tag counts of the two tags-list measurements [10000,100000] {1000,10000}
  --repos N,M                repository counts of the two catalog measurements [10000,100000] {1000,10000}
  --page N                   page size of tags/catalog requests [100]
  --populate-concurrency N   clients that create tags and repositories [16]
  --populate-tokens          create them through the token flow (a token per repository, as
                             clients do) instead of sending the Basic credentials up front
  --list-duration SECS       length of each tags/catalog run [1.5] {1}
  --list-concurrency N       clients for tags/catalog [4]
  --images N                 small images pushed end to end [100]
  --image-concurrency N      clients pushing them [8]
  --layer-kib N              layer size of small images [16]
  --mixed-concurrency N      clients of the mixed workload [16]
  --mixed-pull-percent N     share of pulls in the mixed workload [95]
  --sha256-mbps X            one core's SHA-256 rate (MB/s), for the targets
  --dd-mbps X                dd write rate without fsync (MB/s), for the targets
  --dd-fsync-mbps X          dd write rate with fsync (MB/s), for the targets
  --only W1,W2               run only these workloads (names or prefixes, as in the output)
  --deadline SECS            skip the remaining workloads after this long [1200]
  --json FILE                write the results as JSON
  --markdown FILE            write the results as markdown tables
  --quick                    the shorter preset shown in braces
";

/// What to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Print [`USAGE`].
    Help,
    /// Print `n` free loopback ports.
    FreePorts(usize),
    /// Print one core's SHA-256 rate over `mib` MiB, in MB/s.
    Sha256 {
        /// How much to hash.
        mib: u64,
    },
    /// Wait for a URL to answer.
    Wait {
        /// The URL to poll.
        url: String,
        /// How long to wait at most.
        timeout: Duration,
    },
    /// Write the static-file ceiling's files.
    StaticFiles {
        /// Where to write them.
        dir: PathBuf,
        /// How many small files.
        files: usize,
        /// Size of the large file.
        blob_mib: u64,
    },
    /// Run the workloads.
    Run(Box<Options>),
}

/// Reference rates measured outside this process, used to judge the targets.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Context {
    /// One core's SHA-256 rate in MB/s.
    pub(crate) sha256_mbps: Option<f64>,
    /// `dd` write rate without fsync in MB/s.
    pub(crate) dd_mbps: Option<f64>,
    /// `dd` write rate with fsync in MB/s.
    pub(crate) dd_fsync_mbps: Option<f64>,
}

/// Everything `run` needs; see [`USAGE`] for the meaning of each field.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Options {
    pub(crate) targets: Vec<(String, String)>,
    pub(crate) pids: Vec<(String, u32)>,
    pub(crate) max_entries: Vec<(String, usize)>,
    pub(crate) fsync: Vec<String>,
    pub(crate) static_url: Option<String>,
    pub(crate) static_files: usize,
    pub(crate) username: Option<String>,
    #[serde(skip)]
    pub(crate) password: Option<String>,
    pub(crate) prefix: String,
    pub(crate) repeats: usize,
    pub(crate) duration: Duration,
    pub(crate) concurrency: usize,
    pub(crate) blob_mib: u64,
    pub(crate) chunk_mib: u64,
    pub(crate) tags: (usize, usize),
    pub(crate) repos: (usize, usize),
    pub(crate) page: usize,
    pub(crate) populate_concurrency: usize,
    pub(crate) populate_tokens: bool,
    pub(crate) list_duration: Duration,
    pub(crate) list_concurrency: usize,
    pub(crate) images: usize,
    pub(crate) image_concurrency: usize,
    pub(crate) layer_kib: usize,
    pub(crate) mixed_concurrency: usize,
    pub(crate) mixed_pull_percent: u32,
    pub(crate) context: Context,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) deadline: Duration,
    pub(crate) json: Option<PathBuf>,
    pub(crate) markdown: Option<PathBuf>,
    pub(crate) quick: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            pids: Vec::new(),
            max_entries: Vec::new(),
            fsync: Vec::new(),
            static_url: None,
            static_files: 100,
            username: None,
            password: None,
            prefix: "bench".into(),
            repeats: 3,
            duration: Duration::from_secs(3),
            concurrency: 64,
            blob_mib: 256,
            chunk_mib: 8,
            tags: (10_000, 100_000),
            repos: (10_000, 100_000),
            page: 100,
            populate_concurrency: 16,
            populate_tokens: false,
            list_duration: Duration::from_millis(1500),
            list_concurrency: 4,
            images: 100,
            image_concurrency: 8,
            layer_kib: 16,
            mixed_concurrency: 16,
            mixed_pull_percent: 95,
            context: Context::default(),
            only: None,
            deadline: Duration::from_secs(1200),
            json: None,
            markdown: None,
            quick: false,
        }
    }
}

impl Options {
    fn quick() -> Self {
        Self {
            repeats: 1,
            duration: Duration::from_secs(2),
            tags: (1_000, 10_000),
            repos: (1_000, 10_000),
            list_duration: Duration::from_secs(1),
            quick: true,
            ..Self::default()
        }
    }

    /// Whether the workload called `name` is selected by `--only` (names or name prefixes).
    pub(crate) fn selected(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| name.starts_with(o.as_str())))
    }

    /// The most tags or repositories target `name` gets.
    pub(crate) fn max_entries(&self, name: &str) -> usize {
        self.max_entries
            .iter()
            .find(|(n, _)| n == name)
            .map_or(usize::MAX, |(_, m)| *m)
    }

    /// The PID given for target `name`.
    pub(crate) fn pid(&self, name: &str) -> Option<u32> {
        self.pids.iter().find(|(n, _)| n == name).map(|(_, p)| *p)
    }
}

/// Parses the command line (without the program name).
pub(crate) fn parse(args: Vec<String>) -> anyhow::Result<Command> {
    let mut args = args.into_iter();
    let Some(sub) = args.next() else {
        return Ok(Command::Help);
    };
    let rest: Vec<String> = args.collect();
    match sub.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "free-ports" => {
            let n = rest.first().map_or(Ok(1), |n| number(n, "free-ports N"))?;
            Ok(Command::FreePorts(n))
        }
        "sha256" => {
            let flags = Flags::split(rest)?;
            let mut mib = Options::default().blob_mib;
            for (key, value) in &flags.pairs {
                match key.as_str() {
                    "blob-mib" => mib = number(value, key)?,
                    _ => bail!("unknown option --{key} for sha256"),
                }
            }
            anyhow::ensure!((1..=4096).contains(&mib), "--blob-mib must be in 1..=4096");
            Ok(Command::Sha256 { mib })
        }
        "wait" => {
            let flags = Flags::split(rest)?;
            let [url] = flags.positional.as_slice() else {
                bail!("usage: aerugo-bench wait URL [--timeout SECS]");
            };
            let mut timeout = Duration::from_secs(30);
            for (key, value) in &flags.pairs {
                match key.as_str() {
                    "timeout" => timeout = seconds(value, key)?,
                    _ => bail!("unknown option --{key} for wait"),
                }
            }
            Ok(Command::Wait {
                url: url.clone(),
                timeout,
            })
        }
        "static-files" => {
            let flags = Flags::split(rest)?;
            let [dir] = flags.positional.as_slice() else {
                bail!("usage: aerugo-bench static-files DIR [--static-files N] [--blob-mib N]");
            };
            let mut files = Options::default().static_files;
            let mut blob_mib = Options::default().blob_mib;
            for (key, value) in &flags.pairs {
                match key.as_str() {
                    "static-files" => files = number(value, key)?,
                    "blob-mib" => blob_mib = number(value, key)?,
                    _ => bail!("unknown option --{key} for static-files"),
                }
            }
            Ok(Command::StaticFiles {
                dir: dir.into(),
                files,
                blob_mib,
            })
        }
        "run" => parse_run(rest).map(|o| Command::Run(Box::new(o))),
        other => bail!("unknown command {other:?}; see aerugo-bench --help"),
    }
}

fn parse_run(args: Vec<String>) -> anyhow::Result<Options> {
    let flags = Flags::split(args)?;
    if let Some(p) = flags.positional.first() {
        bail!("unexpected argument {p:?}");
    }
    let mut o = if flags.pairs.iter().any(|(k, _)| k == "quick") {
        Options::quick()
    } else {
        Options::default()
    };
    for (key, value) in &flags.pairs {
        let k = key.as_str();
        match k {
            "quick" => {}
            "target" => {
                let (name, url) = value
                    .split_once('=')
                    .with_context(|| format!("--target wants NAME=URL, got {value:?}"))?;
                if o.targets.iter().any(|(n, _)| n == name) {
                    bail!("target {name:?} given twice");
                }
                o.targets.push((name.to_owned(), url.to_owned()));
            }
            "pid" => {
                let (name, pid) = value
                    .split_once('=')
                    .with_context(|| format!("--pid wants NAME=PID, got {value:?}"))?;
                o.pids.push((name.to_owned(), number(pid, k)?));
            }
            "max-entries" => {
                let (name, n) = value
                    .split_once('=')
                    .with_context(|| format!("--max-entries wants NAME=N, got {value:?}"))?;
                o.max_entries.push((name.to_owned(), number(n, k)?));
            }
            "fsync" => o.fsync.push(value.clone()),
            "static" => o.static_url = Some(value.clone()),
            "static-files" => o.static_files = number(value, k)?,
            "username" => o.username = Some(value.clone()),
            "password" => o.password = Some(value.clone()),
            "prefix" => o.prefix = value.trim_matches('/').to_owned(),
            "repeats" => o.repeats = number(value, k)?,
            "duration" => o.duration = seconds(value, k)?,
            "concurrency" => o.concurrency = number(value, k)?,
            "blob-mib" => o.blob_mib = number(value, k)?,
            "chunk-mib" => o.chunk_mib = number(value, k)?,
            "tags" => o.tags = pair(value, k)?,
            "repos" => o.repos = pair(value, k)?,
            "page" => o.page = number(value, k)?,
            "populate-concurrency" => o.populate_concurrency = number(value, k)?,
            "populate-tokens" => o.populate_tokens = true,
            "list-duration" => o.list_duration = seconds(value, k)?,
            "list-concurrency" => o.list_concurrency = number(value, k)?,
            "images" => o.images = number(value, k)?,
            "image-concurrency" => o.image_concurrency = number(value, k)?,
            "layer-kib" => o.layer_kib = number(value, k)?,
            "mixed-concurrency" => o.mixed_concurrency = number(value, k)?,
            "mixed-pull-percent" => o.mixed_pull_percent = number(value, k)?,
            "sha256-mbps" => o.context.sha256_mbps = Some(number(value, k)?),
            "dd-mbps" => o.context.dd_mbps = Some(number(value, k)?),
            "dd-fsync-mbps" => o.context.dd_fsync_mbps = Some(number(value, k)?),
            "only" => o.only = Some(value.split(',').map(str::to_owned).collect()),
            "deadline" => o.deadline = seconds(value, k)?,
            "json" => o.json = Some(value.into()),
            "markdown" => o.markdown = Some(value.into()),
            _ => bail!("unknown option --{k}; see aerugo-bench --help"),
        }
    }
    validate(&o)?;
    Ok(o)
}

fn validate(o: &Options) -> anyhow::Result<()> {
    if o.targets.is_empty() {
        bail!("give at least one --target NAME=URL");
    }
    let named = o
        .pids
        .iter()
        .map(|(n, _)| n)
        .chain(o.max_entries.iter().map(|(n, _)| n))
        .chain(&o.fsync);
    for name in named {
        if !o.targets.iter().any(|(n, _)| n == name) {
            bail!("--pid, --fsync or --max-entries names {name:?}, which is not a --target");
        }
    }
    let positive = [
        ("repeats", o.repeats),
        ("concurrency", o.concurrency),
        ("blob-mib", o.blob_mib as usize),
        ("chunk-mib", o.chunk_mib as usize),
        ("page", o.page),
        ("populate-concurrency", o.populate_concurrency),
        ("list-concurrency", o.list_concurrency),
        ("images", o.images),
        ("image-concurrency", o.image_concurrency),
        ("mixed-concurrency", o.mixed_concurrency),
        ("static-files", o.static_files),
    ];
    for (name, v) in positive {
        if v == 0 {
            bail!("--{name} must be positive");
        }
    }
    // Upper bounds keep a typo from turning into an hour-long run or an exhausted machine.
    if o.repeats > 20 || o.concurrency > 1024 || o.blob_mib > 4096 || o.chunk_mib > o.blob_mib {
        bail!(
            "--repeats ≤ 20, --concurrency ≤ 1024, --blob-mib ≤ 4096 and --chunk-mib ≤ --blob-mib"
        );
    }
    if o.tags.0 > o.tags.1 || o.repos.0 > o.repos.1 || o.tags.1 > 1_000_000 || o.repos.1 > 1_000_000
    {
        bail!("--tags and --repos want N,M with N ≤ M ≤ 1000000");
    }
    if o.mixed_pull_percent > 100 {
        bail!("--mixed-pull-percent is a percentage");
    }
    Ok(())
}

/// `--key value` and `--key=value` pairs (a flag without a value gets ""), plus positionals.
struct Flags {
    pairs: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Flags {
    fn split(args: Vec<String>) -> anyhow::Result<Self> {
        const SWITCHES: &[&str] = &["quick", "populate-tokens"];
        let mut pairs = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                positional.push(arg);
                continue;
            };
            if let Some((k, v)) = flag.split_once('=') {
                pairs.push((k.to_owned(), v.to_owned()));
            } else if SWITCHES.contains(&flag) {
                pairs.push((flag.to_owned(), String::new()));
            } else {
                let value = it
                    .next()
                    .with_context(|| format!("--{flag} needs a value"))?;
                pairs.push((flag.to_owned(), value));
            }
        }
        Ok(Self { pairs, positional })
    }
}

fn number<T: std::str::FromStr>(value: &str, key: &str) -> anyhow::Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--{key}: {value:?} is not a valid number"))
}

fn seconds(value: &str, key: &str) -> anyhow::Result<Duration> {
    let secs: f64 = number(value, key)?;
    if !(0.0..=86_400.0).contains(&secs) {
        bail!("--{key}: {value} seconds is out of range");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn pair(value: &str, key: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = value
        .split_once(',')
        .with_context(|| format!("--{key} wants N,M, got {value:?}"))?;
    Ok((number(a, key)?, number(b, key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn quick_is_a_preset_that_explicit_flags_override() {
        let Command::Run(o) = parse(args(
            "run --repeats 2 --target a=http://127.0.0.1:1 --quick",
        ))
        .unwrap() else {
            panic!("not a run");
        };
        assert_eq!(o.repeats, 2);
        assert_eq!(o.tags, (1_000, 10_000));
        assert!(o.quick);
    }

    #[test]
    fn pids_must_name_a_target() {
        let err = parse(args("run --target a=http://127.0.0.1:1 --pid b=3")).unwrap_err();
        assert!(err.to_string().contains("not a --target"), "{err}");
    }

    #[test]
    fn values_may_follow_an_equals_sign() {
        let Command::Run(o) = parse(args(
            "run --target=a=http://127.0.0.1:1 --pid=a=42 --tags=5,50 --duration=0.5",
        ))
        .unwrap() else {
            panic!("not a run");
        };
        assert_eq!(o.targets, vec![("a".into(), "http://127.0.0.1:1".into())]);
        assert_eq!(o.pid("a"), Some(42));
        assert_eq!(o.tags, (5, 50));
        assert_eq!(o.duration, Duration::from_millis(500));
    }
}
