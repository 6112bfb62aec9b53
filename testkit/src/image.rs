//! Small but real OCI and Docker test images, built offline from a seed.
//!
//! Everything here is deterministic: the same arguments always produce
//! byte-identical blobs and therefore identical digests, while a different
//! seed, architecture or image format produces different content. Layers are
//! real gzip-compressed tar archives with fixed modification times, configs
//! carry the correct `rootfs.diff_ids` (digests of the uncompressed tars), and
//! manifests, indexes and artifacts follow the OCI image specification v1.1 (or
//! Docker schema 2 for the `docker_*` variants), so the results can be pushed
//! to any registry and consumed by real tools such as `skopeo`.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write as _};
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a gzip-compressed OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of the OCI empty descriptor (the blob `{}`).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Media type of a Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media type of a Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Media type of a gzip-compressed Docker layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Media type of the small payload layer in [`artifact`] manifests.
pub const ARTIFACT_LAYER: &str = "application/vnd.aerugo.test.payload.v1+json";
/// Annotation key under which an OCI image layout records a tag.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The fixed creation time written into every config, history entry and
/// annotation, so that output never depends on the wall clock.
const CREATED: &str = "2024-01-01T00:00:00Z";
/// The fixed modification time (the same instant as [`CREATED`]) of every tar entry.
const MTIME: u64 = 1_704_067_200;
/// The largest data file placed in a layer; bigger layers get several files.
const MAX_FILE_SIZE: usize = 64 * 1024;
/// The most data files placed in one layer.
const MAX_FILES_PER_LAYER: usize = 4;

/// A content-addressed blob: a config, a layer, a manifest or an index.
///
/// Invariant: `digest` is always `sha256:<hex>` of `data`; construct blobs with
/// [`Blob::new`] to keep it that way.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob {
    /// The media type used in descriptors and as the manifest `Content-Type`.
    pub media_type: String,
    /// The digest of `data`, as `sha256:<lowercase hex>`.
    pub digest: String,
    /// The raw content.
    pub data: Bytes,
}

impl Blob {
    /// Wraps `data` in a blob of the given media type, computing its digest.
    pub fn new(media_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            media_type: media_type.into(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// The size of the content in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The hex part of the digest, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// Parses the content as JSON, for blobs that are manifests or configs.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.data)
            .with_context(|| format!("blob {} is not valid JSON", self.digest))
    }

    /// An OCI content descriptor for this blob: `{mediaType, digest, size}`.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size(),
        })
    }
}

impl fmt::Debug for Blob {
    // The content is left out on purpose: layers can be large and are noise in
    // assertion failures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("media_type", &self.media_type)
            .field("digest", &self.digest)
            .field("size", &self.data.len())
            .finish()
    }
}

/// A complete single-platform image: its config, its layers and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image config blob.
    pub config: Blob,
    /// The compressed layer blobs, in manifest order.
    pub layers: Vec<Blob>,
    /// The image manifest, which references `config` and `layers`.
    pub manifest: Blob,
}

impl Image {
    /// The manifest digest, which is how registries identify the image.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The blobs a manifest references: the config followed by the layers.
    ///
    /// These are the blobs to upload before the manifest is pushed.
    pub fn content_blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config).chain(&self.layers).collect()
    }

    /// Every blob of the image: the config, the layers and the manifest.
    ///
    /// This is what an OCI image layout has to contain for the image.
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut blobs = self.content_blobs();
        blobs.push(&self.manifest);
        blobs
    }
}

/// Which family of media types an image uses.
#[derive(Debug, Clone, Copy)]
enum Format {
    Oci,
    Docker,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Oci => "oci",
            Self::Docker => "docker",
        }
    }

    fn manifest(self) -> &'static str {
        match self {
            Self::Oci => OCI_MANIFEST,
            Self::Docker => DOCKER_MANIFEST,
        }
    }

    fn config(self) -> &'static str {
        match self {
            Self::Oci => OCI_CONFIG,
            Self::Docker => DOCKER_CONFIG,
        }
    }

    fn layer(self) -> &'static str {
        match self {
            Self::Oci => OCI_LAYER_GZIP,
            Self::Docker => DOCKER_LAYER_GZIP,
        }
    }
}

/// Builds an OCI image with `layers` layers of roughly `layer_size`
/// uncompressed bytes each, for the platform `linux/<arch>`.
///
/// `arch` may carry a variant, as in `arm/v7` or `arm64/v8`. Layer content is
/// pseudo-random (so it barely compresses) and derived from `seed`, `arch` and
/// the layer position, so every layer digest in a test is distinct unless the
/// same arguments are used twice.
pub fn image(seed: u64, layers: usize, layer_size: usize, arch: &str) -> Image {
    build_image(Format::Oci, seed, layers, layer_size, arch)
}

