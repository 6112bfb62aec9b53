//! Housekeeping: the change log is pruned after `jobs.change_retention_hours` (one node at a
//! time), and every node publishes the queue's depth, oldest age and dead letters per topic.

use std::time::Duration;

use futures::future::BoxFuture;

use super::Periodic;
use crate::service::{self, Registry};

/// Change records deleted per statement.
const PRUNE_BATCH: u32 = 1000;

/// Deletes old change records.
pub(crate) struct ChangePrune {
    /// How long records are kept.
    pub(crate) retention: Duration,
}

impl Periodic for ChangePrune {
    fn name(&self) -> &'static str {
        "change-prune"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn run<'a>(&'a self, registry: &'a Registry, now: i64) -> BoxFuture<'a, service::Result<u64>> {
        Box::pin(async move {
            let keep = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
            let before = now.saturating_sub(keep);
            let mut total = 0;
            loop {
                let n = registry.prune_changes(before, PRUNE_BATCH).await?;
                total += n;
                if n < u64::from(PRUNE_BATCH) {
                    return Ok(total);
                }
            }
        })
    }
}

/// Publishes `aerugo_queue_depth`, `aerugo_queue_oldest_age_seconds` and
/// `aerugo_queue_buried` per topic.
pub(crate) struct QueueStats {
    /// Topics always published (0 when empty).
    pub(crate) topics: Vec<&'static str>,
}

impl Periodic for QueueStats {
    fn name(&self) -> &'static str {
        "queue-stats"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(15)
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn run<'a>(&'a self, registry: &'a Registry, now: i64) -> BoxFuture<'a, service::Result<u64>> {
        Box::pin(async move {
            let stats = registry.queue_stats(now).await?;
            for topic in &self.topics {
                if !stats.iter().any(|s| s.topic == *topic) {
                    publish(topic, 0, 0, 0);
                }
            }
            for s in &stats {
                publish(&s.topic, s.depth, s.oldest_age_ms, s.buried);
            }
            Ok(0)
        })
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "gauges are f64; queue sizes and ages are far below 2^52"
)]
fn publish(topic: &str, depth: i64, oldest_age_ms: i64, buried: i64) {
    let topic = topic.to_owned();
    metrics::gauge!("aerugo_queue_depth", "topic" => topic.clone()).set(depth as f64);
    metrics::gauge!("aerugo_queue_oldest_age_seconds", "topic" => topic.clone())
        .set(oldest_age_ms as f64 / 1000.0);
    metrics::gauge!("aerugo_queue_buried", "topic" => topic).set(buried as f64);
}
