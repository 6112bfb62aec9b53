//! Manifests and indexes (OCI and Docker), tags, deletes and the referrers API.

use aerugo_testkit::image::{self, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use aerugo_testkit::{Blob, RegistryClient};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{assert_error, header, node, send};

async fn push_blobs(c: &RegistryClient, repo: &str, blobs: &[&Blob]) {
    for b in blobs {
        c.push_blob_monolithic(repo, b).await.unwrap();
    }
}

#[tokio::test]
async fn oci_image_by_tag_and_digest() {
    let node = node().await;
    let c = node.client();
    let img = image::image(1, 2, 2000, "amd64");
    push_blobs(&c, "m/oci", &img.content_blobs()).await;
    let res = c.push_manifest("m/oci", "v1", &img.manifest).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(img.digest())
    );
    assert_eq!(
        header(&res, "location"),
        Some(format!("/v2/m/oci/manifests/{}", img.digest()))
    );
    for reference in ["v1", img.digest()] {
        let res = c
            .get_manifest("m/oci", reference, &[OCI_MANIFEST])
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "content-type").as_deref(), Some(OCI_MANIFEST));
        assert_eq!(
            header(&res, "docker-content-digest").as_deref(),
            Some(img.digest())
        );
        assert_eq!(res.bytes().await.unwrap(), img.manifest.data, "byte-exact");
        let res = send(
            &c,
            Method::HEAD,
            &format!("/v2/m/oci/manifests/{reference}"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header(&res, "content-length"),
            Some(img.manifest.data.len().to_string())
        );
        assert_eq!(
            header(&res, "docker-content-digest").as_deref(),
            Some(img.digest())
        );
        assert!(res.bytes().await.unwrap().is_empty());
    }
    let res = c
        .request(Method::GET, "/v2/m/oci/manifests/v1")
        .header("if-none-match", format!("\"{}\"", img.digest()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    // Pushing the same manifest again (by digest, too) is idempotent.
    let res = c
        .push_manifest("m/oci", img.digest(), &img.manifest)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn docker_manifest_and_list_and_oci_index() {
    let node = node().await;
    let c = node.client();
    let amd = image::docker_image(2, 1, 1000, "amd64");
    let arm = image::docker_image(3, 1, 1000, "arm64");
    for img in [&amd, &arm] {
        push_blobs(&c, "m/docker", &img.content_blobs()).await;
        c.push_manifest_ok("m/docker", img.digest(), &img.manifest)
            .await
            .unwrap();
    }
    let list = image::docker_manifest_list(&[(&amd, "amd64"), (&arm, "arm64")]);
    c.push_manifest_ok("m/docker", "multi", &list)
        .await
        .unwrap();
    let res = c
        .get_manifest("m/docker", "multi", &[DOCKER_MANIFEST_LIST])
        .await
        .unwrap();
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some(DOCKER_MANIFEST_LIST)
    );
    assert_eq!(res.bytes().await.unwrap(), list.data);
    let res = c
        .get_manifest("m/docker", amd.digest(), &[DOCKER_MANIFEST])
        .await
        .unwrap();
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some(DOCKER_MANIFEST)
    );

    let a = image::image(4, 1, 500, "amd64");
    let b = image::image(5, 1, 500, "arm64");
    for img in [&a, &b] {
        push_blobs(&c, "m/index", &img.content_blobs()).await;
        c.push_manifest_ok("m/index", img.digest(), &img.manifest)
            .await
            .unwrap();
    }
    let idx = image::index(&[(&a, "amd64"), (&b, "arm64")]);
    c.push_manifest_ok("m/index", "latest", &idx).await.unwrap();
    let res = c
        .get_manifest("m/index", "latest", &[OCI_INDEX])
        .await
        .unwrap();
    assert_eq!(header(&res, "content-type").as_deref(), Some(OCI_INDEX));
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(idx.digest.as_str())
    );
}