/// Builds a Docker schema 2 image; otherwise the same as [`image`].
///
/// The content differs from the OCI image with the same arguments, so the two
/// never share blobs by accident.
pub fn docker_image(seed: u64, layers: usize, layer_size: usize, arch: &str) -> Image {
    build_image(Format::Docker, seed, layers, layer_size, arch)
}

/// Builds an OCI image index over `images`, each paired with the architecture
/// (optionally `arch/variant`) recorded in its `platform`; the OS is `linux`.
pub fn index(images: &[(&Image, &str)]) -> Blob {
    build_index(OCI_INDEX, images)
}

/// Builds a Docker schema 2 manifest list; otherwise the same as [`index`].
pub fn docker_manifest_list(images: &[(&Image, &str)]) -> Blob {
    build_index(DOCKER_MANIFEST_LIST, images)
}

/// Builds an OCI artifact: an image manifest with the given `artifactType`, the
/// empty config, one small JSON payload layer, annotations and, when `subject`
/// is given, a `subject` descriptor pointing at it (which makes the artifact a
/// referrer of the subject).
///
/// Returns the blobs to upload first (the empty config and the payload) and the
/// manifest.
pub fn artifact(seed: u64, artifact_type: &str, subject: Option<&Blob>) -> (Vec<Blob>, Blob) {
    let config = Blob::new(OCI_EMPTY, Bytes::from_static(b"{}"));
    let payload = json!({
        "artifactType": artifact_type,
        "seed": seed,
        "subject": subject.map(|s| s.digest.as_str()),
    });
    let layer = Blob::new(ARTIFACT_LAYER, to_json_bytes(&payload));
    let mut layer_descriptor = layer.descriptor();
    layer_descriptor["annotations"] = json!({
        "org.opencontainers.image.title": format!("payload-{seed}.json"),
    });
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config.descriptor(),
        "layers": [layer_descriptor],
        "annotations": {
            "org.opencontainers.image.created": CREATED,
            "org.aerugo.test.seed": seed.to_string(),
        },
    });
    if let Some(subject) = subject {
        manifest["subject"] = subject.descriptor();
    }
    (
        vec![config, layer],
        Blob::new(OCI_MANIFEST, to_json_bytes(&manifest)),
    )
}

