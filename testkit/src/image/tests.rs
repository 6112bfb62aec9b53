//! Unit tests for the image builders: determinism, structural validity of
//! configs and manifests, real tar+gzip layers and OCI layout output.

use std::io::Read as _;
use std::process::Command;

use anyhow::{Context as _, Result};
use flate2::read::GzDecoder;
use serde_json::Value;

use super::*;

fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

fn manifest_digests(image: &Image) -> Vec<String> {
    image.all_blobs().iter().map(|b| b.digest.clone()).collect()
}

#[test]
fn blob_digest_and_descriptor() {
    let blob = Blob::new("application/octet-stream", Bytes::new());
    assert_eq!(
        blob.digest,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(blob.hex().len(), 64);
    assert_eq!(
        blob.descriptor(),
        json!({
            "mediaType": "application/octet-stream",
            "digest": blob.digest,
            "size": 0,
        })
    );
}

#[test]
fn images_are_deterministic() {
    let a = image(7, 3, 10_000, "amd64");
    let b = image(7, 3, 10_000, "amd64");
    assert_eq!(a, b);
    assert_eq!(
        docker_image(7, 1, 100, "arm64"),
        docker_image(7, 1, 100, "arm64")
    );
    assert_eq!(
        index(&[(&a, "amd64")]).digest,
        index(&[(&b, "amd64")]).digest
    );
    assert_eq!(artifact(3, "application/x-test", Some(&a.manifest)), {
        artifact(3, "application/x-test", Some(&b.manifest))
    });
}

#[test]
fn different_inputs_give_different_digests() {
    let base = image(1, 2, 1000, "amd64");
    let variants = [
        image(2, 2, 1000, "amd64"),
        image(1, 2, 1000, "arm64"),
        image(1, 2, 1000, "arm/v7"),
        docker_image(1, 2, 1000, "amd64"),
    ];
    for other in &variants {
        for digest in manifest_digests(other) {
            assert!(
                !manifest_digests(&base).contains(&digest),
                "{digest} is shared between {base:?} and {other:?}"
            );
        }
    }
    // Layers within one image are distinct too, even when empty.
    let empty = image(1, 3, 0, "amd64");
    let layer_digests: HashSet<_> = empty.layers.iter().map(|l| &l.digest).collect();
    assert_eq!(layer_digests.len(), 3);
}

#[test]
fn config_has_correct_diff_ids_and_metadata() -> Result<()> {
    let image = image(42, 3, 5000, "arm64/v8");
    let config = image.config.json()?;
    assert_eq!(image.config.media_type, OCI_CONFIG);
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert!(config["config"]["Cmd"].is_array());
    assert_eq!(config["history"].as_array().map(Vec::len), Some(3));

    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("diff_ids is not an array")?;
    assert_eq!(diff_ids.len(), image.layers.len());
    for (layer, diff_id) in image.layers.iter().zip(diff_ids) {
        let tar = gunzip(&layer.data)?;
        assert_eq!(diff_id.as_str(), Some(sha256_digest(&tar).as_str()));
        assert_ne!(diff_id.as_str(), Some(layer.digest.as_str()));
    }
    Ok(())
}

#[test]
fn manifest_references_config_and_layers() -> Result<()> {
    let image = image(5, 2, 300, "amd64");
    let manifest = image.manifest.json()?;
    assert_eq!(image.manifest.media_type, OCI_MANIFEST);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"], image.config.descriptor());
    let layers = manifest["layers"]
        .as_array()
        .context("layers is not an array")?;
    assert_eq!(layers.len(), 2);
    for (descriptor, layer) in layers.iter().zip(&image.layers) {
        assert_eq!(descriptor["mediaType"], OCI_LAYER_GZIP);
        assert_eq!(*descriptor, layer.descriptor());
    }
    assert_eq!(image.digest(), image.manifest.digest);
    assert_eq!(image.content_blobs().len(), 3);
    assert_eq!(image.all_blobs().len(), 4);
    Ok(())
}

#[test]
fn layers_are_real_tar_archives() -> Result<()> {
    let layer_size = 200_000;
    let image = image(9, 2, layer_size, "amd64");
    for (index, layer) in image.layers.iter().enumerate() {
        let tar = gunzip(&layer.data)?;
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut data_bytes = 0;
        let mut paths = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            assert_eq!(entry.header().mtime()?, MTIME);
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content)?;
            if path.ends_with(".bin") {
                data_bytes += content.len();
            }
            if path.ends_with(".txt") {
                assert!(String::from_utf8(content)?.contains("seed=9"));
            }
            paths.push(path);
        }
        assert_eq!(data_bytes, layer_size);
        assert!(paths.contains(&format!("aerugo-test/layer-{index}.txt")));
        assert!(paths.iter().filter(|p| p.ends_with(".bin")).count() > 1);
        // Random content does not compress, so the blob is about as big as the data.
        assert!(layer.data.len() >= layer_size);
        assert!(layer.data.len() < layer_size + layer_size / 10);
    }
    Ok(())
}

