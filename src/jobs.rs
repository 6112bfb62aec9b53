//! Background work: periodic jobs under a lease and consumers of the work queue, run by every
//! node (`app → jobs → service`).
//!
//! A [`Runner`] holds the jobs of one node, named by a node id that is the holder of its leases
//! and claims. Every run has a span (`job`, `node.id`) and is counted in
//! `aerugo_job_runs_total{job, outcome}`; the queue's depth, the age of its oldest item and its
//! dead letters are published per topic. Time comes from one [`Clock`]: the database's in
//! production (so nodes whose clocks disagree still agree on leases and claims), a manual one in
//! tests, which then need no sleeps.
//!
//! Invariants: a consumer re-checks whatever it acts on (running an item twice is harmless); an
//! item is completed only after its effect; an error makes it due again with a growing delay and,
//! after `jobs.max_attempts`, buries it. On shutdown the loops stop taking work, what is running
//! finishes within the grace, and the node gives up its leases.
//!
//! Must not depend on `api`, `meta`, `storage` or `cache`: everything goes through `service`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::Instrument as _;

use crate::config::Config;
use crate::service::{self, Registry, WorkItem};

mod discard;
mod prune;
mod purge;
#[cfg(test)]
mod runs;

/// Where a runner takes the time from.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The metadata store's clock.
    Database,
    /// A clock the caller sets (tests), in milliseconds since the Unix epoch.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock reading `ms`.
    pub fn manual(ms: i64) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(ms)))
    }

    /// Moves a manual clock forward by `by` (no effect on the database clock).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            t.fetch_add(
                i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
                Ordering::SeqCst,
            );
        }
    }

    /// The current time in milliseconds since the Unix epoch.
    pub async fn now(&self, registry: &Registry) -> service::Result<i64> {
        match self {
            Clock::Database => registry.database_now().await,
            Clock::Manual(t) => Ok(t.load(Ordering::SeqCst)),
        }
    }
}

/// A job run every `interval`, by one node at a time when `exclusive` (under a lease named after
/// the job), else by every node.
pub(crate) trait Periodic: Send + Sync {
    /// Its name (lease, span and metric label).
    fn name(&self) -> &'static str;
    /// Time between two runs on one node.
    fn interval(&self) -> Duration;
    /// Whether one node at a time runs it.
    fn exclusive(&self) -> bool {
        true
    }
    /// One run at `now`; how many things it did.
    fn run<'a>(&'a self, registry: &'a Registry, now: i64) -> BoxFuture<'a, service::Result<u64>>;
}

/// A consumer of one topic of the work queue.
pub(crate) trait Consumer: Send + Sync {
    /// The topic.
    fn topic(&self) -> &'static str;
    /// Carries out one item. Must be idempotent: an item may run more than once.
    fn handle<'a>(
        &'a self,
        registry: &'a Registry,
        item: &'a WorkItem,
    ) -> BoxFuture<'a, service::Result<()>>;
}

/// Settings of a runner.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Poll interval of the consumers when nothing woke them.
    pub poll: Duration,
    /// Claim lease.
    pub claim_lease: Duration,
    /// Items per claim.
    pub batch: u32,
    /// Attempts before an item is buried.
    pub max_attempts: i64,
    /// Test only (`jobs.test_hold_claims_ms`): how long a consumer waits between claiming items
    /// and carrying them out; zero in production.
    pub hold_claims: Duration,
}

impl Settings {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            poll: Duration::from_millis(config.jobs.poll_interval_ms),
            claim_lease: Duration::from_secs(config.jobs.claim_lease_seconds),
            batch: config.jobs.batch_size,
            max_attempts: i64::from(config.jobs.max_attempts),
            hold_claims: Duration::from_millis(config.jobs.test_hold_claims_ms),
        }
    }
}

