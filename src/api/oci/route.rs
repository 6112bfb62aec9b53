//! Parsing `/v2/…` paths into [`OciRoute`].
//!
//! Repository names contain slashes, so the path is split at the last endpoint marker
//! (`/manifests/`, `/blobs/uploads/`, `/blobs/`, `/tags/list`, `/referrers/`) whose remainder holds
//! no further slash. The raw (still percent-encoded) path is parsed: any `%` in a name makes it
//! invalid, so no encoding can smuggle `..` or `/` into a name.

use crate::oci::{NameError, RepoName};

/// A parsed registry API path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OciRoute {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, String),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, String),
}

/// Why a path is not a registry route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint has this shape.
    NotFound,
    /// The endpoint shape matched but the repository name is invalid.
    Name(NameError),
}

impl OciRoute {
    /// Parses the path of a request (including the `/v2` prefix).
    pub fn parse(path: &str) -> Result<OciRoute, RouteError> {
        let rest = match path {
            "/v2" | "/v2/" => return Ok(OciRoute::Base),
            p => p.strip_prefix("/v2/").ok_or(RouteError::NotFound)?,
        };
        if rest == "_catalog" {
            return Ok(OciRoute::Catalog);
        }
        let name = |n: &str| n.parse::<RepoName>().map_err(RouteError::Name);
        if let Some(n) = rest.strip_suffix("/tags/list") {
            return Ok(OciRoute::Tags(name(n)?));
        }
        if let Some(n) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Ok(OciRoute::UploadStart(name(n)?));
        }
        let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
        if last.is_empty() {
            return Err(RouteError::NotFound);
        }
        let (head2, marker) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
        match marker {
            "manifests" => Ok(OciRoute::Manifest(name(head2)?, last.to_owned())),
            "referrers" => Ok(OciRoute::Referrers(name(head2)?, last.to_owned())),
            "blobs" => Ok(OciRoute::Blob(name(head2)?, last.to_owned())),
            "uploads" => match head2.rsplit_once('/') {
                Some((n, "blobs")) => Ok(OciRoute::Upload(name(n)?, last.to_owned())),
                _ => Err(RouteError::NotFound),
            },
            _ => Err(RouteError::NotFound),
        }
    }

    /// A short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            OciRoute::Base => "base",
            OciRoute::Catalog => "catalog",
            OciRoute::Tags(_) => "tags",
            OciRoute::Manifest(..) => "manifest",
            OciRoute::Blob(..) => "blob",
            OciRoute::UploadStart(_) => "upload_start",
            OciRoute::Upload(..) => "upload",
            OciRoute::Referrers(..) => "referrers",
        }
    }

    /// The repository the route addresses, if any.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            OciRoute::Base | OciRoute::Catalog => None,
            OciRoute::Tags(n)
            | OciRoute::Manifest(n, _)
            | OciRoute::Blob(n, _)
            | OciRoute::UploadStart(n)
            | OciRoute::Upload(n, _)
            | OciRoute::Referrers(n, _) => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_endpoint() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            ("/v2/", OciRoute::Base),
            ("/v2", OciRoute::Base),
            ("/v2/_catalog", OciRoute::Catalog),
            ("/v2/a/tags/list", OciRoute::Tags(n("a"))),
            ("/v2/a/b/c/tags/list", OciRoute::Tags(n("a/b/c"))),
            (
                "/v2/a/manifests/latest",
                OciRoute::Manifest(n("a"), "latest".into()),
            ),
            (
                &format!("/v2/a/b/manifests/{d}"),
                OciRoute::Manifest(n("a/b"), d.into()),
            ),
            (
                &format!("/v2/a/blobs/{d}"),
                OciRoute::Blob(n("a"), d.into()),
            ),
            ("/v2/a/blobs/uploads/", OciRoute::UploadStart(n("a"))),
            ("/v2/a/blobs/uploads", OciRoute::UploadStart(n("a"))),
            (
                "/v2/a/blobs/uploads/abc",
                OciRoute::Upload(n("a"), "abc".into()),
            ),
            (
                &format!("/v2/a/referrers/{d}"),
                OciRoute::Referrers(n("a"), d.into()),
            ),
            // Names may contain the markers as components; the last marker wins.
            (
                "/v2/manifests/blobs/manifests/x",
                OciRoute::Manifest(n("manifests/blobs"), "x".into()),
            ),
            (
                "/v2/blobs/uploads/blobs/uploads/",
                OciRoute::UploadStart(n("blobs/uploads")),
            ),
            ("/v2/tags/list/tags/list", OciRoute::Tags(n("tags/list"))),
            (
                "/v2/x/blobs/uploads/blobs/y",
                OciRoute::Blob(n("x/blobs/uploads"), "y".into()),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(OciRoute::parse(path), Ok(want), "{path}");
        }
    }

    #[test]
    fn refuses_bad_paths() {
        for path in [
            "/v1/",
            "/v2/a",
            "/v2/a/manifests/",
            "/v2/a/unknown/x",
            "/v2//manifests/x",
            "/v2/a/uploads/x",
        ] {
            assert!(OciRoute::parse(path).is_err(), "{path}");
        }
        for path in [
            "/v2/A/manifests/x",
            "/v2/../manifests/x",
            "/v2/a/%2e%2e/manifests/x",
            "/v2/a%2Fb/tags/list",
            "/v2/a/../b/blobs/uploads/",
        ] {
            assert!(
                matches!(OciRoute::parse(path), Err(RouteError::Name(_))),
                "{path}"
            );
        }
        let long = format!("/v2/{}/tags/list", "a".repeat(256));
        assert_eq!(
            OciRoute::parse(&long),
            Err(RouteError::Name(NameError::TooLong))
        );
    }
}
