//! Runs of the jobs on the in-process harness (`service::testing`), on a manual clock: no test
//! here sleeps, time moves only when a test moves it.
//!
//! Covered: the upload purge and the discard consumer together; a failing consumer's backoff and
//! burial; one holder of an exclusive job among runners sharing a store, and the takeover when its
//! lease lapses; `Running::shutdown` finishing in-flight work and giving up leases.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Clock, Consumer, Pass, Periodic, Runner, Settings};
use crate::config::Config;
use crate::service::testing::Harness;
use crate::service::{self, DISCARD_TOPIC, Registry, WorkItem};

/// Wall-clock milliseconds: manual clocks start here, so that times written with the wall
/// clock (upload sessions, requeues) and the manual clock's agree.
fn wall_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis(),
    )
    .expect("a 64-bit time")
}

fn settings(max_attempts: i64) -> Settings {
    Settings {
        poll: Duration::from_millis(50),
        claim_lease: Duration::from_secs(30),
        batch: 8,
        max_attempts,
        hold_claims: Duration::ZERO,
    }
}

/// A consumer of `test-topic` that fails its first `failures` calls, then succeeds; it counts
/// calls.
struct Flaky {
    failures: u64,
    calls: AtomicU64,
}

impl Consumer for Flaky {
    fn topic(&self) -> &'static str {
        "test-topic"
    }

    fn handle<'a>(
        &'a self,
        _registry: &'a Registry,
        _item: &'a WorkItem,
    ) -> BoxFuture<'a, service::Result<()>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                Err(service::Error::Unavailable(format!("failure {}", n + 1)))
            } else {
                Ok(())
            }
        })
    }
}

/// An exclusive job that counts its runs.
struct Counting {
    runs: AtomicU64,
}

impl Periodic for Counting {
    fn name(&self) -> &'static str {
        "test-exclusive"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn run<'a>(
        &'a self,
        _registry: &'a Registry,
        _now: i64,
    ) -> BoxFuture<'a, service::Result<u64>> {
        Box::pin(async move { Ok(self.runs.fetch_add(1, Ordering::SeqCst) + 1) })
    }
}

#[tokio::test]
async fn the_purge_ends_idle_sessions_and_the_discard_consumer_deletes_their_objects() {
    let h = Harness::builder().build().await;
    let mut config = Config::default();
    config.registry.upload_max_age_seconds = 3600;
    let max_age = Duration::from_secs(3600);
    let clock = Clock::manual(wall_now() + 1000);
    let runner = Runner::standard(h.registry.clone(), "node-a".into(), clock.clone(), &config);
    let repo = "acme/purge".parse().expect("repo");
    let idle = h.started_upload(&repo, b"idle bytes").await;
    let fresh = h.started_upload(&repo, b"fresh bytes").await;
    assert_eq!(h.upload_objects(&idle).await.len(), 1);
    assert_eq!(h.upload_objects(&fresh).await.len(), 1);

    // Nothing is older than the maximum age yet.
    assert_eq!(runner.run_periodic("upload-purge").await.unwrap(), Some(0));
    assert!(h.registry.upload_status(&repo, &idle).await.is_ok());

    // `idle` was last touched half the maximum age ago; once the clock has moved on by more
    // than the other half it is abandoned, while `fresh` is only half that old.
    h.backdate_upload(&idle, max_age / 2).await;
    assert_eq!(runner.run_periodic("upload-purge").await.unwrap(), Some(0));
    clock.advance(max_age / 2 + Duration::from_secs(2));
    assert_eq!(runner.run_periodic("upload-purge").await.unwrap(), Some(1));
    assert!(matches!(
        h.registry.upload_status(&repo, &idle).await,
        Err(service::Error::UploadUnknown)
    ));
    assert!(h.registry.upload_status(&repo, &fresh).await.is_ok());

    // The session row went; its objects go when the discard topic is drained, not before.
    assert_eq!(
        h.upload_objects(&idle).await.len(),
        1,
        "deleted by the queue"
    );
    let pass = runner.drain(DISCARD_TOPIC).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            claimed: 1,
            done: 1,
            ..Pass::default()
        }
    );
    assert!(h.upload_objects(&idle).await.is_empty());
    assert_eq!(h.upload_objects(&fresh).await.len(), 1);
    let stats = h.registry.queue_stats(wall_now()).await.unwrap();
    assert!(stats.iter().all(|s| s.depth == 0), "{stats:?}");
}