/// Writes an OCI image layout into `dir` (created if missing): the
/// `oci-layout` marker, `index.json` with one entry per tag (named by the
/// `org.opencontainers.image.ref.name` annotation) and `blobs/sha256/<hex>`
/// for every blob in `blobs` and every tagged manifest or index.
///
/// The result can be read with `skopeo copy oci:<dir>:<tag> ...` (which, up to
/// at least skopeo 1.9, only finds tags that point at OCI manifests or indexes,
/// not at Docker ones). Callers must
/// pass every blob the tagged manifests reach (for an index, those of all its
/// images), for example by chaining [`Image::all_blobs`].
pub fn write_oci_layout(
    dir: &Path,
    tagged: &[(&str, &Blob)],
    blobs: &[&Blob],
) -> anyhow::Result<()> {
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir)
        .with_context(|| format!("creating {}", blob_dir.display()))?;

    let mut written = HashSet::new();
    for blob in blobs.iter().copied().chain(tagged.iter().map(|(_, b)| *b)) {
        anyhow::ensure!(
            blob.digest.starts_with("sha256:"),
            "blob {} does not use sha256, which this layout writer requires",
            blob.digest
        );
        if written.insert(blob.digest.as_str()) {
            let path = blob_dir.join(blob.hex());
            std::fs::write(&path, &blob.data)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }

    let manifests: Vec<Value> = tagged
        .iter()
        .map(|(tag, blob)| {
            let mut descriptor = blob.descriptor();
            descriptor["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
            descriptor
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let layout = json!({ "imageLayoutVersion": "1.0.0" });
    for (name, value) in [("oci-layout", layout), ("index.json", index)] {
        let path = dir.join(name);
        std::fs::write(&path, to_json_bytes(&value))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Formats the `sha256:<hex>` digest of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            // Writing to a `String` cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn to_json_bytes(value: &Value) -> Bytes {
    // Serializing a `Value` cannot fail: all its map keys are strings.
    Bytes::from(serde_json::to_vec(value).expect("a JSON value always serializes"))
}

/// Splits `arch/variant` into its two parts.
fn split_platform(arch: &str) -> (&str, Option<&str>) {
    match arch.split_once('/') {
        Some((architecture, variant)) => (architecture, Some(variant)),
        None => (arch, None),
    }
}

fn platform(arch: &str) -> Value {
    let (architecture, variant) = split_platform(arch);
    let mut platform = json!({ "architecture": architecture, "os": "linux" });
    if let Some(variant) = variant {
        platform["variant"] = json!(variant);
    }
    platform
}

fn build_image(format: Format, seed: u64, layers: usize, layer_size: usize, arch: &str) -> Image {
    let (tars, blobs): (Vec<Vec<u8>>, Vec<Blob>) = (0..layers)
        .map(|index| {
            let tar = layer_tar(format, seed, arch, index, layer_size);
            let blob = Blob::new(format.layer(), gzip(&tar));
            (tar, blob)
        })
        .unzip();

    let (architecture, variant) = split_platform(arch);
    let diff_ids: Vec<String> = tars.iter().map(|tar| sha256_digest(tar)).collect();
    let history: Vec<Value> = (0..layers)
        .map(|index| {
            json!({
                "created": CREATED,
                "created_by": format!("aerugo-testkit: layer {index} of seed {seed}"),
                "comment": format!("{} test image", format.name()),
            })
        })
        .collect();
    let mut config = json!({
        "created": CREATED,
        "author": "aerugo-testkit",
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh", "-c", "cat /aerugo-test/*.txt"],
            "WorkingDir": "/",
            "Labels": {
                "org.aerugo.test.seed": seed.to_string(),
                "org.aerugo.test.format": format.name(),
            },
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    if let Some(variant) = variant {
        config["variant"] = json!(variant);
    }
    let config = Blob::new(format.config(), to_json_bytes(&config));

    let layer_descriptors: Vec<Value> = blobs.iter().map(Blob::descriptor).collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest(),
        "config": config.descriptor(),
        "layers": layer_descriptors,
    });
    if matches!(format, Format::Oci) {
        manifest["annotations"] = json!({ "org.opencontainers.image.created": CREATED });
    }
    let manifest = Blob::new(format.manifest(), to_json_bytes(&manifest));

    Image {
        config,
        layers: blobs,
        manifest,
    }
}

fn build_index(media_type: &str, images: &[(&Image, &str)]) -> Blob {
    let manifests: Vec<Value> = images
        .iter()
        .map(|(image, arch)| {
            let mut descriptor = image.manifest.descriptor();
            descriptor["platform"] = platform(arch);
            descriptor
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    Blob::new(media_type, to_json_bytes(&index))
}

/// Builds the uncompressed tar of one layer.
///
/// The layer holds a directory, a small text file naming its origin (so even
/// empty layers differ between seeds and architectures) and up to
/// [`MAX_FILES_PER_LAYER`] pseudo-random data files adding up to `size` bytes.
fn layer_tar(format: Format, seed: u64, arch: &str, index: usize, size: usize) -> Vec<u8> {
    let origin = format!(
        "format={} seed={seed} arch={arch} layer={index}",
        format.name()
    );
    let mut rng = SplitMix64::from_label(&origin);

    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |path: &str, kind: tar::EntryType, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, path, data)
            .expect("writing a tar archive to memory cannot fail");
    };

    append("aerugo-test/", tar::EntryType::Directory, &[]);
    append(
        &format!("aerugo-test/layer-{index}.txt"),
        tar::EntryType::Regular,
        format!("{origin}\n").as_bytes(),
    );
    if size > 0 {
        let dir = format!("aerugo-test/layer-{index}/");
        append(&dir, tar::EntryType::Directory, &[]);
        let files = size.div_ceil(MAX_FILE_SIZE).clamp(1, MAX_FILES_PER_LAYER);
        for file in 0..files {
            // Spread `size` over the files, giving the remainder to the first ones.
            let len = size / files + usize::from(file < size % files);
            let mut data = vec![0; len];
            rng.fill(&mut data);
            append(
                &format!("{dir}data-{file}.bin"),
                tar::EntryType::Regular,
                &data,
            );
        }
    }
    builder
        .into_inner()
        .expect("writing a tar archive to memory cannot fail")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // The gzip header written by `GzEncoder::new` has a zero mtime and no file
    // name, so the output depends only on the input.
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    let result: io::Result<Vec<u8>> = encoder.write_all(data).and_then(|()| encoder.finish());
    result.expect("compressing to memory cannot fail")
}

/// The `SplitMix64` pseudo-random generator: tiny, fast and fully determined
/// by its seed, which is all test content needs.
struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds the generator from a label, so that distinct labels give
    /// unrelated streams.
    fn from_label(label: &str) -> Self {
        let hash = Sha256::digest(label.as_bytes());
        let mut seed = [0; 8];
        seed.copy_from_slice(&hash[..8]);
        Self(u64::from_le_bytes(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests;
