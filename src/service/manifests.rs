//! Manifest push, pull and delete, and the referrers API.

use serde_json::{Value, json};

use super::caching::{CachedManifest, RegistryCaches};
use super::{Error, Registry, Result};
use crate::meta::{Delete, ManifestRow, NewManifest, PutManifest};
use crate::oci::{Digest, ManifestError, Reference, RepoName, media_types, parse_manifest};

/// The outcome of a manifest push.
#[derive(Clone, Debug)]
pub struct PushedManifest {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its `subject`, when it has one (answered as `OCI-Subject`).
    pub subject: Option<Digest>,
}

impl From<ManifestError> for Error {
    fn from(e: ManifestError) -> Self {
        Error::ManifestInvalid(e.to_string())
    }
}

impl Registry {
    /// Validates and stores a manifest, pointing `reference` at it when it is a tag.
    pub async fn push_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<PushedManifest> {
        let limit = self.settings.manifest_max_bytes;
        if body.len() as u64 > limit {
            return Err(Error::ManifestTooLarge { limit });
        }
        let parsed = parse_manifest(content_type, body)?;
        let (digest, tag) = match reference {
            Reference::Digest(d) => {
                let computed = Digest::compute(d.algorithm(), body);
                if &computed != d {
                    return Err(Error::DigestInvalid(format!(
                        "manifest digest {computed} does not match the reference {d}"
                    )));
                }
                (computed, None)
            }
            Reference::Tag(t) => (Digest::sha256(body), Some(t.clone())),
        };
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let new = NewManifest {
            digest: digest.clone(),
            media_type: parsed.media_type,
            payload: body.to_vec(),
            subject: subject.clone(),
            artifact_type: parsed.artifact_type,
            annotations: parsed.annotations.map(|a| Value::Object(a).to_string()),
            blobs: parsed
                .blobs
                .into_iter()
                .filter(|d| !d.external)
                .map(|d| d.digest)
                .collect(),
            children: parsed.children.into_iter().map(|d| d.digest).collect(),
            tag,
        };
        let (owned, tag) = (repo.clone(), new.tag.clone());
        let stored = self
            .detached(move |r| async move {
                let repo = owned;
                let outcome = r.meta.put_manifest(&repo, &new).await?;
                if let PutManifest::Stored = outcome {
                    if let Some(tag) = &tag {
                        r.caches.tag_changed(&repo, tag).await;
                    }
                    r.init_visibility(&repo).await?;
                }
                Ok(outcome)
            })
            .await?;
        match stored {
            PutManifest::Stored => {
                tracing::info!(repo.name = %repo, manifest.digest = %digest, reference = %reference, "manifest stored");
                Ok(PushedManifest { digest, subject })
            }
            PutManifest::MissingReferences(missing) => Err(Error::ManifestBlobUnknown(missing)),
        }
    }

    /// A manifest by tag or digest.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestRow> {
        // Tag → digest first (cached, dropped on every tag write), then the manifest under
        // (repository, digest): a hit there also proves this repository still holds it.
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => {
                let key = RegistryCaches::tag_key(repo, t);
                let mut loaded = None;
                let digest = self
                    .caches
                    .tags
                    .get_or_load(&key, || async {
                        let row = self.meta.manifest(repo, reference).await?;
                        let digest = row.as_ref().map(|r| r.digest.to_string());
                        loaded = row;
                        Ok::<_, Error>(digest)
                    })
                    .await?
                    .ok_or(Error::ManifestUnknown)?;
                if let Some(row) = loaded {
                    return Ok(row);
                }
                digest
                    .parse()
                    .map_err(|e: crate::oci::DigestError| Error::Internal(e.into()))?
            }
        };
        let by_digest = Reference::Digest(digest.clone());
        let key = RegistryCaches::object_key(repo, &digest);
        self.caches
            .manifests
            .get_or_load(&key, || async {
                Ok::<_, Error>(
                    self.meta
                        .manifest(repo, &by_digest)
                        .await?
                        .map(CachedManifest::from),
                )
            })
            .await?
            .and_then(CachedManifest::into_row)
            .ok_or(Error::ManifestUnknown)
    }

    /// Deletes a tag, or a manifest (and its tags) by digest.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.ensure_delete_enabled()?;
        let (repo, reference) = (repo.clone(), reference.clone());
        self.detached(move |r| async move {
            match &reference {
                Reference::Tag(tag) => {
                    if r.meta.delete_tag(&repo, tag).await? {
                        r.caches.tag_changed(&repo, tag).await;
                        Ok(())
                    } else {
                        Err(Error::ManifestUnknown)
                    }
                }
                Reference::Digest(digest) => match r.meta.delete_manifest(&repo, digest).await? {
                    Delete::Deleted => {
                        // Tags that pointed here resolve to a manifest no longer held: unknown.
                        r.caches.manifest_deleted(&repo, digest).await;
                        Ok(())
                    }
                    Delete::NotFound => Err(Error::ManifestUnknown),
                    Delete::Referenced(by) => Err(Error::Conflict(format!(
                        "manifest is referenced by index {}; delete the index first",
                        by.first().map(Digest::as_str).unwrap_or_default()
                    ))),
                },
            }
        })
        .await
    }

    /// The referrers index of `subject`: manifests in `repo` whose `subject` is `subject`,
    /// optionally only those of `artifact_type`. Unknown subjects give an empty index.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<u8>> {
        let rows = self
            .meta
            .referrers(repo, subject, artifact_type)
            .await?
            .ok_or(Error::NameUnknown)?;
        let manifests: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                let mut d = json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.as_str(),
                    "size": r.size,
                });
                if let Some(at) = r.artifact_type {
                    d["artifactType"] = Value::String(at);
                }
                if let Some(ann) = r
                    .annotations
                    .and_then(|a| serde_json::from_str::<Value>(&a).ok())
                {
                    d["annotations"] = ann;
                }
                d
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": manifests,
        });
        serde_json::to_vec(&index).map_err(|e| Error::Internal(e.into()))
    }
}