/// The jobs of one node.
pub struct Runner {
    registry: Registry,
    node: String,
    clock: Clock,
    settings: Settings,
    periodic: Vec<Arc<dyn Periodic>>,
    consumers: Vec<Arc<dyn Consumer>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("node", &self.node)
            .field(
                "periodic",
                &self.periodic.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "consumers",
                &self.consumers.iter().map(|c| c.topic()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What one consumer pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Items claimed.
    pub claimed: usize,
    /// Items carried out and completed.
    pub done: usize,
    /// Items that failed and will be retried.
    pub retried: usize,
    /// Items that failed for the last time.
    pub buried: usize,
}

/// Base delay before an item that failed is retried; doubled per attempt up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest delay between two attempts of an item.
const RETRY_CAP: Duration = Duration::from_secs(600);

/// The delay before the attempt after `attempts` failed ones.
pub(crate) fn retry_delay(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    RETRY_BASE.saturating_mul(1u32 << exp).min(RETRY_CAP)
}

/// An error with its sources (`internal error: unreadable discard payload: …`): what a dead letter
/// records as its last error and what the logs show, so an operator sees the cause.
fn error_chain(e: &service::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Runner {
    /// A runner without jobs (add them with the `with_*` methods, or use [`Runner::standard`]).
    pub fn new(registry: Registry, node: String, clock: Clock, settings: Settings) -> Self {
        Self {
            registry,
            node,
            clock,
            settings,
            periodic: Vec::new(),
            consumers: Vec::new(),
        }
    }

    /// The node's jobs as configured: the upload purge (unless turned off), the change-log
    /// prune, the queue statistics and the consumer that deletes discarded objects.
    pub fn standard(registry: Registry, node: String, clock: Clock, config: &Config) -> Self {
        let mut runner = Self::new(registry, node, clock, Settings::from_config(config));
        let max_age = Duration::from_secs(config.registry.upload_max_age_seconds);
        if max_age.is_zero() {
            tracing::info!("upload purge off (registry.upload_max_age_seconds = 0)");
        } else {
            runner.periodic.push(Arc::new(purge::UploadPurge {
                max_age,
                interval: Duration::from_secs(config.registry.upload_purge_interval_seconds),
            }));
        }
        runner.periodic.push(Arc::new(prune::ChangePrune {
            retention: Duration::from_secs(config.jobs.change_retention_hours * 3600),
        }));
        runner.periodic.push(Arc::new(prune::QueueStats {
            topics: vec![service::DISCARD_TOPIC],
        }));
        runner.consumers.push(Arc::new(discard::DiscardObjects));
        runner
    }

    /// The node id (holder of leases and claims).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn job(&self, name: &str) -> Option<Arc<dyn Periodic>> {
        self.periodic.iter().find(|p| p.name() == name).cloned()
    }

    fn consumer(&self, topic: &str) -> Option<Arc<dyn Consumer>> {
        self.consumers.iter().find(|c| c.topic() == topic).cloned()
    }

    /// Runs the periodic job `name` once now: `None` when another node holds its lease (or no
    /// such job is registered), else what it did.
    pub async fn run_periodic(&self, name: &str) -> service::Result<Option<u64>> {
        let Some(job) = self.job(name) else {
            return Ok(None);
        };
        self.run_job(job.as_ref()).await
    }

    async fn run_job(&self, job: &dyn Periodic) -> service::Result<Option<u64>> {
        let span = tracing::info_span!("job", job = job.name(), node.id = %self.node);
        async {
            let started = std::time::Instant::now();
            let outcome = async {
                let now = self.clock.now(&self.registry).await?;
                if job.exclusive() {
                    // The lease outlives two intervals, so a holder that stops renewing it frees
                    // it soon, and one that keeps running keeps it.
                    let ttl = millis(job.interval().saturating_mul(2)).max(1);
                    if !self
                        .registry
                        .try_lease(job.name(), &self.node, now, ttl)
                        .await?
                    {
                        return Ok(None);
                    }
                }
                job.run(&self.registry, now).await.map(Some)
            }
            .await;
            let label = match &outcome {
                Ok(Some(_)) => "ok",
                Ok(None) => "skipped",
                Err(_) => "failed",
            };
            metrics::counter!("aerugo_job_runs_total", "job" => job.name(), "outcome" => label)
                .increment(1);
            metrics::histogram!("aerugo_job_duration_seconds", "job" => job.name())
                .record(started.elapsed().as_secs_f64());
            match &outcome {
                Ok(Some(n)) if *n > 0 => tracing::info!(job = job.name(), done = n, "job ran"),
                Err(e) => {
                    tracing::warn!(job = job.name(), error = %error_chain(e), "job failed; trying again later")
                }
                _ => {}
            }
            outcome
        }
        .instrument(span)
        .await
    }

    /// Claims one batch of `topic` and carries it out: each item is completed after its effect,
    /// or, when that fails, made due again later or buried after the last attempt.
    pub async fn drain_once(&self, topic: &str) -> service::Result<Pass> {
        let Some(consumer) = self.consumer(topic) else {
            return Ok(Pass::default());
        };
        let now = self.clock.now(&self.registry).await?;
        let items = self
            .registry
            .claim_work(
                topic,
                &self.node,
                now,
                millis(self.settings.claim_lease),
                self.settings.batch,
            )
            .await?;
        let mut pass = Pass {
            claimed: items.len(),
            ..Pass::default()
        };
        if !items.is_empty() && !self.settings.hold_claims.is_zero() {
            // Process tests kill a node here, while it holds the claims.
            tracing::warn!(
                job = topic,
                node.id = %self.node,
                claimed = items.len(),
                hold_ms = self.settings.hold_claims.as_millis(),
                "holding claimed work items (jobs.test_hold_claims_ms)"
            );
            tokio::time::sleep(self.settings.hold_claims).await;
        }
        for item in &items {
            let span = tracing::info_span!(
                "job",
                job = topic,
                node.id = %self.node,
                work.key = %item.key,
                work.attempt = item.attempts
            );
            let result = consumer.handle(&self.registry, item).instrument(span).await;
            let outcome = match result {
                Ok(()) => {
                    self.registry.complete_work(item, &self.node).await?;
                    pass.done += 1;
                    "ok"
                }
                Err(e) => {
                    let now = self.clock.now(&self.registry).await?;
                    let last = item.attempts >= self.settings.max_attempts;
                    let retry_at = (!last).then(|| now + millis(retry_delay(item.attempts)));
                    let error = error_chain(&e);
                    self.registry
                        .fail_work(item, &self.node, now, &error, retry_at)
                        .await?;
                    if last {
                        pass.buried += 1;
                        tracing::error!(job = topic, work.key = %item.key, attempts = item.attempts, error = %error, "work item buried after its last attempt");
                        "buried"
                    } else {
                        pass.retried += 1;
                        tracing::warn!(job = topic, work.key = %item.key, attempts = item.attempts, error = %error, "work item failed; retrying later");
                        "retry"
                    }
                }
            };
            metrics::counter!(
                "aerugo_job_runs_total",
                "job" => consumer.topic(),
                "outcome" => outcome
            )
            .increment(1);
        }
        Ok(pass)
    }

    /// Drains `topic` until a pass finds nothing due.
    pub async fn drain(&self, topic: &str) -> service::Result<Pass> {
        let mut total = Pass::default();
        loop {
            let pass = self.drain_once(topic).await?;
            total.claimed += pass.claimed;
            total.done += pass.done;
            total.retried += pass.retried;
            total.buried += pass.buried;
            if pass.claimed < self.settings.batch as usize {
                return Ok(total);
            }
        }
    }

    /// Starts every job's loop; [`Running::shutdown`] stops them.
    pub fn spawn(self) -> Running {
        let runner = Arc::new(self);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for job in runner.periodic.clone() {
            tasks.spawn(periodic_loop(runner.clone(), job, stop_rx.clone()));
        }
        for consumer in runner.consumers.clone() {
            tasks.spawn(consumer_loop(runner.clone(), consumer, stop_rx.clone()));
        }
        Running {
            runner,
            stop: stop_tx,
            tasks,
        }
    }
}

/// Waits until the stop flag is set.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn periodic_loop(
    runner: Arc<Runner>,
    job: Arc<dyn Periodic>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Nodes started together spread the first run of an exclusive job over the first interval
    // (at most a minute); a job every node runs (the queue gauges) runs at once, so a node
    // publishes its gauges from the start.
    let first = if job.exclusive() {
        job.interval()
            .mul_f64(rand::random::<f64>())
            .min(Duration::from_secs(60))
    } else {
        Duration::ZERO
    };
    let mut next = tokio::time::Instant::now() + first;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stopped(&mut stop) => return,
        }
        next = tokio::time::Instant::now() + job.interval();
        // Errors are logged and counted by `run_job`; the next round tries again.
        let _ = runner.run_job(job.as_ref()).await;
    }
}

