//! Pure OCI types: digests, repository names, tags, references, media types and manifest parsing.
//!
//! No I/O and no async here: everything is a function of its input, so it is unit tested in place.
//! Must not depend on any other module of the crate.

mod digest;
mod manifest;
mod name;

pub use digest::{Digest, DigestAlgorithm, DigestError, Hasher};
pub use manifest::{
    Descriptor, ManifestError, ManifestKind, ParsedManifest, media_types, parse_manifest,
};
pub use name::{NameError, RefError, Reference, RepoName, Tag, TagError};