#[test]
fn degenerate_sizes_are_valid() -> Result<()> {
    let no_layers = image(1, 0, 100, "amd64");
    assert!(no_layers.layers.is_empty());
    assert_eq!(no_layers.config.json()?["rootfs"]["diff_ids"], json!([]));

    let empty_layer = image(1, 1, 0, "amd64");
    let tar = gunzip(&empty_layer.layers[0].data)?;
    let count = tar::Archive::new(tar.as_slice()).entries()?.count();
    assert_eq!(count, 2);
    Ok(())
}

#[test]
fn index_lists_platforms() -> Result<()> {
    let amd64 = image(1, 1, 10, "amd64");
    let arm = image(1, 1, 10, "arm/v7");
    let index = index(&[(&amd64, "amd64"), (&arm, "arm/v7")]);
    assert_eq!(index.media_type, OCI_INDEX);
    let value = index.json()?;
    assert_eq!(value["mediaType"], OCI_INDEX);
    assert_eq!(value["schemaVersion"], 2);
    let manifests = value["manifests"].as_array().context("manifests")?;
    assert_eq!(manifests.len(), 2);
    assert_eq!(manifests[0]["digest"], amd64.manifest.digest);
    assert_eq!(manifests[0]["mediaType"], OCI_MANIFEST);
    assert_eq!(
        manifests[0]["platform"],
        json!({"architecture": "amd64", "os": "linux"})
    );
    assert_eq!(
        manifests[1]["platform"],
        json!({"architecture": "arm", "os": "linux", "variant": "v7"})
    );
    Ok(())
}

#[test]
fn docker_variants_use_docker_media_types() -> Result<()> {
    let image = docker_image(3, 2, 100, "amd64");
    assert_eq!(image.manifest.media_type, DOCKER_MANIFEST);
    assert_eq!(image.config.media_type, DOCKER_CONFIG);
    assert!(
        image
            .layers
            .iter()
            .all(|l| l.media_type == DOCKER_LAYER_GZIP)
    );
    let manifest = image.manifest.json()?;
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], DOCKER_CONFIG);
    assert_eq!(manifest["layers"][1]["mediaType"], DOCKER_LAYER_GZIP);
    assert!(manifest.get("annotations").is_none());

    let list = docker_manifest_list(&[(&image, "amd64")]);
    assert_eq!(list.media_type, DOCKER_MANIFEST_LIST);
    let value = list.json()?;
    assert_eq!(value["mediaType"], DOCKER_MANIFEST_LIST);
    assert_eq!(value["manifests"][0]["mediaType"], DOCKER_MANIFEST);
    assert_eq!(value["manifests"][0]["platform"]["architecture"], "amd64");
    Ok(())
}