async fn consumer_loop(
    runner: Arc<Runner>,
    consumer: Arc<dyn Consumer>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut signal = runner.registry.work_signal();
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = runner.drain(consumer.topic()).await {
            tracing::warn!(job = consumer.topic(), error = %e, "work queue unavailable; trying again later");
        }
        tokio::select! {
            () = tokio::time::sleep(runner.settings.poll) => {}
            _ = signal.changed() => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// A runner's loops, running.
pub struct Running {
    runner: Arc<Runner>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Stops taking work, lets what runs finish for at most `grace` (then aborts it: its claims
    /// lapse and another node takes the items), and gives up this node's leases.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "jobs still running at the end of the grace period; their claims will lapse"
            );
            self.tasks.abort_all();
        }
        for job in &self.runner.periodic {
            if job.exclusive() {
                let _ = self
                    .runner
                    .registry
                    .release_lease(job.name(), &self.runner.node)
                    .await;
            }
        }
        tracing::info!(node.id = %self.runner.node, "jobs stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(4), Duration::from_secs(8));
        assert_eq!(retry_delay(30), RETRY_CAP);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn recorded_errors_name_their_cause() {
        let e = service::Error::Internal(anyhow::anyhow!("unreadable discard payload"));
        assert_eq!(
            error_chain(&e),
            "internal error: unreadable discard payload"
        );
        let e = service::Error::Unavailable("database down".into());
        assert_eq!(error_chain(&e), "service unavailable: database down");
    }
}
