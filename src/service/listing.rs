//! Tag and catalog listings with keyset pagination: a page costs one index range scan, however
//! many entries precede it.

use super::{Error, Principal, Registry, Result};
use crate::oci::RepoName;

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The entries, in lexical order.
    pub items: Vec<String>,
    /// The page size used, when more entries follow (for the `Link` header).
    pub next: Option<u32>,
}

impl Registry {
    fn page_size(&self, n: Option<u32>) -> u32 {
        n.unwrap_or(self.settings.default_page_size)
            .min(self.settings.max_page_size)
    }

    /// A page of the repository's tags after `last`.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Page> {
        let size = self.page_size(n);
        if size == 0 {
            // Still 404 for unknown repositories.
            self.meta
                .list_tags(repo, last, 0)
                .await?
                .ok_or(Error::NameUnknown)?;
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let mut items = self
            .meta
            .list_tags(repo, last, size.saturating_add(1))
            .await?
            .ok_or(Error::NameUnknown)?;
        Ok(paginate(&mut items, size))
    }

    /// A page of the repository names `principal` may read, after `last`.
    pub async fn catalog(
        &self,
        principal: &Principal,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Page> {
        let size = self.page_size(n);
        if size == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let identity = match principal {
            Principal::Anonymous => None,
            Principal::Token { identity, .. } => identity.clone(),
            Principal::User(identity) => Some(identity.clone()),
        };
        let mut items: Vec<String> = self
            .list_repositories(identity.as_ref(), None, last, size.saturating_add(1))
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        Ok(paginate(&mut items, size))
    }
}

fn paginate(items: &mut Vec<String>, size: u32) -> Page {
    let more = items.len() > size as usize;
    items.truncate(size as usize);
    Page {
        items: std::mem::take(items),
        next: more.then_some(size),
    }
}
