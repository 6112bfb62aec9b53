//! Manifest and index parsing: media type resolution, structural validation and the references a
//! manifest makes (blobs, child manifests, subject).
//!
//! The registry stores manifests byte-exact; this module only reads them to validate and to learn
//! what they point at. Schema 1 manifests are refused.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::digest::Digest;

/// Media types the registry knows by name.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker schema 1 (refused).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker signed schema 1 (refused).
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// Docker foreign layer: content that may live outside the registry (`urls`).
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// OCI non-distributable layers (deprecated by the spec, still pushed): may carry `urls`.
    pub const OCI_NONDISTRIBUTABLE_LAYERS: [&str; 3] = [
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ];

    /// Whether a layer of this media type may be left out of the registry (a foreign or
    /// non-distributable layer): the only descriptors that may carry `urls`.
    pub fn is_non_distributable(media_type: &str) -> bool {
        media_type == DOCKER_FOREIGN_LAYER || OCI_NONDISTRIBUTABLE_LAYERS.contains(&media_type)
    }
}

use media_types::*;

/// Whether a manifest describes one image (or artifact) or a list of manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest: config + layers.
    Image,
    /// An index / manifest list: child manifests.
    Index,
}

/// A content descriptor as found inside a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The referenced content's media type.
    pub media_type: String,
    /// The referenced content's digest.
    pub digest: Digest,
    /// The referenced content's size.
    pub size: u64,
    /// Whether the content is allowed to live outside the registry: only a non-distributable
    /// (foreign) layer with `urls`. Config, distributable layers and manifests never are.
    pub external: bool,
}

/// What the registry learns from a valid manifest.
#[derive(Clone, Debug)]
pub struct ParsedManifest {
    /// The manifest's media type (from the body, else the request's `Content-Type`).
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// Blobs that must be present in the repository (config and layers).
    pub blobs: Vec<Descriptor>,
    /// Child manifests that must be present in the repository (index entries).
    pub children: Vec<Descriptor>,
    /// The `subject` the manifest refers to, if any (it need not exist).
    pub subject: Option<Descriptor>,
    /// The artifact type for the referrers API (`artifactType`, else the config media type).
    pub artifact_type: Option<String>,
    /// The manifest's annotations, if any.
    pub annotations: Option<Map<String, Value>>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not the expected shape.
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    /// A Docker schema 1 manifest.
    #[error("Docker schema 1 manifests are not supported; push schema 2 or OCI")]
    Schema1,
    /// An unsupported `schemaVersion`.
    #[error("unsupported schemaVersion {0}; expected 2")]
    SchemaVersion(i64),
    /// A media type the registry does not accept as a manifest.
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    /// The body's `mediaType` contradicts the request's `Content-Type`.
    #[error("manifest mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// From the body.
        body: String,
        /// From the header.
        header: String,
    },
    /// A structural rule was broken.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<Map<String, Value>>,
    #[serde(default)]
    fs_layers: Option<Value>,
}

/// Where a descriptor sits, which decides whether it may carry `urls`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// An image manifest's `layers` entry: `urls` allowed on non-distributable media types.
    Layer,
    /// `config`, an index entry or `subject`: always in the registry, never `urls`.
    Other,
}

fn descriptor(raw: RawDescriptor, field: &str, slot: Slot) -> Result<Descriptor, ManifestError> {
    let media_type = raw
        .media_type
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ManifestError::Invalid(format!("{field}: mediaType is required")))?;
    let digest = raw
        .digest
        .ok_or_else(|| ManifestError::Invalid(format!("{field}: digest is required")))?
        .parse::<Digest>()
        .map_err(|e| ManifestError::Invalid(format!("{field}: {e}")))?;
    let size = raw
        .size
        .ok_or_else(|| ManifestError::Invalid(format!("{field}: size is required")))?;
    let size = u64::try_from(size)
        .map_err(|_| ManifestError::Invalid(format!("{field}: size must not be negative")))?;
    // `urls` would excuse the content from the referenced-blob check, so it is accepted only where
    // the spec allows content outside the registry: on non-distributable (foreign) layers.
    if !raw.urls.is_empty() {
        if slot != Slot::Layer || !media_types::is_non_distributable(&media_type) {
            return Err(ManifestError::Invalid(format!(
                "{field}: urls is allowed only on non-distributable layers, not on {media_type}"
            )));
        }
        if let Some(bad) = raw
            .urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ManifestError::Invalid(format!(
                "{field}: urls must be http or https URLs, not {bad:?}"
            )));
        }
    }
    Ok(Descriptor {
        media_type,
        digest,
        size,
        external: !raw.urls.is_empty(),
    })
}

