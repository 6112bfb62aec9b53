//! The single access-decision step every registry request goes through.
//!
//! Handlers never decide access themselves: the API layer asks [`Registry::authorize`] for the
//! (principal, repository, action) of each request before calling a use case. Today every caller is
//! anonymous and every action is allowed; authentication plugs in here without touching handlers.

use super::{Registry, Result};
use crate::oci::RepoName;

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
}

/// What the caller wants to do to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and manifests.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Registry {
    /// Decides whether `principal` may perform `action` on `repo`.
    pub async fn authorize(
        &self,
        principal: &Principal,
        repo: &RepoName,
        action: Action,
    ) -> Result<()> {
        tracing::trace!(?principal, repo.name = %repo, ?action, "access allowed (no authentication configured)");
        Ok(())
    }

    /// Decides whether `principal` may list the catalog.
    pub async fn authorize_catalog(&self, principal: &Principal) -> Result<()> {
        tracing::trace!(
            ?principal,
            "catalog access allowed (no authentication configured)"
        );
        Ok(())
    }
}
