//! The server's own counters around a run, read from its Prometheus `/metrics` page: database
//! queries and cache lookups, so a run can say how many queries a request cost and how often the
//! cache answered. Registries without such a page (or without these counters) get no numbers.
//!
//! Only the few counters below are read; the parser understands the text exposition format's
//! sample lines (`name{label="value",...} number`) and skips everything else.

use super::http::{RegistryHttp, SMALL_TIMEOUT};

/// Database queries (every operation of the metadata store).
const DB_QUERIES: &str = "aerugo_db_queries_total";
/// Cache lookups by cache, tier and result.
const CACHE_REQUESTS: &str = "aerugo_cache_requests_total";

/// The counters a run compares before and after.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Counters {
    /// Database queries.
    pub(crate) db_queries: f64,
    /// Lookups answered by the node's own cache.
    pub(crate) local_hits: f64,
    /// Lookups the node's own cache missed.
    pub(crate) local_misses: f64,
    /// Local misses the shared (Redis) tier answered.
    pub(crate) shared_hits: f64,
}

impl Counters {
    /// Sums the counters of a `/metrics` page; `None` when it has no database counter at all
    /// (not an Aerugo page).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut c = Counters::default();
        let mut seen = false;
        for line in text.lines() {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            match name {
                DB_QUERIES => {
                    seen = true;
                    c.db_queries += value;
                }
                CACHE_REQUESTS => match (label(labels, "tier"), label(labels, "result")) {
                    (Some("local"), Some("hit")) => c.local_hits += value,
                    (Some("local"), Some("miss")) => c.local_misses += value,
                    (Some(_), Some("hit")) => c.shared_hits += value,
                    _ => {}
                },
                _ => {}
            }
        }
        seen.then_some(c)
    }

    /// What happened between `self` (before) and `after`, for `requests` HTTP requests.
    pub(crate) fn delta(&self, after: &Counters, requests: u64) -> RunCounters {
        let lookups = after.local_hits + after.local_misses - self.local_hits - self.local_misses;
        let hits = after.local_hits + after.shared_hits - self.local_hits - self.shared_hits;
        let queries = after.db_queries - self.db_queries;
        RunCounters {
            db_queries_per_request: (requests > 0).then(|| queries / requests as f64),
            cache_hit_ratio: (lookups > 0.0).then(|| (hits / lookups).clamp(0.0, 1.0)),
        }
    }
}

/// A run's server-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RunCounters {
    /// Database queries per HTTP request of the run.
    pub(crate) db_queries_per_request: Option<f64>,
    /// Share of cache lookups answered by a cache tier (the node's own, or the shared one).
    pub(crate) cache_hit_ratio: Option<f64>,
}

/// Reads the counters of the server behind `http`; `None` when it has no Aerugo `/metrics`.
pub(crate) async fn scrape(http: &RegistryHttp) -> Option<Counters> {
    let url = http.url("/metrics").ok()?;
    let res = http
        .send("", |c| c.get(url.clone()).timeout(SMALL_TIMEOUT))
        .await
        .ok()?;
    if !res.status().is_success() {
        return None;
    }
    Counters::parse(&res.text().await.ok()?)
}

/// Splits a sample line into name, label text and value.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.trim_end().rsplit_once(' ')?;
    let value = value.parse().ok()?;
    match series.split_once('{') {
        Some((name, rest)) => Some((name, rest.strip_suffix('}')?, value)),
        None => Some((series, "", value)),
    }
}

/// The value of `key` in a label text (`a="x",b="y"`). Values in these counters hold no quotes or
/// commas, so a plain split is enough.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP aerugo_db_queries_total Database operations.
# TYPE aerugo_db_queries_total counter
aerugo_db_queries_total{op="read"} 10
aerugo_db_queries_total{op="write"} 5
aerugo_cache_requests_total{cache="tags",tier="local",result="hit"} 90
aerugo_cache_requests_total{cache="tags",tier="local",result="miss"} 10
aerugo_cache_requests_total{cache="tags",tier="redis",result="hit"} 4
aerugo_cache_requests_total{cache="tags",tier="redis",result="miss"} 6
aerugo_http_requests_total{route="/v2/",method="GET",status="200"} 3
"#;

    #[test]
    fn counters_sum_across_labels() {
        let c = Counters::parse(PAGE).unwrap();
        assert_eq!(c.db_queries, 15.0);
        assert_eq!(c.local_hits, 90.0);
        assert_eq!(c.local_misses, 10.0);
        assert_eq!(c.shared_hits, 4.0);
    }

    #[test]
    fn a_page_without_aerugo_counters_gives_nothing() {
        assert_eq!(Counters::parse("go_goroutines 12\n"), None);
        assert_eq!(Counters::parse("404 page not found"), None);
    }

    #[test]
    fn delta_gives_queries_per_request_and_the_hit_ratio() {
        let before = Counters::parse(PAGE).unwrap();
        let after = Counters {
            db_queries: 17.0,
            local_hits: 188.0,
            local_misses: 12.0,
            shared_hits: 5.0,
        };
        let d = before.delta(&after, 100);
        assert_eq!(d.db_queries_per_request, Some(0.02));
        // 98 local hits and 1 shared hit out of 100 lookups.
        assert_eq!(d.cache_hit_ratio, Some(0.99));
        // No lookups, no requests: no numbers rather than 0 or NaN.
        let none = before.delta(&before, 0);
        assert_eq!(none, RunCounters::default());
    }
}