#[tokio::test]
async fn a_failing_item_backs_off_and_is_buried_after_its_last_attempt() {
    let h = Harness::builder().build().await;
    let start = wall_now();
    let clock = Clock::manual(start);
    let flaky = Arc::new(Flaky {
        failures: 4,
        calls: AtomicU64::new(0),
    });
    let mut runner = Runner::new(
        h.registry.clone(),
        "node-a".into(),
        clock.clone(),
        settings(4),
    );
    runner.consumers.push(flaky.clone());
    h.enqueue("test-topic", "item-1", "{}", start).await;
    let retried = Pass {
        claimed: 1,
        retried: 1,
        ..Pass::default()
    };
    let nothing = Pass::default();

    // Attempts 1, 2 and 3 fail: due again 1, 2 and 4 seconds later, not a millisecond earlier.
    for delay_ms in [1000, 2000, 4000] {
        assert_eq!(runner.drain("test-topic").await.unwrap(), retried);
        clock.advance(Duration::from_millis(delay_ms - 1));
        assert_eq!(
            runner.drain("test-topic").await.unwrap(),
            nothing,
            "{delay_ms}"
        );
        clock.advance(Duration::from_millis(1));
    }
    // Attempt 4 is the last one: buried, never claimed again.
    assert_eq!(
        runner.drain("test-topic").await.unwrap(),
        Pass {
            claimed: 1,
            buried: 1,
            ..Pass::default()
        }
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(runner.drain("test-topic").await.unwrap(), nothing);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);

    // The dead letter is visible to site admins, with its last error.
    let admin = Harness::admin();
    let buried = h
        .registry
        .buried_work(&admin, Some("test-topic"), None, 10)
        .await
        .unwrap();
    assert_eq!(buried.len(), 1);
    assert_eq!(buried[0].key, "item-1");
    assert_eq!(buried[0].attempts, 4);
    assert!(
        buried[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("failure 4")),
        "{buried:?}"
    );
    let now = clock.now(&h.registry).await.unwrap();
    let stats = h.registry.queue_stats(now).await.unwrap();
    let topic = stats.iter().find(|s| s.topic == "test-topic").unwrap();
    assert_eq!((topic.depth, topic.buried), (0, 1));

    // Requeued, it runs again from its first attempt (and now succeeds).
    h.registry
        .requeue_work(&admin, "test-topic", "item-1")
        .await
        .unwrap();
    assert_eq!(
        runner.drain("test-topic").await.unwrap(),
        Pass {
            claimed: 1,
            done: 1,
            ..Pass::default()
        }
    );
    assert!(
        h.registry
            .buried_work(&admin, None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_exclusive_job_runs_on_one_runner_until_its_lease_lapses() {
    let a = Harness::builder().build().await;
    let b = a.node().await;
    let clock = Clock::manual(wall_now());
    let runner = |h: &Harness, node: &str, job: Arc<Counting>| {
        let mut r = Runner::new(h.registry.clone(), node.into(), clock.clone(), settings(3));
        r.periodic.push(job);
        r
    };
    let job_a = Arc::new(Counting {
        runs: AtomicU64::new(0),
    });
    let job_b = Arc::new(Counting {
        runs: AtomicU64::new(0),
    });
    let ra = runner(&a, "node-a", job_a.clone());
    let rb = runner(&b, "node-b", job_b.clone());

    // A takes the lease; B is refused while A keeps renewing it every interval.
    assert_eq!(ra.run_periodic("test-exclusive").await.unwrap(), Some(1));
    assert_eq!(rb.run_periodic("test-exclusive").await.unwrap(), None);
    for _ in 0..3 {
        clock.advance(Duration::from_secs(10));
        assert!(ra.run_periodic("test-exclusive").await.unwrap().is_some());
        assert_eq!(rb.run_periodic("test-exclusive").await.unwrap(), None);
    }
    assert_eq!(job_a.runs.load(Ordering::SeqCst), 4);

    // A stops renewing: its lease (two intervals) holds until it lapses, then B takes over.
    clock.advance(Duration::from_secs(19));
    assert_eq!(rb.run_periodic("test-exclusive").await.unwrap(), None);
    clock.advance(Duration::from_secs(1));
    assert_eq!(rb.run_periodic("test-exclusive").await.unwrap(), Some(1));
    assert_eq!(ra.run_periodic("test-exclusive").await.unwrap(), None);
    assert_eq!(job_b.runs.load(Ordering::SeqCst), 1);
    assert_eq!(job_a.runs.load(Ordering::SeqCst), 4);
}

/// A consumer whose handler waits until the test lets it finish.
struct Gate {
    started: tokio::sync::mpsc::UnboundedSender<String>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Consumer for Gate {
    fn topic(&self) -> &'static str {
        "test-gate"
    }

    fn handle<'a>(
        &'a self,
        _registry: &'a Registry,
        item: &'a WorkItem,
    ) -> BoxFuture<'a, service::Result<()>> {
        Box::pin(async move {
            let _ = self.started.send(item.key.clone());
            let permit = self.release.acquire().await;
            permit
                .map(|p| p.forget())
                .map_err(|e| service::Error::Internal(anyhow::anyhow!("gate closed: {e}")))
        })
    }
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_and_gives_up_leases() {
    let a = Harness::builder().build().await;
    let b = a.node().await;
    let start = wall_now();
    let clock = Clock::manual(start);
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let mut ra = Runner::new(
        a.registry.clone(),
        "node-a".into(),
        clock.clone(),
        settings(3),
    );
    ra.consumers.push(Arc::new(Gate {
        started: started_tx,
        release: release.clone(),
    }));
    ra.periodic.push(Arc::new(Counting {
        runs: AtomicU64::new(0),
    }));
    let mut rb = Runner::new(
        b.registry.clone(),
        "node-b".into(),
        clock.clone(),
        settings(3),
    );
    rb.periodic.push(Arc::new(Counting {
        runs: AtomicU64::new(0),
    }));
    // A holds the lease of the exclusive job (for 20 s of a clock that does not move).
    assert!(ra.run_periodic("test-exclusive").await.unwrap().is_some());
    assert_eq!(rb.run_periodic("test-exclusive").await.unwrap(), None);

    a.enqueue("test-gate", "in-flight", "{}", start).await;
    let running = ra.spawn();
    assert_eq!(started.recv().await.as_deref(), Some("in-flight"));

    // Shutdown starts while the item is being carried out: it waits for it.
    let mut shutdown = Box::pin(running.shutdown(Duration::from_secs(60)));
    assert!(futures::poll!(&mut shutdown).is_pending());
    let now = clock.now(&a.registry).await.unwrap();
    let depth = |stats: Vec<service::TopicStats>| {
        stats
            .iter()
            .find(|s| s.topic == "test-gate")
            .map_or(0, |s| s.depth)
    };
    assert_eq!(depth(a.registry.queue_stats(now).await.unwrap()), 1);
    // Work queued now is not taken any more by the stopping runner.
    a.enqueue("test-gate", "after-stop", "{}", start).await;
    a.registry.work_queued();
    release.add_permits(1);
    shutdown.await;

    // The in-flight item was completed; the later one waits for another node.
    assert_eq!(depth(a.registry.queue_stats(now).await.unwrap()), 1);
    assert!(
        started.try_recv().is_err(),
        "nothing started after the stop"
    );
    // The lease was released: B takes it at once, on a clock that has not moved.
    assert!(rb.run_periodic("test-exclusive").await.unwrap().is_some());
}