#[test]
fn artifacts_use_the_empty_config_and_subject() -> Result<()> {
    let subject = image(1, 1, 10, "amd64");
    let (blobs, manifest) = artifact(4, "application/vnd.example.sbom", Some(&subject.manifest));
    assert_eq!(blobs.len(), 2);
    assert_eq!(blobs[0].media_type, OCI_EMPTY);
    assert_eq!(blobs[0].data.as_ref(), b"{}");
    assert_eq!(
        blobs[0].digest,
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    let value = manifest.json()?;
    assert_eq!(manifest.media_type, OCI_MANIFEST);
    assert_eq!(value["artifactType"], "application/vnd.example.sbom");
    assert_eq!(value["config"], blobs[0].descriptor());
    assert_eq!(value["layers"][0]["digest"], blobs[1].digest);
    assert_eq!(value["subject"], subject.manifest.descriptor());
    assert!(value["annotations"].is_object());

    let (_, unattached) = artifact(4, "application/vnd.example.sbom", None);
    assert!(unattached.json()?.get("subject").is_none());
    assert_ne!(unattached.digest, manifest.digest);
    Ok(())
}

#[test]
fn oci_layout_files_are_valid() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let amd64 = image(1, 2, 1000, "amd64");
    let arm64 = image(1, 2, 1000, "arm64");
    let multi = index(&[(&amd64, "amd64"), (&arm64, "arm64")]);
    let blobs: Vec<&Blob> = amd64
        .all_blobs()
        .into_iter()
        .chain(arm64.all_blobs())
        .collect();
    write_oci_layout(
        dir.path(),
        &[("v1", &amd64.manifest), ("multi", &multi)],
        &blobs,
    )?;

    let layout: Value = serde_json::from_slice(&std::fs::read(dir.path().join("oci-layout"))?)?;
    assert_eq!(layout, json!({"imageLayoutVersion": "1.0.0"}));
    let index_json: Value = serde_json::from_slice(&std::fs::read(dir.path().join("index.json"))?)?;
    assert_eq!(index_json["schemaVersion"], 2);
    assert_eq!(index_json["manifests"][0]["digest"], amd64.manifest.digest);
    assert_eq!(
        index_json["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
        "v1"
    );
    assert_eq!(index_json["manifests"][1]["mediaType"], OCI_INDEX);
    assert_eq!(
        index_json["manifests"][1]["annotations"][REF_NAME_ANNOTATION],
        "multi"
    );

    for blob in blobs.iter().copied().chain([&multi]) {
        let stored = std::fs::read(dir.path().join("blobs/sha256").join(blob.hex()))?;
        assert_eq!(sha256_digest(&stored), blob.digest);
    }
    let stored_count = std::fs::read_dir(dir.path().join("blobs/sha256"))?.count();
    assert_eq!(stored_count, 9);
    Ok(())
}

/// Checks the layout with a real consumer when `skopeo` is installed; the test
/// passes trivially (with a note on stderr) where it is not.
#[test]
fn oci_layout_is_accepted_by_skopeo() -> Result<()> {
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skopeo is not installed; skipping the layout round trip");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    let amd64 = image(11, 2, 4096, "amd64");
    let arm64 = image(11, 1, 4096, "arm64");
    let multi = index(&[(&amd64, "amd64"), (&arm64, "arm64")]);
    let blobs: Vec<&Blob> = [&amd64, &arm64]
        .into_iter()
        .flat_map(Image::all_blobs)
        .collect();
    write_oci_layout(
        &src,
        &[("single", &amd64.manifest), ("multi", &multi)],
        &blobs,
    )?;

    let skopeo = |args: &[&str]| -> Result<String> {
        let output = Command::new("skopeo")
            .arg("--insecure-policy")
            .args(args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "skopeo {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };
    let src_ref = |tag: &str| format!("oci:{}:{tag}", src.display());

    let raw = skopeo(&["inspect", "--raw", &src_ref("single")])?;
    assert_eq!(raw.as_bytes(), amd64.manifest.data.as_ref());
    let config: Value =
        serde_json::from_str(&skopeo(&["inspect", "--config", &src_ref("single")])?)?;
    assert_eq!(config["architecture"], "amd64");

    // Copying verifies every blob digest, and `--all` walks the whole index.
    let dst = dir.path().join("dst");
    let dst_ref = format!("oci:{}:copied", dst.display());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        &src_ref("multi"),
        &dst_ref,
    ])?;
    assert_eq!(
        skopeo(&["inspect", "--raw", &dst_ref])?.as_bytes(),
        multi.data.as_ref()
    );
    let dir_ref = format!("dir:{}", dir.path().join("single").display());
    skopeo(&["copy", "--preserve-digests", &src_ref("single"), &dir_ref])?;
    for blob in amd64.all_blobs() {
        let name = if blob == &amd64.manifest {
            "manifest.json"
        } else {
            blob.hex()
        };
        let copied = std::fs::read(dir.path().join("single").join(name))?;
        assert_eq!(sha256_digest(&copied), blob.digest);
    }
    Ok(())
}