/// Strips parameters (`; charset=…`) and whitespace from a `Content-Type` value.
fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parses and validates a manifest body pushed with `content_type`.
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ParsedManifest, ManifestError> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type.map(bare_media_type).filter(|h| !h.is_empty());
    let is_schema1 = |m: &str| m == DOCKER_SCHEMA1 || m == DOCKER_SCHEMA1_SIGNED;
    if raw.schema_version == Some(1)
        || raw.fs_layers.is_some()
        || header.is_some_and(is_schema1)
        || raw.media_type.as_deref().is_some_and(is_schema1)
    {
        return Err(ManifestError::Schema1);
    }
    match raw.schema_version {
        Some(2) => {}
        Some(v) => return Err(ManifestError::SchemaVersion(v)),
        None => return Err(ManifestError::Invalid("schemaVersion is required".into())),
    }
    let media_type = match (&raw.media_type, header) {
        (Some(body), Some(h)) if body != h && h != "application/json" => {
            return Err(ManifestError::MediaTypeMismatch {
                body: body.clone(),
                header: h.to_owned(),
            });
        }
        (Some(body), _) => body.clone(),
        (None, Some(h)) if h != "application/json" => h.to_owned(),
        (None, _) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, _) => OCI_MANIFEST.to_owned(),
    };
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
        other => return Err(ManifestError::MediaType(other.to_owned())),
    };
    let subject = raw
        .subject
        .map(|s| descriptor(s, "subject", Slot::Other))
        .transpose()?;
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut artifact_type = raw.artifact_type.filter(|a| !a.is_empty());
    match kind {
        ManifestKind::Image => {
            if raw.manifests.is_some() {
                return Err(ManifestError::Invalid(
                    "an image manifest has no manifests field".into(),
                ));
            }
            let config = raw
                .config
                .ok_or_else(|| ManifestError::Invalid("config is required".into()))?;
            let config = descriptor(config, "config", Slot::Other)?;
            if artifact_type.is_none() {
                artifact_type = Some(config.media_type.clone());
            }
            blobs.push(config);
            let layers = raw
                .layers
                .ok_or_else(|| ManifestError::Invalid("layers is required".into()))?;
            for (i, layer) in layers.into_iter().enumerate() {
                blobs.push(descriptor(layer, &format!("layers[{i}]"), Slot::Layer)?);
            }
        }
        ManifestKind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(ManifestError::Invalid(
                    "an index has no config or layers".into(),
                ));
            }
            let manifests = raw
                .manifests
                .ok_or_else(|| ManifestError::Invalid("manifests is required".into()))?;
            for (i, m) in manifests.into_iter().enumerate() {
                children.push(descriptor(m, &format!("manifests[{i}]"), Slot::Other)?);
            }
        }
    }
    Ok(ParsedManifest {
        media_type,
        kind,
        blobs,
        children,
        subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]{extra}}}"#
        )
    }

    #[test]
    fn parses_an_image_manifest() {
        let m = parse_manifest(Some(OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(m.subject.is_none());
    }

    #[test]
    fn parses_subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x.sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":9}}"#
        );
        let m = parse_manifest(None, image(&extra).as_bytes()).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
        assert_eq!(m.subject.unwrap().digest.as_str(), D1);
    }

    #[test]
    fn parses_an_index_with_media_type_from_header() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let m = parse_manifest(Some(DOCKER_MANIFEST_LIST), body.as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.media_type, DOCKER_MANIFEST_LIST);
        assert_eq!(m.children.len(), 1);
    }

    #[test]
    fn urls_only_on_non_distributable_layers() {
        let urls = r#","urls":["https://example.com/layer"]"#;
        let config = "application/vnd.oci.image.config.v1+json";
        let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
        let body = |config_extra: &str, layer_type: &str, layer_extra: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
                "config":{{"mediaType":"{config}","digest":"{D1}","size":2{config_extra}}},
                "layers":[{{"mediaType":"{layer_type}","digest":"{D2}","size":3{layer_extra}}}]}}"#
            )
        };
        // Foreign and non-distributable layers may live elsewhere: they are not checked.
        for foreign in std::iter::once(media_types::DOCKER_FOREIGN_LAYER)
            .chain(media_types::OCI_NONDISTRIBUTABLE_LAYERS)
        {
            let m = parse_manifest(None, body("", foreign, urls).as_bytes()).unwrap();
            assert!(!m.blobs[0].external && m.blobs[1].external, "{foreign}");
            // Without urls a non-distributable layer must be in the registry like any other.
            let m = parse_manifest(None, body("", foreign, "").as_bytes()).unwrap();
            assert!(!m.blobs[1].external, "{foreign}");
        }
        let refused = [
            body(urls, layer, ""),
            body("", layer, urls),
            body(
                "",
                media_types::DOCKER_FOREIGN_LAYER,
                r#","urls":["file:///etc/passwd"]"#,
            ),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":5{urls}}}]}}"#
            ),
            image(&format!(
                r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":9{urls}}}"#
            )),
        ];
        for b in refused {
            let err = parse_manifest(None, b.as_bytes()).unwrap_err();
            assert!(matches!(err, ManifestError::Invalid(_)), "{b}: {err:?}");
        }
    }

    #[test]
    fn refuses_bad_manifests() {
        type Case = (Option<&'static str>, String, fn(&ManifestError) -> bool);
        let cases: Vec<Case> = vec![
            (None, "not json".into(), |e| {
                matches!(e, ManifestError::Json(_))
            }),
            (None, r#"{"schemaVersion":1,"fsLayers":[]}"#.into(), |e| {
                matches!(e, ManifestError::Schema1)
            }),
            (
                Some(DOCKER_SCHEMA1_SIGNED),
                r#"{"schemaVersion":2}"#.into(),
                |e| matches!(e, ManifestError::Schema1),
            ),
            (None, r#"{"schemaVersion":3}"#.into(), |e| {
                matches!(e, ManifestError::SchemaVersion(3))
            }),
            (None, r#"{"mediaType":"x"}"#.into(), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            (Some("text/plain"), r#"{"schemaVersion":2}"#.into(), |e| {
                matches!(e, ManifestError::MediaType(_))
            }),
            (Some(OCI_INDEX), image(""), |e| {
                matches!(e, ManifestError::MediaTypeMismatch { .. })
            }),
            (None, image("").replace(D2, "sha256:nothex"), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            (None, image("").replace("\"size\":3", "\"size\":-3"), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            (
                None,
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#),
                |e| matches!(e, ManifestError::Invalid(_)),
            ),
            (None, "[]".into(), |e| matches!(e, ManifestError::Json(_))),
        ];
        for (ct, body, check) in cases {
            let err = parse_manifest(ct, body.as_bytes()).unwrap_err();
            assert!(check(&err), "{body}: {err:?}");
        }
    }
}
