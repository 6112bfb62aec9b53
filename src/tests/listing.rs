//! Tag lists and the catalog: lexical order, `n`/`last`, `Link` pagination.

use aerugo_testkit::image;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{assert_error, header, node, send};

/// Follows `Link` headers from `path` and returns every page's entries.
async fn all_pages(
    c: &aerugo_testkit::RegistryClient,
    path: &str,
    field: &str,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(p) = next {
        let res = send(c, Method::GET, &p).await;
        assert_eq!(res.status(), StatusCode::OK);
        next = header(&res, "link").map(|l| {
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
        let body: Value = res.json().await.unwrap();
        pages.push(serde_json::from_value(body[field].clone()).unwrap());
    }
    pages
}

#[tokio::test]
async fn tags_list_pagination() {
    let node = node().await;
    let c = node.client();
    let img = image::image(20, 1, 100, "amd64");
    for b in img.content_blobs() {
        c.push_blob_monolithic("l/tags", b).await.unwrap();
    }
    let tags = ["v10", "v2", "A", "latest", "_x", "v1"];
    for t in tags {
        c.push_manifest_ok("l/tags", t, &img.manifest)
            .await
            .unwrap();
    }
    let mut sorted: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    let body: Value = send(&c, Method::GET, "/v2/l/tags/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"name": "l/tags", "tags": sorted}));
    let pages = all_pages(&c, "/v2/l/tags/tags/list?n=4", "tags").await;
    assert_eq!(pages, vec![sorted[..4].to_vec(), sorted[4..].to_vec()]);
    let pages = all_pages(&c, "/v2/l/tags/tags/list?n=2&last=latest", "tags").await;
    assert_eq!(
        pages.concat(),
        sorted[sorted.iter().position(|t| t == "latest").unwrap() + 1..].to_vec()
    );
    let res = send(&c, Method::GET, "/v2/l/tags/tags/list?n=0").await;
    assert!(header(&res, "link").is_none());
    assert_eq!(res.json::<Value>().await.unwrap()["tags"], json!([]));
    let res = send(&c, Method::GET, "/v2/l/tags/tags/list?n=6").await;
    assert!(
        header(&res, "link").is_none(),
        "exactly n entries left: no next page"
    );
    for bad in ["n=-1", "n=abc", "n=99999999999"] {
        let res = send(&c, Method::GET, &format!("/v2/l/tags/tags/list?{bad}")).await;
        assert_error(res, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    }
    assert_error(
        send(&c, Method::GET, "/v2/l/none/tags/list").await,
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn catalog_pagination() {
    let node = node().await;
    let c = node.client();
    let b = crate::support::blob(21, 10);
    let repos = ["c/b", "c/a", "a", "c/a/deep", "z9"];
    for r in repos {
        c.push_blob_monolithic(r, &b).await.unwrap();
    }
    let mut sorted: Vec<String> = repos.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    let body: Value = send(&c, Method::GET, "/v2/_catalog")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"repositories": sorted}));
    let pages = all_pages(&c, "/v2/_catalog?n=2", "repositories").await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.concat(), sorted);
    let pages = all_pages(&c, "/v2/_catalog?n=10&last=c%2Fa", "repositories").await;
    assert_eq!(pages.concat(), sorted[2..].to_vec());
}