#[tokio::test]
async fn references_must_exist_in_the_repository() {
    let node = node().await;
    let c = node.client();
    let img = image::image(6, 2, 500, "amd64");
    // Layers pushed to another repository do not count.
    push_blobs(&c, "m/elsewhere", &img.content_blobs()).await;
    push_blobs(&c, "m/refs", &[&img.config]).await;
    let res = c
        .push_manifest("m/refs", "v1", &img.manifest)
        .await
        .unwrap();
    let body = assert_error(res, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let missing = body["errors"][0]["detail"]["missing"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(missing.len(), 2, "{body}");
    assert_error(
        c.get_manifest("m/refs", "v1", &[]).await.unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // An index whose child is missing.
    let idx = image::index(&[(&img, "amd64")]);
    let res = c.push_manifest("m/refs", "idx", &idx).await.unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    // A refused push to a new repository does not create it.
    let res = c
        .push_manifest("m/never", "v1", &img.manifest)
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let cat: Value = send(&c, Method::GET, "/v2/_catalog")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !cat["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "m/never"),
        "{cat}"
    );
}

#[tokio::test]
async fn invalid_manifests_are_refused() {
    let node = node().await;
    let c = node.client();
    let img = image::image(7, 1, 100, "amd64");
    push_blobs(&c, "m/bad", &img.content_blobs()).await;
    let put = |reference: &str, ct: &str, body: Vec<u8>| {
        c.request(Method::PUT, &format!("/v2/m/bad/manifests/{reference}"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let long_tag = "t".repeat(129);
    let schema1 =
        json!({"schemaVersion": 1, "name": "m/bad", "tag": "v1", "fsLayers": [], "history": []});
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "v1",
            OCI_MANIFEST,
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "v1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            schema1.to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "v1",
            "text/plain",
            img.manifest.data.to_vec(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "v1",
            OCI_INDEX,
            img.manifest.data.to_vec(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "bad tag!",
            OCI_MANIFEST,
            img.manifest.data.to_vec(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            &long_tag,
            OCI_MANIFEST,
            img.manifest.data.to_vec(),
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            OCI_MANIFEST,
            img.manifest.data.to_vec(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "sha256:xyz",
            OCI_MANIFEST,
            img.manifest.data.to_vec(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "big",
            OCI_MANIFEST,
            vec![b' '; 4 * 1024 * 1024 + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
        ),
    ];
    for (reference, ct, body, status, code) in cases {
        let res = put(reference, ct, body).await.unwrap();
        assert_error(res, status, code).await;
    }
    // A manifest of exactly 4 MiB (padded JSON) is accepted.
    let mut big = img.manifest.data.to_vec();
    big.pop();
    let pad = 4 * 1024 * 1024 - big.len() - r#","x":""}"#.len();
    big.extend_from_slice(format!(r#","x":"{}"}}"#, "a".repeat(pad)).as_bytes());
    assert_eq!(big.len(), 4 * 1024 * 1024);
    let res = put("exactly-4mib", OCI_MANIFEST, big).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
}

#[tokio::test]
async fn deleting_tags_and_manifests() {
    let node = node().await;
    let c = node.client();
    let img = image::image(8, 1, 100, "amd64");
    push_blobs(&c, "m/del", &img.content_blobs()).await;
    c.push_manifest_ok("m/del", "a", &img.manifest)
        .await
        .unwrap();
    c.push_manifest_ok("m/del", "b", &img.manifest)
        .await
        .unwrap();
    // A tag delete leaves the manifest and other tags.
    assert_eq!(
        send(&c, Method::DELETE, "/v2/m/del/manifests/a")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_error(
        c.get_manifest("m/del", "a", &[]).await.unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        c.get_manifest("m/del", "b", &[]).await.unwrap().status(),
        StatusCode::OK
    );
    // A blob still referenced by a manifest cannot be deleted.
    let res = send(
        &c,
        Method::DELETE,
        &format!("/v2/m/del/blobs/{}", img.config.digest),
    )
    .await;
    assert_error(res, StatusCode::CONFLICT, "DENIED").await;
    // A manifest delete removes its tags.
    let path = format!("/v2/m/del/manifests/{}", img.digest());
    assert_eq!(
        send(&c, Method::DELETE, &path).await.status(),
        StatusCode::ACCEPTED
    );
    assert_error(
        c.get_manifest("m/del", "b", &[]).await.unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_error(
        send(&c, Method::DELETE, &path).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_error(
        send(&c, Method::DELETE, "/v2/m/del/manifests/nope").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let tags: Value = send(&c, Method::GET, "/v2/m/del/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!([]));
    // Now the blob may go.
    let res = send(
        &c,
        Method::DELETE,
        &format!("/v2/m/del/blobs/{}", img.config.digest),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_child_of_an_index_cannot_be_deleted_first() {
    let node = node().await;
    let c = node.client();
    let a = image::image(9, 1, 100, "amd64");
    push_blobs(&c, "m/child", &a.content_blobs()).await;
    c.push_manifest_ok("m/child", a.digest(), &a.manifest)
        .await
        .unwrap();
    let idx = image::index(&[(&a, "amd64")]);
    c.push_manifest_ok("m/child", "idx", &idx).await.unwrap();
    let res = send(
        &c,
        Method::DELETE,
        &format!("/v2/m/child/manifests/{}", a.digest()),
    )
    .await;
    assert_error(res, StatusCode::CONFLICT, "DENIED").await;
    assert_eq!(
        send(
            &c,
            Method::DELETE,
            &format!("/v2/m/child/manifests/{}", idx.digest)
        )
        .await
        .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(
            &c,
            Method::DELETE,
            &format!("/v2/m/child/manifests/{}", a.digest())
        )
        .await
        .status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn referrers_api() {
    let node = node().await;
    let c = node.client();
    let img = image::image(10, 1, 100, "amd64");
    push_blobs(&c, "m/ref", &img.content_blobs()).await;
    c.push_manifest_ok("m/ref", "v1", &img.manifest)
        .await
        .unwrap();
    let (sig_blobs, sig) =
        image::artifact(1, "application/vnd.example.signature", Some(&img.manifest));
    let (sbom_blobs, sbom) =
        image::artifact(2, "application/vnd.example.sbom", Some(&img.manifest));
    for b in sig_blobs.iter().chain(&sbom_blobs) {
        c.push_blob_monolithic("m/ref", b).await.unwrap();
    }
    for m in [&sig, &sbom] {
        let res = c.push_manifest("m/ref", &m.digest, m).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(header(&res, "oci-subject").as_deref(), Some(img.digest()));
    }
    let path = format!("/v2/m/ref/referrers/{}", img.digest());
    let res = send(&c, Method::GET, &path).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-type").as_deref(), Some(OCI_INDEX));
    assert!(header(&res, "oci-filters-applied").is_none());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], OCI_INDEX);
    let list = body["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let sig_entry = list
        .iter()
        .find(|d| d["digest"] == sig.digest.as_str())
        .unwrap();
    assert_eq!(
        sig_entry["artifactType"],
        "application/vnd.example.signature"
    );
    assert_eq!(sig_entry["mediaType"], OCI_MANIFEST);
    assert_eq!(sig_entry["size"], sig.data.len());
    assert_eq!(sig_entry["annotations"], sig.json().unwrap()["annotations"]);
    let res = send(
        &c,
        Method::GET,
        &format!("{path}?artifactType=application/vnd.example.sbom"),
    )
    .await;
    assert_eq!(
        header(&res, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(body["manifests"][0]["digest"], sbom.digest.as_str());
    // Unknown subjects: an empty index. Bad digests: 400.
    let unknown = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let body: Value = send(&c, Method::GET, &format!("/v2/m/ref/referrers/{unknown}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["manifests"], json!([]));
    let res = send(&c, Method::GET, "/v2/m/ref/referrers/sha256:nope").await;
    assert_error(res, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn a_subject_need_not_exist() {
    let node = node().await;
    let c = node.client();
    let ghost = Blob::new(OCI_MANIFEST, b"{\"not\":\"pushed\"}".to_vec());
    let (blobs, art) = image::artifact(3, "application/vnd.example.note", Some(&ghost));
    for b in &blobs {
        c.push_blob_monolithic("m/ghost", b).await.unwrap();
    }
    let res = c.push_manifest("m/ghost", &art.digest, &art).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "oci-subject").as_deref(),
        Some(ghost.digest.as_str())
    );
    let body: Value = send(
        &c,
        Method::GET,
        &format!("/v2/m/ghost/referrers/{}", ghost.digest),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["manifests"][0]["digest"], art.digest.as_str());
}
