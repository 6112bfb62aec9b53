//! The purge of abandoned uploads: sessions idle longer than `registry.upload_max_age_seconds`
//! go, one node at a time (under the `upload-purge` lease), every
//! `registry.upload_purge_interval_seconds`; their objects are queued for deletion with them.

use std::time::Duration;

use futures::future::BoxFuture;

use super::Periodic;
use crate::service::{self, Registry};

/// Deletes abandoned upload sessions.
pub(crate) struct UploadPurge {
    /// Idle time after which a session is abandoned.
    pub(crate) max_age: Duration,
    /// Time between two runs.
    pub(crate) interval: Duration,
}

impl Periodic for UploadPurge {
    fn name(&self) -> &'static str {
        "upload-purge"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn run<'a>(&'a self, registry: &'a Registry, now: i64) -> BoxFuture<'a, service::Result<u64>> {
        Box::pin(registry.purge_abandoned_uploads(now, self.max_age))
    }
}
