//! Tests of `aerugo_testkit::client` against the reference registry
//! (CNCF Distribution, Debian's `docker-registry` package), so that the upload
//! helpers are known to speak the protocol correctly before Aerugo exists.
//!
//! Every test passes trivially, with a note on stderr, where
//! `/usr/bin/docker-registry` is not installed.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use aerugo_testkit::RegistryClient;
use aerugo_testkit::image::{self, Blob, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use anyhow::{Context as _, Result};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use tempfile::TempDir;
use tokio::process::{Child, Command};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A reference registry process with its storage; killed on drop.
struct Reference {
    client: RegistryClient,
    _child: Child,
    _dir: TempDir,
}

/// Starts the reference registry, or returns `None` where it is missing.
async fn reference() -> Result<Option<Reference>> {
    if !Path::new(REGISTRY).exists() {
        eprintln!("{REGISTRY} is not installed; skipping");
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let config = dir.path().join("config.yml");
    let storage = dir.path().join("storage");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )?;
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let client = RegistryClient::new(format!("http://127.0.0.1:{port}"));
    for _ in 0..200 {
        if let Ok(response) = client.request(Method::GET, "/v2/").send().await
            && response.status() == StatusCode::OK
        {
            return Ok(Some(Reference {
                client,
                _child: child,
                _dir: dir,
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the reference registry did not become ready")
}

async fn assert_blob(client: &RegistryClient, repo: &str, blob: &Blob) -> Result<()> {
    let data = client.get_blob_ok(repo, &blob.digest).await?;
    assert_eq!(data, blob.data, "content of {}", blob.digest);
    Ok(())
}

#[tokio::test]
async fn every_upload_flavour_round_trips() -> Result<()> {
    let Some(registry) = reference().await? else {
        return Ok(());
    };
    let client = &registry.client;
    let image = image::image(1, 4, 150_000, "amd64");
    let repo = "tests/uploads";

    let location = client.push_blob_monolithic(repo, &image.layers[0]).await?;
    assert!(location.ends_with(&image.layers[0].digest), "{location}");
    client
        .push_blob_chunked(repo, &image.layers[1], 64 * 1024)
        .await?;
    client
        .push_blob_chunked(repo, &image.layers[2], 1 << 20)
        .await?;
    client.push_blob_streamed(repo, &image.layers[3]).await?;
    client.push_blob_streamed(repo, &image.config).await?;
    for blob in image.content_blobs() {
        assert_blob(client, repo, blob).await?;
    }
    client.push_manifest_ok(repo, "v1", &image.manifest).await?;

    let response = client.get_manifest(repo, "v1", &[OCI_MANIFEST]).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], OCI_MANIFEST);
    assert_eq!(response.bytes().await?, image.manifest.data);
    Ok(())
}

#[tokio::test]
async fn chunked_upload_with_tiny_chunks() -> Result<()> {
    let Some(registry) = reference().await? else {
        return Ok(());
    };
    let blob = Blob::new("application/octet-stream", &b"hello, chunked world"[..]);
    registry
        .client
        .push_blob_chunked("tests/tiny", &blob, 3)
        .await?;
    assert_blob(&registry.client, "tests/tiny", &blob).await?;
    let empty = Blob::new("application/octet-stream", bytes::Bytes::new());
    registry
        .client
        .push_blob_chunked("tests/tiny", &empty, 3)
        .await?;
    registry
        .client
        .push_blob_streamed("tests/tiny", &empty)
        .await?;
    assert_blob(&registry.client, "tests/tiny", &empty).await?;
    Ok(())
}

#[tokio::test]
async fn images_indexes_and_docker_manifests_push() -> Result<()> {
    let Some(registry) = reference().await? else {
        return Ok(());
    };
    let client = &registry.client;
    let repo = "tests/multi";
    let amd64 = image::image(2, 2, 10_000, "amd64");
    let arm64 = image::image(2, 2, 10_000, "arm64/v8");
    for image in [&amd64, &arm64] {
        let location = client.push_image(repo, image.digest(), image).await?;
        assert!(location.contains(image.digest()), "{location}");
    }
    let index = image::index(&[(&amd64, "amd64"), (&arm64, "arm64/v8")]);
    client.push_manifest_ok(repo, "latest", &index).await?;
    let response = client
        .get_manifest(repo, "latest", &[OCI_INDEX, OCI_MANIFEST])
        .await?;
    assert_eq!(response.headers()[CONTENT_TYPE], OCI_INDEX);
    assert_eq!(response.bytes().await?, index.data);

    let docker = image::docker_image(2, 1, 1000, "amd64");
    client.push_image(repo, "docker", &docker).await?;
    let list = image::docker_manifest_list(&[(&docker, "amd64")]);
    client.push_manifest_ok(repo, "docker-list", &list).await?;
    let response = client
        .get_manifest(repo, "docker", &[DOCKER_MANIFEST])
        .await?;
    assert_eq!(response.headers()[CONTENT_TYPE], DOCKER_MANIFEST);

    // Artifacts need only their blobs and manifest; a subject is optional.
    let (blobs, artifact) =
        image::artifact(2, "application/vnd.example.sbom", Some(&amd64.manifest));
    for blob in &blobs {
        client.push_blob_monolithic(repo, blob).await?;
    }
    client
        .push_manifest_ok(repo, &artifact.digest, &artifact)
        .await?;
    Ok(())
}

#[tokio::test]
async fn raw_responses_and_error_reports() -> Result<()> {
    let Some(registry) = reference().await? else {
        return Ok(());
    };
    let client = &registry.client;
    let missing = image::image(3, 1, 10, "amd64");
    let response = client.get_blob("tests/raw", &missing.config.digest).await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A manifest whose blobs are missing is rejected, and the helper says why.
    let error = client
        .push_manifest_ok("tests/raw", "v1", &missing.manifest)
        .await
        .expect_err("blobs are missing");
    let message = format!("{error:#}");
    assert!(message.contains("400 Bad Request"), "{message}");
    assert!(message.contains("MANIFEST_BLOB_UNKNOWN"), "{message}");

    let response = client
        .request(Method::POST, "/v2/tests/raw/blobs/uploads/")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response
        .headers()
        .get(LOCATION)
        .context("no Location")?
        .to_str()?;
    let status = client.request(Method::GET, location).send().await?.status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    Ok(())
}
