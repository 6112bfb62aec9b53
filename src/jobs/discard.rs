//! The consumer of `discard-objects`: deletes the stored objects of ended upload sessions that no
//! row refers to any more (queued by the write that ended them, so a crash between that commit
//! and the deletion leaks nothing).

use futures::future::BoxFuture;

use super::Consumer;
use crate::service::{self, Registry, WorkItem};

/// Deletes discarded objects.
pub(crate) struct DiscardObjects;

impl Consumer for DiscardObjects {
    fn topic(&self) -> &'static str {
        service::DISCARD_TOPIC
    }

    fn handle<'a>(
        &'a self,
        registry: &'a Registry,
        item: &'a WorkItem,
    ) -> BoxFuture<'a, service::Result<()>> {
        Box::pin(registry.discard_objects(item))
    }
}
