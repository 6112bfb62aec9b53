//! The work queue and leases as the jobs see them, and the consumers' effects.
//!
//! `jobs` schedules; this file does: claiming, completing and failing items, the database clock,
//! leases, queue statistics and dead letters, and what a [`DISCARD_TOPIC`] item means (delete
//! stored objects no row refers to any more).

use super::{Error, Registry, Result};
use crate::meta::changes::{DISCARD_TOPIC, Discard};
use crate::meta::{BuriedItem, TopicStats, WorkItem};

/// Buried items a page lists at most.
const MAX_BURIED_PAGE: u32 = 1000;

impl Registry {
    /// Wakes this node's queue consumers: a write just queued work. Other nodes find it on their
    /// next poll.
    pub(crate) fn work_queued(&self) {
        self.work_ready.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every [`Registry::work_queued`] on this node after it was made.
    pub fn work_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.work_ready.subscribe()
    }

    /// The database's clock (ms since the Unix epoch): the one clock of leases and claims.
    pub async fn database_now(&self) -> Result<i64> {
        Ok(self.meta.database_now().await?)
    }

    /// Takes or renews the lease `name` for `holder` until `now + ttl_ms`.
    pub async fn try_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool> {
        Ok(self
            .meta
            .try_acquire_lease(name, holder, now, ttl_ms)
            .await?)
    }

    /// Gives up `holder`'s lease `name`.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        Ok(self.meta.release_lease(name, holder).await?)
    }

    /// Claims due items of `topic` for `holder`.
    pub async fn claim_work(
        &self,
        topic: &str,
        holder: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<WorkItem>> {
        Ok(self
            .meta
            .claim_work(topic, holder, now, lease_ms, limit)
            .await?)
    }

    /// Completes a claimed item.
    pub async fn complete_work(&self, item: &WorkItem, holder: &str) -> Result<bool> {
        Ok(self.meta.complete_work(item, holder).await?)
    }

    /// Records a failed attempt (due again at `retry_at`, or buried).
    pub async fn fail_work(
        &self,
        item: &WorkItem,
        holder: &str,
        now: i64,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        Ok(self
            .meta
            .fail_work(item, holder, now, error, retry_at)
            .await?)
    }

    /// Depth, oldest age and dead letters per topic.
    pub async fn queue_stats(&self, now: i64) -> Result<Vec<TopicStats>> {
        Ok(self.meta.queue_stats(now).await?)
    }

    /// Deletes change records older than `before`, at most `limit`.
    pub async fn prune_changes(&self, before: i64, limit: u32) -> Result<u64> {
        Ok(self.meta.prune_changes(before, limit).await?)
    }

    /// Dead letters (site admin only), in (topic, key) order after `after`.
    pub async fn buried_work(
        &self,
        caller: &super::Identity,
        topic: Option<&str>,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<BuriedItem>> {
        require_site_admin(caller)?;
        Ok(self
            .meta
            .buried_work(topic, after, limit.clamp(1, MAX_BURIED_PAGE))
            .await?)
    }

    /// Makes a dead letter due again (site admin only).
    pub async fn requeue_work(
        &self,
        caller: &super::Identity,
        topic: &str,
        key: &str,
    ) -> Result<()> {
        require_site_admin(caller)?;
        let now = self.meta.database_now().await?;
        if self.meta.requeue_work(topic, key, now).await? {
            self.work_queued();
            Ok(())
        } else {
            Err(Error::NameUnknown)
        }
    }

    /// Carries out one [`DISCARD_TOPIC`] item: deletes the objects of the named (ended) upload
    /// sessions, except the one a blob row keeps. Deleting what is already gone is no error, so
    /// running an item twice is harmless.
    pub async fn discard_objects(&self, item: &WorkItem) -> Result<()> {
        debug_assert_eq!(item.topic, DISCARD_TOPIC);
        let discard: Discard = serde_json::from_str(&item.payload)
            .map_err(|e| Error::Internal(anyhow::anyhow!("unreadable discard payload: {e}")))?;
        for upload in &discard.uploads {
            self.storage
                .delete_upload_objects(upload, discard.keep.as_deref())
                .await?;
        }
        Ok(())
    }
}

fn require_site_admin(caller: &super::Identity) -> Result<()> {
    if caller.is_admin {
        Ok(())
    } else {
        Err(Error::Denied)
    }
}
