//! Deterministic benchmark content: small images, the large blob, the static-file tree.
//!
//! Content comes from a `SplitMix64` stream seeded per use, so every run pushes fresh bytes
//! (no registry can skip work because it already holds a digest) while two runs of the
//! benchmark push identical bytes. Layers are random bytes, not tar archives: registries do
//! not look inside layers, and generating them must not compete with the server for CPU.

use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::json;

use crate::image::sha256_digest;

/// Media type of the small images' manifests.
pub(crate) const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The `Accept` header of manifest requests.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.index.v1+json";
/// Seed of the base image every target holds and the static server mirrors.
pub(crate) const BASE_SEED: u64 = 0;
/// Layer size of the base image.
pub(crate) const BASE_LAYER_BYTES: usize = 1024;

/// A blob with its digest.
#[derive(Clone, Debug)]
pub(crate) struct Blob {
    /// `sha256:<hex>` of `data`.
    pub(crate) digest: String,
    /// The content.
    pub(crate) data: Bytes,
}

impl Blob {
    fn new(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            digest: sha256_digest(&data),
            data,
        }
    }
}

/// A one-layer OCI image.
#[derive(Clone, Debug)]
pub(crate) struct SmallImage {
    /// The image config (unique per seed).
    pub(crate) config: Blob,
    /// The only layer.
    pub(crate) layer: Blob,
    /// The OCI image manifest referencing both.
    pub(crate) manifest: Blob,
}

impl SmallImage {
    /// Builds the image of `seed` with a layer of `layer_bytes` random bytes.
    pub(crate) fn new(seed: u64, layer_bytes: usize) -> Self {
        let mut layer = vec![0; layer_bytes];
        SplitMix64(seed ^ 0x6c61_7965_7200_0000).fill(&mut layer);
        let layer = Blob::new(layer);
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "dev.aerugo.bench.seed": seed.to_string() } },
            "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
        });
        let config = Blob::new(config.to_string());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.data.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer.digest,
                "size": layer.data.len(),
            }],
        });
        let manifest = Blob::new(manifest.to_string());
        Self {
            config,
            layer,
            manifest,
        }
    }

    /// The image every target holds as `<prefix>/base:latest`.
    pub(crate) fn base() -> Self {
        Self::new(BASE_SEED, BASE_LAYER_BYTES)
    }
}

/// `len` pseudo-random bytes of `seed` (the large blob), with their digest.
pub(crate) fn large_blob(seed: u64, len: usize) -> Blob {
    let mut data = vec![0; len];
    SplitMix64(seed).fill(&mut data);
    Blob::new(data)
}

/// Writes the static-file ceiling's tree: `small/f000…` (each a copy of the base manifest, so
/// nginx serves exactly the bytes a manifest GET returns) and `large.bin` (`blob_mib` MiB).
pub(crate) fn write_static_files(dir: &Path, files: usize, blob_mib: u64) -> anyhow::Result<()> {
    anyhow::ensure!(files <= 100_000, "at most 100000 small files");
    let small = dir.join("small");
    std::fs::create_dir_all(&small).with_context(|| format!("creating {}", small.display()))?;
    let manifest = SmallImage::base().manifest.data;
    for i in 0..files {
        std::fs::write(small.join(static_name(i)), &manifest)?;
    }
    let len = usize::try_from(blob_mib * 1024 * 1024)?;
    let large = large_blob(u64::MAX, len);
    std::fs::write(dir.join("large.bin"), &large.data)?;
    Ok(())
}

/// The name of small static file `i`.
pub(crate) fn static_name(i: usize) -> String {
    format!("f{i:05}")
}

/// The `SplitMix64` generator: fast, tiny and fully determined by its seed.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), with negligible bias for the small `n` used here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let bytes = self.next_u64().to_le_bytes();
        tail.copy_from_slice(&bytes[..tail.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_distinct() {
        let a = SmallImage::new(7, 100);
        assert_eq!(a.manifest.digest, SmallImage::new(7, 100).manifest.digest);
        assert_ne!(a.manifest.digest, SmallImage::new(8, 100).manifest.digest);
        assert_eq!(a.layer.data.len(), 100);
        let m: serde_json::Value = serde_json::from_slice(&a.manifest.data).unwrap();
        assert_eq!(m["config"]["digest"], a.config.digest.as_str());
        assert_eq!(m["layers"][0]["digest"], a.layer.digest.as_str());
    }

    #[test]
    fn large_blobs_have_the_requested_size() {
        let b = large_blob(1, 1_000_003);
        assert_eq!(b.data.len(), 1_000_003);
        assert_eq!(b.digest, sha256_digest(&b.data));
    }
}
