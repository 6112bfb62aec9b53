//! Protocol loose ends over real HTTP: the mount challenge names the source's pull scope,
//! oversized request heads get the error envelope, `sha512:` blobs, `If-None-Match` on blobs, the
//! bound on parts per upload session and the bound on active sessions per user.

use aerugo::oci::{Digest, DigestAlgorithm};
use aerugo_testkit::Blob;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::{challenge_params, fetch_token, param};
use crate::support::{ADMIN_PASSWORD, assert_error, blob, header, node, node_with, send};

/// The `sha512:` digest of `data`.
fn sha512(data: &[u8]) -> String {
    Digest::compute(DigestAlgorithm::Sha512, data).to_string()
}

#[tokio::test]
async fn a_mount_challenge_names_the_source_and_its_token_mounts() {
    let node = node().await;
    let admin = node.client();
    let b = blob(70, 500);
    admin.push_blob_monolithic("proto/src", &b).await.unwrap();
    let mount = format!(
        "/v2/proto/dst/blobs/uploads/?mount={}&from=proto/src",
        b.digest
    );
    let res = send(&node.anonymous(), Method::POST, &mount).await;
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    assert_eq!(
        param(&params, "scope"),
        Some("repository:proto/dst:pull,push repository:proto/src:pull")
    );
    assert_error(res, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let (realm, service) = (
        param(&params, "realm").unwrap(),
        param(&params, "service").unwrap(),
    );
    let http = reqwest::Client::new();
    // A token for the target alone cannot mount: the client gets an upload session instead.
    let only_target = fetch_token(
        realm,
        service,
        "repository:proto/dst:pull,push",
        Some(("admin", ADMIN_PASSWORD)),
    )
    .await;
    let only_target: Value = only_target.json().await.unwrap();
    let res = http
        .post(format!("{}{mount}", node.url()))
        .bearer_auth(only_target["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // The token the challenge asks for (both scopes, the way clients send them) mounts.
    let scope = param(&params, "scope").unwrap();
    let mut query: Vec<(&str, &str)> = vec![("service", service)];
    query.extend(scope.split(' ').map(|s| ("scope", s)));
    let res = http
        .get(realm)
        .query(&query)
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let token: Value = res.json().await.unwrap();
    let res = http
        .post(format!("{}{mount}", node.url()))
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "location"),
        Some(format!("/v2/proto/dst/blobs/{}", b.digest))
    );
    // A plain upload start keeps its single scope.
    let res = send(
        &node.anonymous(),
        Method::POST,
        "/v2/proto/dst/blobs/uploads/",
    )
    .await;
    let params = challenge_params(&header(&res, "www-authenticate").unwrap());
    assert_eq!(
        param(&params, "scope"),
        Some("repository:proto/dst:pull,push")
    );
}

/// Sends `GET path` with `headers` extra header lines.
async fn get_with_headers(url: &str, headers: &[(String, String)]) -> reqwest::Response {
    let mut rb = reqwest::Client::new().get(url);
    for (k, v) in headers {
        rb = rb.header(k, v);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn oversized_request_heads_get_the_error_envelope() {
    let node = node().await;
    let auth = crate::support::admin_auth_line();
    let (name, value) = auth.trim_end().split_once(": ").unwrap();
    let creds = (name.to_owned(), value.to_owned());
    // 300 small headers (hyper alone refuses more than 100) are an ordinary request.
    let mut many: Vec<(String, String)> = (0..300)
        .map(|i| (format!("x-extra-{i}"), "v".to_owned()))
        .collect();
    many.push(creds.clone());
    let res = get_with_headers(&format!("{}/v2/", node.url()), &many).await;
    assert_eq!(res.status(), StatusCode::OK);
    // A head over 64 KiB, in one header or in many, is 431 with the envelope of its API.
    let big = vec![creds.clone(), ("x-big".to_owned(), "a".repeat(100 * 1024))];
    let spread: Vec<(String, String)> = (0..200)
        .map(|i| (format!("x-spread-{i}"), "b".repeat(500)))
        .collect();
    for headers in [&big, &spread] {
        let res = get_with_headers(&format!("{}/v2/", node.url()), headers).await;
        let body = assert_error(
            res,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "UNSUPPORTED",
        )
        .await;
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("65536"),
            "{body}"
        );
        let res = get_with_headers(&format!("{}/api/v1/users", node.url()), headers).await;
        assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_large", "{body}");
    }
    // A request target over 8 KiB is 414, likewise.
    let long = format!("{}/v2/proto/{}/tags/list", node.url(), "a".repeat(9000));
    let res = get_with_headers(&long, std::slice::from_ref(&creds)).await;
    assert_error(res, StatusCode::URI_TOO_LONG, "UNSUPPORTED").await;
    let long = format!("{}/api/v1/repos?last={}", node.url(), "a".repeat(9000));
    let res = get_with_headers(&long, std::slice::from_ref(&creds)).await;
    assert_eq!(res.status(), StatusCode::URI_TOO_LONG);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large", "{body}");
}

#[tokio::test]
async fn sha512_blobs_are_accepted_and_served() {
    let node = node().await;
    let c = node.client();
    let repo = "proto/sha512";
    let data = blob(71, 3000).data;
    let digest = sha512(&data);
    let put = |location: String, digest: &str, body: Vec<u8>| {
        c.request(Method::PUT, &format!("{location}?digest={digest}"))
            .body(body)
            .send()
    };
    // Declared on POST: the chunks are hashed with sha512 as they come.
    let res = send(
        &c,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest-algorithm=sha512"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let mut location = header(&res, "location").unwrap();
    for (first, chunk) in [(0, &data[..1000]), (1000, &data[1000..])] {
        let res = c
            .request(Method::PATCH, &location)
            .header(
                "content-range",
                format!("{first}-{}", first + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        location = header(&res, "location").unwrap();
    }
    let res = put(location, &digest, vec![]).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let res = send(&c, Method::GET, &format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(header(&res, "etag"), Some(format!("\"{digest}\"")));
    assert_eq!(res.bytes().await.unwrap(), data);
    let res = send(&c, Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-length").as_deref(), Some("3000"));
    assert_eq!(header(&res, "etag"), Some(format!("\"{digest}\"")));

    // A single-request upload (POST, then PUT with the whole body) hashes with the digest's
    // algorithm, and so does POST ?digest=.
    let one = blob(72, 700).data;
    let one_digest = sha512(&one);
    let location = c.start_upload(repo).await.unwrap();
    let res = put(location, &one_digest, one.to_vec()).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(c.get_blob_ok(repo, &one_digest).await.unwrap(), one);
    let mono = blob(73, 800).data;
    let mono_digest = sha512(&mono);
    let res = c
        .request(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={mono_digest}"),
        )
        .body(mono.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(c.get_blob_ok(repo, &mono_digest).await.unwrap(), mono);

    // Undeclared, at the final PUT of a chunked (sha256) session: verified by re-reading the
    // stored chunks; a wrong sha512 digest is refused like a wrong sha256 one.
    let late = blob(74, 2000).data;
    let late_digest = sha512(&late);
    for (claimed, status) in [
        (sha512(b"something else"), StatusCode::BAD_REQUEST),
        (late_digest.clone(), StatusCode::CREATED),
    ] {
        let location = c.start_upload(repo).await.unwrap();
        let res = c
            .request(Method::PATCH, &location)
            .body(late[..1500].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let location = header(&res, "location").unwrap();
        let res = put(location, &claimed, late[1500..].to_vec())
            .await
            .unwrap();
        if status == StatusCode::BAD_REQUEST {
            assert_error(res, status, "DIGEST_INVALID").await;
        } else {
            assert_eq!(res.status(), status);
        }
    }
    assert_eq!(c.get_blob_ok(repo, &late_digest).await.unwrap(), late);

    // An algorithm the registry does not know is refused when the session starts.
    let res = send(
        &c,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest-algorithm=md5"),
    )
    .await;
    assert_error(res, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    // A manifest may reference sha512 blobs.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = sha512(config);
    let res = c
        .request(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={config_digest}"),
        )
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": data.len(),
        }],
    });
    let manifest = Blob::new(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&manifest).unwrap(),
    );
    c.push_manifest_ok(repo, "v1", &manifest).await.unwrap();
    let res = c
        .get_manifest(repo, "v1", &["application/vnd.oci.image.manifest.v1+json"])
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), manifest.data);
}

#[tokio::test]
async fn blobs_answer_if_none_match_with_304() {
    let node = node().await;
    let c = node.client();
    let b = blob(75, 400);
    c.push_blob_monolithic("proto/etag", &b).await.unwrap();
    let path = format!("/v2/proto/etag/blobs/{}", b.digest);
    let res = send(&c, Method::GET, &path).await;
    assert_eq!(res.status(), StatusCode::OK);
    let etag = header(&res, "etag").unwrap();
    assert_eq!(etag, format!("\"{}\"", b.digest));
    for method in [Method::GET, Method::HEAD] {
        for tag in [etag.clone(), b.digest.clone(), "*".to_owned()] {
            let res = c
                .request(method.clone(), &path)
                .header("if-none-match", &tag)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{method} {tag}");
            assert_eq!(header(&res, "etag").as_deref(), Some(etag.as_str()));
            assert!(res.bytes().await.unwrap().is_empty());
        }
        // Another entity tag: the blob itself.
        let res = c
            .request(method.clone(), &path)
            .header("if-none-match", "\"sha256:0000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Not in this repository: 404 as always, never 304.
    let res = c
        .request(Method::GET, &format!("/v2/proto/other/blobs/{}", b.digest))
        .header("if-none-match", "*")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

/// The bound on parts per session (`registry.max_upload_parts`, 10,000 by default, S3's own limit
/// and the largest value allowed, which `config` tests pin), here lowered so the test sends only
/// a few hundred chunks.
#[tokio::test]
async fn an_upload_session_holds_a_bounded_number_of_parts() {
    const PARTS: u32 = 200;
    let node = node_with(&[("AERUGO_REGISTRY__MAX_UPLOAD_PARTS", "200")]).await;
    let c = node.client();
    let mut location = c.start_upload("proto/parts").await.unwrap();
    let mut data = Vec::new();
    for i in 0..PARTS {
        let byte = (i % 251) as u8;
        let res = c
            .request(Method::PATCH, &location)
            .body(vec![byte])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED, "chunk {i}");
        location = header(&res, "location").unwrap();
        data.push(byte);
    }
    // One chunk more is refused and changes nothing; so is a final PUT with a body.
    let res = c
        .request(Method::PATCH, &location)
        .body(vec![1])
        .send()
        .await
        .unwrap();
    let body = assert_error(res, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 200 chunks"),
        "{body}"
    );
    let res = send(&c, Method::GET, &location).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "range").as_deref(), Some("0-199"));
    let digest = Digest::sha256(&data).to_string();
    let mut with_last = data.clone();
    with_last.push(7);
    let res = c
        .request(
            Method::PUT,
            &format!("{location}?digest={}", Digest::sha256(&with_last)),
        )
        .body(vec![7])
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    // The session can still be finished.
    let res = c
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(c.get_blob_ok("proto/parts", &digest).await.unwrap(), data);
}

#[tokio::test]
async fn active_upload_sessions_per_user_are_bounded() {
    let node = node_with(&[("AERUGO_REGISTRY__MAX_ACTIVE_UPLOADS_PER_USER", "5")]).await;
    let c = node.client();
    // Five sessions fill the bound; then twenty starts at once are all refused (on PostgreSQL
    // starts racing *at* the boundary may overshoot it by their number, see
    // `MetaStore::create_upload_bounded`; past it nothing gets in).
    let mut sessions = Vec::new();
    for i in 0..5 {
        let res = send(
            &c,
            Method::POST,
            &format!("/v2/proto/busy{i}/blobs/uploads/"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        sessions.push(header(&res, "location").unwrap());
    }
    let starts = (0..20).map(|i| {
        let c = c.clone();
        async move {
            send(
                &c,
                Method::POST,
                &format!("/v2/proto/more{i}/blobs/uploads/"),
            )
            .await
        }
    });
    let answers = futures::future::join_all(starts).await;
    for res in answers {
        let retry: u64 = header(&res, "retry-after")
            .expect("Retry-After on every refusal")
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&retry), "Retry-After {retry}");
        assert_error(res, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    }
    // A single-request upload counts as a session too.
    let b = blob(76, 100);
    let res = c
        .request(
            Method::POST,
            &format!("/v2/proto/busy/blobs/uploads/?digest={}", b.digest),
        )
        .body(b.data.clone())
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    // Ending a session (cancelled or finished) frees its slot.
    let res = send(&c, Method::DELETE, &sessions[0]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = c
        .request(Method::PUT, &format!("{}?digest={}", sessions[1], b.digest))
        .body(b.data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    for _ in 0..2 {
        let res = send(&c, Method::POST, "/v2/proto/busy/blobs/uploads/").await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let res = send(&c, Method::POST, "/v2/proto/busy/blobs/uploads/").await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
}
