//! The metadata store's conformance suite: one set of test bodies every [`MetaStore`] backend runs
//! (SQLite on a temporary file, PostgreSQL on a fresh database from the testkit), so the backends
//! answer every call, edge cases included, the same way.
//!
//! Each body takes a fresh, empty store. A missing PostgreSQL server fails the PostgreSQL run with
//! instructions; it is never skipped.

use std::collections::BTreeSet;
use std::sync::Arc;

mod queue;

use super::identity::{
    ApiKeyRow, GrantRow, GrantSubject, IdentityStore, NameConflict, NamespaceKind, NewUser,
    RefreshTokenRow, RepoListing, UserRow, UserUpdate, Visibility,
};
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::{
    BlobCommit, BlobRow, Delete, MetaStore, NewBlob, NewManifest, PutManifest, UploadPart,
    now_millis,
};
use crate::config::DatabaseConfig;
use crate::oci::{Digest, Reference, RepoName, Tag};

/// Tasks racing in the concurrency bodies.
const RACERS: usize = 16;

/// A fixed time for lease bodies.
const NOW: i64 = 1_000_000_000_000;

fn repo(name: &str) -> RepoName {
    name.parse().expect("valid repository name")
}

fn tag(name: &str) -> Tag {
    name.parse().expect("valid tag")
}

fn digest(seed: &str) -> Digest {
    Digest::sha256(seed.as_bytes())
}

fn part(start: u64, size: u64, key: &str) -> UploadPart {
    UploadPart {
        start,
        size,
        storage_key: key.to_owned(),
    }
}

fn manifest(
    payload: &str,
    blobs: &[&Digest],
    children: &[&Digest],
    t: Option<&str>,
) -> NewManifest {
    NewManifest {
        digest: Digest::sha256(payload.as_bytes()),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        payload: payload.as_bytes().to_vec(),
        subject: None,
        artifact_type: None,
        annotations: None,
        blobs: blobs.iter().map(|d| (*d).clone()).collect(),
        children: children.iter().map(|d| (*d).clone()).collect(),
        tag: t.map(tag),
    }
}

/// Records a verified blob of `size` bytes in `r` through a one-part upload.
async fn push_blob(store: &dyn MetaStore, r: &RepoName, seed: &str, size: u64) -> Digest {
    let d = digest(seed);
    let id = uuid::Uuid::new_v4().to_string();
    store.create_upload(r, &id, b"state").await.unwrap();
    let key = format!("objects/{id}/0");
    assert!(
        store
            .advance_upload(&id, 0, &part(0, size, &key), b"s1")
            .await
            .unwrap()
    );
    let blob = NewBlob {
        digest: d.clone(),
        size,
        storage_key: Some(key),
    };
    store
        .finish_upload(r, &id, size, &blob)
        .await
        .unwrap()
        .unwrap();
    d
}

async fn the_cluster_id_is_created_once(store: &Arc<dyn MetaStore>) {
    // Nodes starting together on a fresh database all get the first committed id.
    let racers = (0..8).map(|i| {
        let store = store.clone();
        async move { store.cluster_id(&format!("candidate-{i}")).await.unwrap() }
    });
    let ids = futures::future::join_all(racers).await;
    assert!(ids[0].starts_with("candidate-"), "{ids:?}");
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert_eq!(store.cluster_id("later").await.unwrap(), ids[0]);
}

async fn empty_store_answers(s: &dyn MetaStore) {
    s.ping().await.unwrap();
    let r = repo("nothing/here");
    let d = digest("nothing");
    assert!(s.list_repositories(None, 10).await.unwrap().is_empty());
    assert!(!s.repository_exists(&r).await.unwrap());
    assert!(s.list_tags(&r, None, 10).await.unwrap().is_none());
    assert!(s.referrers(&r, &d, None).await.unwrap().is_none());
    assert!(
        s.manifest(&r, &Reference::Digest(d.clone()))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.manifest(&r, &Reference::Tag(tag("latest")))
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.blob(&d).await.unwrap().is_none());
    assert!(s.blob_in_repo(&r, &d).await.unwrap().is_none());
    assert!(s.upload(&r, "no-such-upload").await.unwrap().is_none());
    assert!(
        s.delete_upload(&r, "no-such-upload")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.unlink_blob(&r, &d).await.unwrap(), Delete::NotFound);
    assert!(!s.delete_tag(&r, &tag("latest")).await.unwrap());
    assert_eq!(s.delete_manifest(&r, &d).await.unwrap(), Delete::NotFound);
    let p = part(0, 1, "k");
    assert!(
        !s.advance_upload("no-such-upload", 0, &p, b"x")
            .await
            .unwrap()
    );
    let blob = NewBlob {
        digest: d.clone(),
        size: 1,
        storage_key: Some("k".into()),
    };
    assert!(
        s.finish_upload(&r, "no-such-upload", 0, &blob)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.blob(&d).await.unwrap().is_none(),
        "a refused finish records nothing"
    );
    let to = repo("mount/target");
    assert!(s.mount_blob(&r, &to, &d).await.unwrap().is_none());
    // Nothing above may have created a repository.
    assert!(s.list_repositories(None, 10).await.unwrap().is_empty());
    assert!(!s.repository_exists(&to).await.unwrap());
}

async fn listings_are_in_byte_order_and_page_by_keyset(s: &dyn MetaStore) {
    // Byte order puts '-' < '.' < '/' < digits < '_' < letters; a locale collation would not.
    let names = [
        "b", "a", "a-b", "a.b", "a/b", "a0", "a_b", "ab", "0a", "a/b/c", "a--b",
    ];
    for (i, n) in names.iter().enumerate() {
        s.create_upload(&repo(n), &format!("list-{i}"), b"st")
            .await
            .unwrap();
    }
    let mut expected: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    expected.sort();
    assert_eq!(s.list_repositories(None, 100).await.unwrap(), expected);
    assert!(s.list_repositories(None, 0).await.unwrap().is_empty());
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list_repositories(after.as_deref(), 3).await.unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, expected);
    // `after` need not be an existing name.
    let from_a = s.list_repositories(Some("a/"), 100).await.unwrap();
    let want: Vec<String> = expected
        .iter()
        .filter(|n| n.as_str() > "a/")
        .cloned()
        .collect();
    assert_eq!(from_a, want);
    for n in names {
        assert!(s.repository_exists(&repo(n)).await.unwrap());
    }

    let r = repo("tags/order");
    let m = manifest("{\"tags\":1}", &[], &[], None);
    s.put_manifest(&r, &m).await.unwrap();
    assert_eq!(s.list_tags(&r, None, 10).await.unwrap(), Some(Vec::new()));
    let tags = [
        "latest", "B", "a", "Z", "_x", "a.b", "a-b", "1", "A", "a_b", "v1.0", "V1.0",
    ];
    for t in tags {
        let mut m = m.clone();
        m.tag = Some(tag(t));
        assert_eq!(s.put_manifest(&r, &m).await.unwrap(), PutManifest::Stored);
    }
    let mut expected: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
    expected.sort();
    assert_eq!(s.list_tags(&r, None, 100).await.unwrap().unwrap(), expected);
    assert_eq!(s.list_tags(&r, None, 0).await.unwrap(), Some(Vec::new()));
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list_tags(&r, after.as_deref(), 5).await.unwrap().unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, expected);
    let after_z = s.list_tags(&r, Some("Z"), 100).await.unwrap().unwrap();
    let want: Vec<String> = expected
        .iter()
        .filter(|t| t.as_str() > "Z")
        .cloned()
        .collect();
    assert_eq!(after_z, want);
    // Tags of other repositories never leak in.
    assert_eq!(
        s.list_tags(&repo("a"), None, 100).await.unwrap(),
        Some(Vec::new())
    );
}

async fn uploads_advance_by_compare_and_set(s: &dyn MetaStore) {
    let r = repo("uploads/cas");
    let other = repo("uploads/other");
    s.create_upload(&other, "elsewhere", b"x").await.unwrap();
    s.create_upload(&r, "u1", b"state0").await.unwrap();
    assert!(
        s.repository_exists(&r).await.unwrap(),
        "an upload creates its repository"
    );
    let row = s.upload(&r, "u1").await.unwrap().unwrap();
    assert_eq!((row.id.as_str(), row.offset), ("u1", 0));
    assert_eq!(row.hash_state, b"state0");
    assert!(row.parts.is_empty());
    assert!(
        s.upload(&other, "u1").await.unwrap().is_none(),
        "sessions belong to one repository"
    );
    assert!(
        s.create_upload(&r, "u1", b"again").await.is_err(),
        "ids are unique"
    );

    let p1 = part(0, 5, "objects/u1/0-a");
    assert!(s.advance_upload("u1", 0, &p1, b"state5").await.unwrap());
    assert!(
        !s.advance_upload("u1", 0, &p1, b"replayed").await.unwrap(),
        "stale offset"
    );
    let p2 = part(5, 3, "objects/u1/5-b");
    assert!(!s.advance_upload("u1", 4, &p2, b"wrong").await.unwrap());
    assert!(s.advance_upload("u1", 5, &p2, b"state8").await.unwrap());
    let row = s.upload(&r, "u1").await.unwrap().unwrap();
    assert_eq!(row.offset, 8);
    assert_eq!(row.hash_state, b"state8");
    assert_eq!(row.parts, vec![p1.clone(), p2.clone()]);

    assert!(s.delete_upload(&other, "u1").await.unwrap().is_none());
    assert!(
        s.upload(&r, "u1").await.unwrap().is_some(),
        "a foreign delete changes nothing"
    );
    let gone = s.delete_upload(&r, "u1").await.unwrap().unwrap();
    assert_eq!((gone.offset, gone.parts), (8, vec![p1.clone(), p2]));
    assert!(s.upload(&r, "u1").await.unwrap().is_none());
    assert!(s.delete_upload(&r, "u1").await.unwrap().is_none());
    assert!(!s.advance_upload("u1", 8, &p1, b"late").await.unwrap());
}

async fn finishing_an_upload_records_and_links_the_blob(s: &dyn MetaStore) {
    let r = repo("finish/one");
    let r2 = repo("finish/two");
    let d = digest("finish");
    s.create_upload(&r, "f1", b"s").await.unwrap();
    assert!(
        s.advance_upload("f1", 0, &part(0, 4, "objects/f1/0"), b"s4")
            .await
            .unwrap()
    );
    let blob = NewBlob {
        digest: d.clone(),
        size: 4,
        storage_key: Some("objects/f1/0".into()),
    };
    assert!(
        s.finish_upload(&r, "f1", 3, &blob).await.unwrap().is_none(),
        "moved on"
    );
    assert!(
        s.finish_upload(&r2, "f1", 4, &blob)
            .await
            .unwrap()
            .is_none(),
        "other repo"
    );
    assert!(
        s.upload(&r, "f1").await.unwrap().is_some(),
        "a refused finish keeps the session"
    );
    assert!(s.blob(&d).await.unwrap().is_none());
    assert!(!s.repository_exists(&r2).await.unwrap());

    assert_eq!(
        s.finish_upload(&r, "f1", 4, &blob).await.unwrap(),
        Some(BlobCommit::Inserted)
    );
    assert!(
        s.upload(&r, "f1").await.unwrap().is_none(),
        "finishing ends the session"
    );
    let row = BlobRow {
        digest: d.clone(),
        size: 4,
        storage_key: "objects/f1/0".into(),
    };
    assert_eq!(s.blob(&d).await.unwrap(), Some(row.clone()));
    assert_eq!(s.blob_in_repo(&r, &d).await.unwrap(), Some(row.clone()));
    assert!(s.blob_in_repo(&r2, &d).await.unwrap().is_none());
    assert!(
        s.finish_upload(&r, "f1", 4, &blob).await.unwrap().is_none(),
        "once only"
    );

    // The same content again, elsewhere: the first row wins and the new bytes are redundant.
    s.create_upload(&r2, "f2", b"s").await.unwrap();
    assert!(
        s.advance_upload("f2", 0, &part(0, 4, "objects/f2/0"), b"s4")
            .await
            .unwrap()
    );
    let again = NewBlob {
        storage_key: Some("objects/f2/0".into()),
        ..blob
    };
    assert_eq!(
        s.finish_upload(&r2, "f2", 4, &again).await.unwrap(),
        Some(BlobCommit::AlreadyPresent(row.clone()))
    );
    assert_eq!(s.blob_in_repo(&r2, &d).await.unwrap(), Some(row.clone()));
    assert_eq!(s.blob(&d).await.unwrap(), Some(row));
}

async fn mounts_link_only_what_the_source_holds(s: &dyn MetaStore) {
    let from = repo("mount/source");
    let d = push_blob(s, &from, "mounted", 7).await;
    let to = repo("mount/dest/nested");
    let row = s.mount_blob(&from, &to, &d).await.unwrap().unwrap();
    assert_eq!((row.digest.clone(), row.size), (d.clone(), 7));
    assert!(s.repository_exists(&to).await.unwrap());
    assert_eq!(s.blob_in_repo(&to, &d).await.unwrap(), Some(row.clone()));
    // Mounting twice is harmless.
    assert_eq!(s.mount_blob(&from, &to, &d).await.unwrap(), Some(row));
    // A source without the blob mounts nothing and creates nothing, even if the blob exists.
    let empty = repo("mount/empty-source");
    let never = repo("mount/never");
    s.create_upload(&empty, "mount-empty", b"s").await.unwrap();
    assert!(s.mount_blob(&empty, &never, &d).await.unwrap().is_none());
    assert!(!s.repository_exists(&never).await.unwrap());
    assert!(
        s.mount_blob(&repo("mount/unknown"), &never, &d)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!s.repository_exists(&never).await.unwrap());
}

async fn refused_manifest_pushes_write_nothing(s: &dyn MetaStore) {
    let fresh = repo("refused/fresh");
    let (b1, b2, c1) = (digest("rb1"), digest("rb2"), digest("rc1"));
    let m = manifest("{\"refused\":1}", &[&b1, &b2], &[&c1], Some("v1"));
    assert_eq!(
        s.put_manifest(&fresh, &m).await.unwrap(),
        PutManifest::MissingReferences(vec![b1.clone(), b2.clone(), c1.clone()])
    );
    assert!(
        !s.repository_exists(&fresh).await.unwrap(),
        "not even the repository row"
    );
    assert!(s.list_tags(&fresh, None, 10).await.unwrap().is_none());
    let names = s.list_repositories(None, 1000).await.unwrap();
    assert!(!names.contains(&fresh.as_str().to_owned()));

    // In an existing repository only the missing references are named, blobs before children.
    let r = repo("refused/existing");
    let have = push_blob(s, &r, "rhave", 3).await;
    let m = manifest("{\"refused\":2}", &[&b1, &have, &b2], &[&c1], Some("v1"));
    assert_eq!(
        s.put_manifest(&r, &m).await.unwrap(),
        PutManifest::MissingReferences(vec![b1.clone(), b2.clone(), c1])
    );
    assert_eq!(s.list_tags(&r, None, 10).await.unwrap(), Some(Vec::new()));
    assert!(
        s.manifest(&r, &Reference::Digest(m.digest.clone()))
            .await
            .unwrap()
            .is_none()
    );
    // A blob linked to another repository does not count.
    let elsewhere = repo("refused/elsewhere");
    let other = push_blob(s, &elsewhere, "relsewhere", 2).await;
    let m = manifest("{\"refused\":3}", &[&other], &[], None);
    assert_eq!(
        s.put_manifest(&r, &m).await.unwrap(),
        PutManifest::MissingReferences(vec![other])
    );
    // A manifest without references may create its repository.
    let bare = repo("refused/bare");
    let m = manifest("{\"bare\":1}", &[], &[], Some("latest"));
    assert_eq!(
        s.put_manifest(&bare, &m).await.unwrap(),
        PutManifest::Stored
    );
    assert!(s.repository_exists(&bare).await.unwrap());
}

async fn manifests_tags_and_indexes(s: &dyn MetaStore) {
    let r = repo("manifests/app");
    let config = push_blob(s, &r, "config", 10).await;
    let layer = push_blob(s, &r, "layer", 20).await;
    let m1 = manifest("{\"m\":1}", &[&config, &layer, &layer], &[], Some("v1"));
    assert_eq!(s.put_manifest(&r, &m1).await.unwrap(), PutManifest::Stored);
    let by_tag = s
        .manifest(&r, &Reference::Tag(tag("v1")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_tag.digest, m1.digest);
    assert_eq!(by_tag.media_type, m1.media_type);
    assert_eq!(by_tag.payload, m1.payload);
    let by_digest = s
        .manifest(&r, &Reference::Digest(m1.digest.clone()))
        .await
        .unwrap();
    assert_eq!(by_digest.unwrap().payload, m1.payload);
    assert!(
        s.manifest(&repo("manifests/other"), &Reference::Tag(tag("v1")))
            .await
            .unwrap()
            .is_none()
    );

    // The same manifest again, with another tag: both tags point at it.
    let mut again = m1.clone();
    again.tag = Some(tag("v2"));
    assert_eq!(
        s.put_manifest(&r, &again).await.unwrap(),
        PutManifest::Stored
    );
    assert_eq!(
        s.list_tags(&r, None, 10).await.unwrap().unwrap(),
        ["v1", "v2"]
    );
    // Pushed by digest only: no tag changes.
    let mut untagged = m1.clone();
    untagged.tag = None;
    assert_eq!(
        s.put_manifest(&r, &untagged).await.unwrap(),
        PutManifest::Stored
    );

    // Moving a tag.
    let m2 = manifest("{\"m\":2}", &[&config], &[], Some("v1"));
    assert_eq!(s.put_manifest(&r, &m2).await.unwrap(), PutManifest::Stored);
    let moved = s
        .manifest(&r, &Reference::Tag(tag("v1")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.digest, m2.digest);
    let kept = s
        .manifest(&r, &Reference::Tag(tag("v2")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.digest, m1.digest);

    // An index over both; a missing child is refused.
    let mut index = manifest(
        "{\"index\":1}",
        &[],
        &[&m1.digest, &m2.digest],
        Some("multi"),
    );
    index.media_type = "application/vnd.oci.image.index.v1+json".into();
    assert_eq!(
        s.put_manifest(&r, &index).await.unwrap(),
        PutManifest::Stored
    );
    let stored = s
        .manifest(&r, &Reference::Tag(tag("multi")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.media_type, "application/vnd.oci.image.index.v1+json");
    let ghost = digest("ghost");
    let bad = manifest("{\"index\":2}", &[], &[&m1.digest, &ghost], Some("bad"));
    assert_eq!(
        s.put_manifest(&r, &bad).await.unwrap(),
        PutManifest::MissingReferences(vec![ghost])
    );
    assert!(
        s.manifest(&r, &Reference::Tag(tag("bad")))
            .await
            .unwrap()
            .is_none()
    );

    // Deleting tags.
    assert!(s.delete_tag(&r, &tag("v2")).await.unwrap());
    assert!(!s.delete_tag(&r, &tag("v2")).await.unwrap());
    assert!(
        !s.delete_tag(&repo("manifests/unknown"), &tag("v1"))
            .await
            .unwrap()
    );
    assert!(
        s.manifest(&r, &Reference::Digest(m1.digest.clone()))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.list_tags(&r, None, 10).await.unwrap().unwrap(),
        ["multi", "v1"]
    );
}

async fn referenced_content_cannot_be_removed(s: &dyn MetaStore) {
    let r = repo("referenced/app");
    let shared = push_blob(s, &r, "shared-layer", 5).await;
    let loose = push_blob(s, &r, "loose-layer", 6).await;
    // More referencing manifests than a `Referenced` answer names.
    let mut referencing = Vec::new();
    for i in 0..12 {
        let m = manifest(&format!("{{\"ref\":{i}}}"), &[&shared], &[], None);
        assert_eq!(s.put_manifest(&r, &m).await.unwrap(), PutManifest::Stored);
        referencing.push(m.digest);
    }
    referencing.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    match s.unlink_blob(&r, &shared).await.unwrap() {
        Delete::Referenced(by) => assert_eq!(by, referencing[..10].to_vec()),
        other => panic!("expected Referenced, got {other:?}"),
    }
    assert!(s.blob_in_repo(&r, &shared).await.unwrap().is_some());
    assert_eq!(s.unlink_blob(&r, &loose).await.unwrap(), Delete::Deleted);
    assert_eq!(s.unlink_blob(&r, &loose).await.unwrap(), Delete::NotFound);
    assert!(s.blob_in_repo(&r, &loose).await.unwrap().is_none());
    assert!(
        s.blob(&loose).await.unwrap().is_some(),
        "the blob row itself stays (for GC)"
    );

    // An index keeps its children.
    let child = manifest("{\"child\":1}", &[&shared], &[], Some("child"));
    s.put_manifest(&r, &child).await.unwrap();
    let index = manifest("{\"parent\":1}", &[], &[&child.digest], Some("parent"));
    s.put_manifest(&r, &index).await.unwrap();
    assert_eq!(
        s.delete_manifest(&r, &child.digest).await.unwrap(),
        Delete::Referenced(vec![index.digest.clone()])
    );
    assert!(
        s.manifest(&r, &Reference::Tag(tag("child")))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.delete_manifest(&r, &index.digest).await.unwrap(),
        Delete::Deleted
    );
    assert!(
        s.manifest(&r, &Reference::Tag(tag("parent")))
            .await
            .unwrap()
            .is_none(),
        "tags go too"
    );
    assert_eq!(
        s.delete_manifest(&r, &index.digest).await.unwrap(),
        Delete::NotFound
    );
    assert_eq!(
        s.delete_manifest(&r, &child.digest).await.unwrap(),
        Delete::Deleted
    );
    assert_eq!(s.list_tags(&r, None, 10).await.unwrap(), Some(Vec::new()));
    // Once every referencing manifest is gone, the blob may be unlinked.
    for d in &referencing {
        assert_eq!(s.delete_manifest(&r, d).await.unwrap(), Delete::Deleted);
    }
    assert_eq!(s.unlink_blob(&r, &shared).await.unwrap(), Delete::Deleted);
    assert_eq!(
        s.delete_manifest(&r, &digest("never-pushed"))
            .await
            .unwrap(),
        Delete::NotFound
    );
}

async fn referrers_filter_by_artifact_type(s: &dyn MetaStore) {
    let r = repo("referrers/app");
    let subject = manifest("{\"subject\":1}", &[], &[], Some("v1"));
    s.put_manifest(&r, &subject).await.unwrap();
    assert_eq!(
        s.referrers(&r, &subject.digest, None)
            .await
            .unwrap()
            .map(|v| v.len()),
        Some(0)
    );
    let mut pushed = Vec::new();
    for (i, at) in [Some("application/x.sig"), Some("application/x.sbom"), None]
        .into_iter()
        .enumerate()
    {
        let mut m = manifest(&format!("{{\"referrer\":{i}}}"), &[], &[], None);
        m.subject = Some(subject.digest.clone());
        m.artifact_type = at.map(str::to_owned);
        m.annotations = Some(format!("{{\"n\":\"{i}\"}}"));
        assert_eq!(s.put_manifest(&r, &m).await.unwrap(), PutManifest::Stored);
        pushed.push(m);
    }
    let all = s
        .referrers(&r, &subject.digest, None)
        .await
        .unwrap()
        .unwrap();
    let mut want: Vec<&Digest> = pushed.iter().map(|m| &m.digest).collect();
    want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(all.iter().map(|x| &x.digest).collect::<Vec<_>>(), want);
    for row in &all {
        let m = pushed.iter().find(|m| m.digest == row.digest).unwrap();
        assert_eq!(row.size, m.payload.len() as u64);
        assert_eq!(row.media_type, m.media_type);
        assert_eq!(row.artifact_type, m.artifact_type);
        assert_eq!(row.annotations, m.annotations);
    }
    let sigs = s
        .referrers(&r, &subject.digest, Some("application/x.sig"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].digest, pushed[0].digest);
    let none = s
        .referrers(&r, &subject.digest, Some("application/none"))
        .await
        .unwrap();
    assert_eq!(none.map(|v| v.len()), Some(0));
    assert!(
        s.referrers(&repo("referrers/unknown"), &subject.digest, None)
            .await
            .unwrap()
            .is_none()
    );
}

async fn concurrent_advances_have_one_winner(store: &Arc<dyn MetaStore>) {
    let r = repo("race/upload");
    store.create_upload(&r, "race", b"s0").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let p = part(0, 10, &format!("objects/race/0-{i}"));
            store
                .advance_upload("race", 0, &p, format!("s{i}").as_bytes())
                .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one chunk wins the compare-and-set");
    let row = store.upload(&r, "race").await.unwrap().unwrap();
    assert_eq!(row.offset, 10);
    assert_eq!(row.parts.len(), 1);
    let winner = row.parts[0]
        .storage_key
        .trim_start_matches("objects/race/0-");
    assert_eq!(
        row.hash_state,
        format!("s{winner}").as_bytes(),
        "state and part agree"
    );
}

async fn concurrent_pushes_to_one_tag_all_land(store: &Arc<dyn MetaStore>) {
    let r = repo("race/tag");
    let config = push_blob(store.as_ref(), &r, "race-config", 3).await;
    let mut tasks = Vec::new();
    let mut digests = BTreeSet::new();
    for i in 0..RACERS {
        let m = manifest(&format!("{{\"race\":{i}}}"), &[&config], &[], Some("hot"));
        digests.insert(m.digest.as_str().to_owned());
        let (store, r) = (store.clone(), r.clone());
        tasks.push(tokio::spawn(
            async move { store.put_manifest(&r, &m).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), PutManifest::Stored);
    }
    let hot = store
        .manifest(&r, &Reference::Tag(tag("hot")))
        .await
        .unwrap()
        .unwrap();
    assert!(
        digests.contains(hot.digest.as_str()),
        "the tag points at one of the pushes"
    );
    for d in &digests {
        let d: Digest = d.parse().unwrap();
        assert!(
            store
                .manifest(&r, &Reference::Digest(d))
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(
        store.list_tags(&r, None, 10).await.unwrap().unwrap(),
        ["hot"]
    );
}

async fn concurrent_repository_creation_and_blob_commits(store: &Arc<dyn MetaStore>) {
    // Many sessions creating one repository at once: one repository row.
    let r = repo("race/new-repo");
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let (store, r) = (store.clone(), r.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("new-repo-{i}");
            store.create_upload(&r, &id, b"s").await?;
            let key = format!("objects/{id}/0");
            store
                .advance_upload(&id, 0, &part(0, 9, &key), b"s9")
                .await?;
            let blob = NewBlob {
                digest: digest("race-same-content"),
                size: 9,
                storage_key: Some(key),
            };
            store.finish_upload(&r, &id, 9, &blob).await
        }));
    }
    let mut inserted = 0;
    let mut present = BTreeSet::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Some(BlobCommit::Inserted) => inserted += 1,
            Some(BlobCommit::AlreadyPresent(row)) => {
                present.insert(row.storage_key);
            }
            None | Some(BlobCommit::NeedsBytes) => panic!("every session was at its offset"),
        }
    }
    assert_eq!(inserted, 1, "exactly one upload records the content");
    assert!(
        present.len() <= 1,
        "every later upload sees the one winner: {present:?}"
    );
    let names = store.list_repositories(None, 10_000).await.unwrap();
    assert_eq!(names.iter().filter(|n| n.as_str() == r.as_str()).count(), 1);
    let row = store
        .blob_in_repo(&r, &digest("race-same-content"))
        .await
        .unwrap()
        .unwrap();
    if let Some(key) = present.first() {
        assert_eq!(&row.storage_key, key);
    }
}

async fn stale_uploads_and_their_removal(s: &dyn MetaStore) {
    let r = repo("stale/uploads");
    let before_start = now_millis() - 1;
    for id in ["stale-a", "stale-b", "stale-c"] {
        s.create_upload(&r, id, b"s").await.unwrap();
    }
    s.advance_upload("stale-c", 0, &part(0, 4, "objects/stale-c/0"), b"s4")
        .await
        .unwrap();
    let ours = |rows: Vec<super::StaleUpload>| -> Vec<String> {
        rows.into_iter()
            .filter(|u| u.repo == r.as_str())
            .map(|u| u.id)
            .collect()
    };
    // Nothing is stale before it started.
    assert!(ours(s.stale_uploads(before_start, 100).await.unwrap()).is_empty());
    let later = now_millis() + 60_000;
    let mut all = ours(s.stale_uploads(later, 10_000).await.unwrap());
    all.sort();
    assert_eq!(all, ["stale-a", "stale-b", "stale-c"]);
    assert_eq!(s.stale_uploads(later, 2).await.unwrap().len(), 2, "limit");
    let row = s
        .stale_uploads(later, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.id == "stale-c")
        .unwrap();
    assert!(row.updated_at >= before_start && row.updated_at <= now_millis());

    // A session that advanced after the cutoff is kept; an old one goes with its parts.
    assert!(
        !s.delete_stale_upload("stale-c", before_start)
            .await
            .unwrap()
    );
    assert!(s.upload(&r, "stale-c").await.unwrap().is_some());
    assert!(s.delete_stale_upload("stale-c", later).await.unwrap());
    assert!(s.upload(&r, "stale-c").await.unwrap().is_none());
    assert!(!s.delete_stale_upload("stale-c", later).await.unwrap());
    assert!(!s.delete_stale_upload("never-was", later).await.unwrap());
    let mut left = ours(s.stale_uploads(later, 10_000).await.unwrap());
    left.sort();
    assert_eq!(left, ["stale-a", "stale-b"]);
    // Removing a stale session leaves the repository's other sessions alone.
    assert!(s.upload(&r, "stale-a").await.unwrap().is_some());
}

async fn leases_have_one_holder(store: &Arc<dyn MetaStore>) {
    let s = store.as_ref();
    assert!(
        s.try_acquire_lease("job", "node-a", NOW, 60_000)
            .await
            .unwrap()
    );
    assert!(
        !s.try_acquire_lease("job", "node-b", NOW, 60_000)
            .await
            .unwrap()
    );
    assert!(
        s.try_acquire_lease("job", "node-a", NOW, 60_000)
            .await
            .unwrap(),
        "the holder renews its lease"
    );
    // Leases are independent by name.
    assert!(
        s.try_acquire_lease("other-job", "node-b", NOW, 60_000)
            .await
            .unwrap()
    );
    // An expired lease goes to whoever asks next.
    assert!(
        s.try_acquire_lease("lapsed", "node-a", NOW, 0)
            .await
            .unwrap()
    );
    assert!(
        s.try_acquire_lease("lapsed", "node-b", NOW, 60_000)
            .await
            .unwrap()
    );
    assert!(
        !s.try_acquire_lease("lapsed", "node-a", NOW, 60_000)
            .await
            .unwrap()
    );

    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .try_acquire_lease("contended", &format!("racer-{i}"), NOW, 60_000)
                .await
        }));
    }
    let mut holders = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            holders += 1;
        }
    }
    assert_eq!(holders, 1, "exactly one racer takes a free lease");
}

/// The store configuration for the database at `url`, otherwise the defaults.
pub(crate) fn pg_config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: url.to_owned(),
        max_connections: 8,
        ..DatabaseConfig::default()
    }
}

/// A PostgreSQL store on a fresh database, and the database (dropped after the store).
pub(crate) async fn postgres_store() -> (PostgresStore, aerugo_testkit::postgres::TestDatabase) {
    let db = aerugo_testkit::postgres::TestDatabase::create()
        .await
        .expect("a PostgreSQL server for the metadata tests");
    let store = PostgresStore::open(&pg_config(db.url())).await.unwrap();
    (store, db)
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        username: name.to_owned(),
        email: format!("{name}@example.com"),
        password_hash: format!("hash-{name}"),
        is_admin: false,
        adopt: false,
    }
}

async fn user(ids: &dyn IdentityStore, name: &str) -> UserRow {
    ids.create_user(&new_user(name)).await.unwrap().unwrap()
}

fn names<T>(rows: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    rows.iter().map(|r| f(r).to_owned()).collect()
}

async fn users_share_one_namespace_and_list_in_byte_order(ids: &dyn IdentityStore) {
    assert_eq!(ids.count_users().await.unwrap(), 0);
    assert!(ids.list_users(None, 10).await.unwrap().is_empty());
    let a = user(ids, "a").await;
    for name in ["b", "ab", "a-b", "Z"] {
        user(ids, name).await;
    }
    assert_eq!(ids.count_users().await.unwrap(), 5);
    assert_eq!(
        ids.create_user(&new_user("a")).await.unwrap().unwrap_err(),
        NameConflict::Taken
    );
    let listed = ids.list_users(None, 2).await.unwrap();
    assert_eq!(names(&listed, |u| &u.username), ["Z", "a"]);
    let listed = ids.list_users(Some("a"), 10).await.unwrap();
    assert_eq!(names(&listed, |u| &u.username), ["a-b", "ab", "b"]);

    let by_name = ids.user_by_name("a").await.unwrap().unwrap();
    assert_eq!(
        (
            by_name.id.as_str(),
            by_name.email.as_str(),
            by_name.is_admin
        ),
        (a.id.as_str(), "a@example.com", false)
    );
    assert_eq!(by_name.created_at, a.created_at);
    assert!(ids.user_by_name("A").await.unwrap().is_none());
    assert!(ids.user_by_id("nobody").await.unwrap().is_none());

    let update = UserUpdate {
        email: Some("new@example.com".into()),
        is_admin: Some(true),
        ..UserUpdate::default()
    };
    assert!(ids.update_user(&a.id, &update).await.unwrap());
    let updated = ids.user_by_id(&a.id).await.unwrap().unwrap();
    assert_eq!(updated.email, "new@example.com");
    assert_eq!(updated.password_hash, "hash-a");
    assert!(updated.is_admin);
    assert!(
        !ids.update_user("nobody", &UserUpdate::default())
            .await
            .unwrap()
    );
    assert_eq!(ids.delete_user("nobody").await.unwrap(), Ok(false));

    // A user's name is a namespace: no organization may take it.
    assert_eq!(
        ids.create_org("a", &a.id, true).await.unwrap().unwrap_err(),
        NameConflict::Taken
    );
}

async fn orgs_teams_and_memberships(ids: &dyn IdentityStore) {
    let owner = user(ids, "owner").await;
    let member = user(ids, "member").await;
    let acme = ids
        .create_org("acme", &owner.id, false)
        .await
        .unwrap()
        .unwrap();
    assert!(
        ids.create_org("acme", &member.id, false)
            .await
            .unwrap()
            .is_err()
    );
    assert!(ids.create_user(&new_user("acme")).await.unwrap().is_err());
    let zeta = ids
        .create_org("Zeta", &member.id, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids.org_by_name("acme").await.unwrap().unwrap().id, acme.id);
    assert!(ids.org_by_name("owner").await.unwrap().is_none());

    let all = ids.list_orgs(&member.id, true, None, 10).await.unwrap();
    assert_eq!(names(&all, |o| &o.org.name), ["Zeta", "acme"]);
    assert_eq!(
        all.iter().map(|o| o.role.as_deref()).collect::<Vec<_>>(),
        [Some("owner"), None]
    );
    let after = ids
        .list_orgs(&member.id, true, Some("Zeta"), 10)
        .await
        .unwrap();
    assert_eq!(names(&after, |o| &o.org.name), ["acme"]);
    let mine = ids.list_orgs(&member.id, false, None, 10).await.unwrap();
    assert_eq!(names(&mine, |o| &o.org.name), ["Zeta"]);

    ids.set_org_member(&acme.id, &member.id, "member")
        .await
        .unwrap();
    ids.set_org_member(&acme.id, &member.id, "admin")
        .await
        .unwrap();
    let members = ids.org_members(&acme.id).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| (m.username.as_str(), m.role.as_str()))
            .collect::<Vec<_>>(),
        [("member", "admin"), ("owner", "owner")]
    );
    assert_eq!(
        ids.list_orgs(&member.id, false, None, 10)
            .await
            .unwrap()
            .iter()
            .map(|o| o.role.as_deref())
            .collect::<Vec<_>>(),
        [Some("owner"), Some("admin")]
    );
    // The last owner of an organization cannot be deleted.
    let refused = ids.delete_user(&owner.id).await.unwrap();
    assert!(
        refused
            .unwrap_err()
            .contains("last owner of organization acme")
    );

    let devs = ids.create_team(&acme.id, "devs").await.unwrap().unwrap();
    assert!(ids.create_team(&acme.id, "devs").await.unwrap().is_none());
    ids.create_team(&acme.id, "Ops").await.unwrap().unwrap();
    ids.create_team(&zeta.id, "devs").await.unwrap().unwrap();
    assert_eq!(
        ids.team(&acme.id, "devs").await.unwrap().unwrap().id,
        devs.id
    );
    assert!(ids.team(&acme.id, "nope").await.unwrap().is_none());
    let teams = ids.list_teams(&acme.id).await.unwrap();
    assert_eq!(names(&teams, |t| &t.name), ["Ops", "devs"]);

    ids.add_team_member(&devs.id, &member.id).await.unwrap();
    ids.add_team_member(&devs.id, &member.id).await.unwrap();
    ids.add_team_member(&devs.id, &owner.id).await.unwrap();
    let in_team = ids.team_members(&devs.id).await.unwrap();
    assert_eq!(
        in_team
            .iter()
            .map(|m| (m.username.as_str(), m.role.as_str()))
            .collect::<Vec<_>>(),
        [("member", "member"), ("owner", "member")]
    );
    assert!(ids.remove_team_member(&devs.id, &owner.id).await.unwrap());
    assert!(!ids.remove_team_member(&devs.id, &owner.id).await.unwrap());
    // Leaving the org leaves its teams.
    assert!(ids.remove_org_member(&acme.id, &member.id).await.unwrap());
    assert!(!ids.remove_org_member(&acme.id, &member.id).await.unwrap());
    assert!(ids.team_members(&devs.id).await.unwrap().is_empty());
    assert!(ids.delete_team(&devs.id).await.unwrap());
    assert!(!ids.delete_team(&devs.id).await.unwrap());
    assert_eq!(
        names(&ids.list_teams(&acme.id).await.unwrap(), |t| &t.name),
        ["Ops"]
    );

    assert_eq!(ids.delete_org(&acme.id).await.unwrap(), Ok(true));
    assert_eq!(ids.delete_org(&acme.id).await.unwrap(), Ok(false));
    assert!(ids.org_by_name("acme").await.unwrap().is_none());
    assert!(ids.list_teams(&acme.id).await.unwrap().is_empty());
    assert_eq!(ids.delete_user(&owner.id).await.unwrap(), Ok(true));
    assert!(ids.user_by_name("owner").await.unwrap().is_none());
    // The name is free again.
    user(ids, "owner").await;
}

async fn repository_access_facts_and_grants(meta: &dyn MetaStore, ids: &dyn IdentityStore) {
    let carol = user(ids, "carol").await;
    let dave = user(ids, "dave").await;
    let corp = ids
        .create_org("corp", &carol.id, false)
        .await
        .unwrap()
        .unwrap();
    let all_repos = [
        "carol/app",
        "corp/api",
        "corp/web",
        "corpus/x",
        "other/thing",
    ];
    for name in all_repos {
        push_blob(meta, &repo(name), name, 1).await;
        ids.init_visibility(name, Visibility::Private)
            .await
            .unwrap();
    }
    // Only a repository without a visibility takes the initial one.
    ids.init_visibility("corp/web", Visibility::Public)
        .await
        .unwrap();
    assert!(
        ids.set_visibility("other/thing", Visibility::Public)
            .await
            .unwrap()
    );
    assert!(
        !ids.set_visibility("no/repo", Visibility::Public)
            .await
            .unwrap()
    );
    let summary = ids.repository("corp/web").await.unwrap().unwrap();
    assert_eq!(
        (summary.name.as_str(), summary.visibility),
        ("corp/web", Visibility::Private)
    );
    assert!(ids.repository("no/repo").await.unwrap().is_none());

    // Tags with their sizes: the manifest plus its blobs.
    let r = repo("corp/api");
    let config = push_blob(meta, &r, "api-config", 7).await;
    let m = manifest("{\"api\":1}", &[&config], &[], Some("v1"));
    assert_eq!(
        meta.put_manifest(&r, &m).await.unwrap(),
        PutManifest::Stored
    );
    let tags = ids.repository_tags("corp/api").await.unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(
        (tags[0].name.as_str(), tags[0].digest.as_str()),
        ("v1", m.digest.as_str())
    );
    assert_eq!(tags[0].size, m.payload.len() as u64 + 7);
    assert!(ids.repository_tags("no/repo").await.unwrap().is_empty());

    let facts = ids.repo_facts("nobody/x", None).await.unwrap();
    assert!(!facts.exists && !facts.public && facts.namespace.is_none());
    let facts = ids.repo_facts("carol/app", Some(&carol.id)).await.unwrap();
    assert!(facts.exists && !facts.public && facts.owns_namespace);
    assert_eq!(facts.namespace, Some(("carol".into(), NamespaceKind::User)));
    assert!(
        !ids.repo_facts("carol/app", Some(&dave.id))
            .await
            .unwrap()
            .owns_namespace
    );
    let facts = ids.repo_facts("corp/api", Some(&carol.id)).await.unwrap();
    assert_eq!(facts.namespace, Some(("corp".into(), NamespaceKind::Org)));
    assert_eq!(facts.org_role.as_deref(), Some("owner"));
    assert!(ids.repo_facts("other/thing", None).await.unwrap().public);

    let team = ids.create_team(&corp.id, "devs").await.unwrap().unwrap();
    ids.add_team_member(&team.id, &dave.id).await.unwrap();
    let to_dave = GrantSubject::User(dave.id.clone());
    let to_team = GrantSubject::Team(team.id.clone());
    assert!(ids.grant("corp/api", &to_dave, "read").await.unwrap());
    assert!(ids.grant("corp/api", &to_dave, "write").await.unwrap());
    assert!(ids.grant("corp/api", &to_team, "read").await.unwrap());
    assert!(!ids.grant("no/repo", &to_dave, "read").await.unwrap());
    let facts = ids.repo_facts("corp/api", Some(&dave.id)).await.unwrap();
    assert_eq!(facts.org_role, None);
    assert_eq!(facts.user_grant.as_deref(), Some("write"));
    assert_eq!(facts.team_grants, ["read"]);
    let grants = ids.grants("corp/api").await.unwrap();
    let grant = |kind: &str, name: &str, permission: &str| GrantRow {
        subject_kind: kind.into(),
        subject_name: name.into(),
        permission: permission.into(),
    };
    assert_eq!(
        grants,
        [
            grant("team", "corp/devs", "read"),
            grant("user", "dave", "write")
        ]
    );

    let visible = |user: Option<String>,
                   all: bool,
                   ns: Option<&'static str>,
                   after: Option<&'static str>| {
        async move {
            let rows = ids
                .visible_repositories(&RepoListing {
                    user: user.as_deref(),
                    all,
                    namespace: ns,
                    after,
                    limit: 100,
                    ..RepoListing::default()
                })
                .await
                .unwrap();
            names(&rows, |r| &r.summary.name)
        }
    };
    // Listings read, for each row, exactly the facts a single repository's decision reads.
    for user in [None, Some(&carol.id), Some(&dave.id)] {
        let rows = ids
            .visible_repositories(&RepoListing {
                user: user.map(String::as_str),
                all: true,
                limit: 100,
                ..RepoListing::default()
            })
            .await
            .unwrap();
        assert_eq!(names(&rows, |r| &r.summary.name), all_repos);
        for row in rows {
            let one = ids
                .repo_facts(&row.summary.name, user.map(String::as_str))
                .await
                .unwrap();
            let listed = row.facts;
            let what = format!("{} for {user:?}", row.summary.name);
            assert!(listed.exists && one.exists, "{what}");
            assert_eq!(listed.public, one.public, "{what}");
            assert_eq!(listed.owns_namespace, one.owns_namespace, "{what}");
            assert_eq!(listed.org_role, one.org_role, "{what}");
            assert_eq!(listed.user_grant, one.user_grant, "{what}");
            let rank = |p: &String| ["read", "write", "admin"].iter().position(|q| q == p);
            let highest = one.team_grants.iter().max_by_key(|p| rank(p)).cloned();
            assert_eq!(listed.team_grants, Vec::from_iter(highest), "{what}");
        }
    }
    // An API key's scope narrows the private candidates; public repositories stay.
    let keyed = |ns: Option<&'static str>, repo: Option<&'static str>| {
        let carol = carol.id.clone();
        async move {
            let rows = ids
                .visible_repositories(&RepoListing {
                    user: Some(&carol),
                    key_namespace: ns,
                    key_repository: repo,
                    limit: 100,
                    ..RepoListing::default()
                })
                .await
                .unwrap();
            names(&rows, |r| &r.summary.name)
        }
    };
    assert_eq!(
        keyed(Some("corp"), None).await,
        ["corp/api", "corp/web", "other/thing"]
    );
    assert_eq!(
        keyed(None, Some("carol/app")).await,
        ["carol/app", "other/thing"]
    );
    assert_eq!(
        keyed(None, Some("corp/web")).await,
        ["corp/web", "other/thing"]
    );
    assert_eq!(visible(None, true, None, None).await, all_repos);
    assert_eq!(visible(None, false, None, None).await, ["other/thing"]);
    assert_eq!(
        visible(Some(carol.id.clone()), false, None, None).await,
        ["carol/app", "corp/api", "corp/web", "other/thing"]
    );
    assert_eq!(
        visible(Some(dave.id.clone()), false, None, None).await,
        ["corp/api", "other/thing"]
    );
    assert_eq!(
        visible(None, true, Some("corp"), None).await,
        ["corp/api", "corp/web"]
    );
    assert_eq!(
        visible(None, true, Some("corp"), Some("corp/api")).await,
        ["corp/web"]
    );
    assert!(visible(None, true, Some("corp/api"), None).await.is_empty());
    let page = ids
        .visible_repositories(&RepoListing {
            all: true,
            limit: 2,
            ..RepoListing::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&page, |r| &r.summary.name), ["carol/app", "corp/api"]);

    assert!(ids.revoke("corp/api", &to_dave).await.unwrap());
    assert!(!ids.revoke("corp/api", &to_dave).await.unwrap());
    assert_eq!(ids.grants("corp/api").await.unwrap().len(), 1);

    // Nobody owns "other": its name cannot be claimed over its repository, except by adoption.
    assert_eq!(
        ids.create_org("other", &dave.id, false)
            .await
            .unwrap()
            .unwrap_err(),
        NameConflict::HoldsRepositories
    );
    assert_eq!(
        ids.create_user(&new_user("other"))
            .await
            .unwrap()
            .unwrap_err(),
        NameConflict::HoldsRepositories
    );
    let adopted = ids
        .create_org("other", &dave.id, true)
        .await
        .unwrap()
        .unwrap();
    let facts = ids.repo_facts("other/thing", Some(&dave.id)).await.unwrap();
    assert_eq!(facts.org_role.as_deref(), Some("owner"));

    // Deleting an owner whose namespace holds repositories leaves a tombstone: the name stays
    // reserved and nobody owns the repositories.
    assert_eq!(ids.delete_org(&adopted.id).await.unwrap(), Ok(true));
    assert!(ids.org_by_name("other").await.unwrap().is_none());
    let facts = ids.repo_facts("other/thing", Some(&dave.id)).await.unwrap();
    assert!(facts.namespace.is_none() && facts.org_role.is_none());
    assert_eq!(
        ids.create_org("other", &dave.id, false)
            .await
            .unwrap()
            .unwrap_err(),
        NameConflict::HoldsRepositories
    );
    // Once the repositories are gone the tombstone no longer holds the name.
    assert!(
        meta.delete_repository(&"other/thing".parse().unwrap())
            .await
            .unwrap()
    );
    let other = ids
        .create_org("other", &dave.id, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids.delete_org(&other.id).await.unwrap(), Ok(true));

    let name = |n: &str| n.parse::<RepoName>().unwrap();
    assert!(meta.delete_repository(&name("corp/api")).await.unwrap());
    assert!(!meta.delete_repository(&name("corp/api")).await.unwrap());
    assert!(ids.repository("corp/api").await.unwrap().is_none());
    assert!(ids.grants("corp/api").await.unwrap().is_empty());
    assert!(!meta.repository_exists(&r).await.unwrap());
    assert!(meta.delete_repository(&name("corp/web")).await.unwrap());
    // "corpus/x" is not in "corp": nothing is left, so no tombstone either.
    assert_eq!(ids.delete_org(&corp.id).await.unwrap(), Ok(true));
    user(ids, "corp").await;
    // carol's namespace still holds carol/app: her name stays reserved after she is deleted.
    assert_eq!(ids.delete_user(&carol.id).await.unwrap(), Ok(true));
    assert!(
        ids.repo_facts("carol/app", None)
            .await
            .unwrap()
            .namespace
            .is_none()
    );
    assert_eq!(
        ids.create_user(&new_user("carol"))
            .await
            .unwrap()
            .unwrap_err(),
        NameConflict::HoldsRepositories
    );
    assert!(meta.delete_repository(&name("carol/app")).await.unwrap());
    user(ids, "carol").await;
}

async fn api_keys_refresh_tokens_and_login_failures(ids: &dyn IdentityStore) {
    let eve = user(ids, "eve").await;
    let key = |id: &str, name: &str| ApiKeyRow {
        id: id.into(),
        user_id: eve.id.clone(),
        name: name.into(),
        secret_hash: vec![1, 2, 3, 255],
        scope_kind: "repository".into(),
        scope_name: "eve/app".into(),
        permission: "write".into(),
        expires_at: Some(now_millis() + 60_000),
        revoked_at: None,
        created_at: now_millis(),
    };
    assert!(ids.create_api_key(&key("k1", "b-key")).await.unwrap());
    assert!(ids.create_api_key(&key("k2", "A-key")).await.unwrap());
    assert!(!ids.create_api_key(&key("k3", "b-key")).await.unwrap());
    let k1 = ids.api_key("k1").await.unwrap().unwrap();
    assert_eq!(
        (
            k1.name.as_str(),
            k1.secret_hash.as_slice(),
            k1.scope_name.as_str()
        ),
        ("b-key", &[1u8, 2, 3, 255][..], "eve/app")
    );
    assert!(k1.expires_at.is_some() && k1.revoked_at.is_none());
    assert!(ids.api_key("k3").await.unwrap().is_none());
    let listed = ids.list_api_keys(&eve.id).await.unwrap();
    assert_eq!(names(&listed, |k| &k.name), ["A-key", "b-key"]);
    assert!(!ids.revoke_api_key("someone", "k1").await.unwrap());
    assert!(ids.revoke_api_key(&eve.id, "k1").await.unwrap());
    assert!(!ids.revoke_api_key(&eve.id, "k1").await.unwrap());
    assert!(
        ids.api_key("k1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );

    let token = RefreshTokenRow {
        id: "t1".into(),
        user_id: eve.id.clone(),
        service: "registry".into(),
        secret_hash: vec![9; 32],
        expires_at: now_millis() + 60_000,
        client_id: "docker".into(),
        created_at: 0,
        last_used_at: None,
    };
    ids.create_refresh_token(&token).await.unwrap();
    let stored = ids.refresh_token("t1").await.unwrap().unwrap();
    assert_eq!(
        (
            stored.user_id.as_str(),
            stored.service.as_str(),
            stored.secret_hash.as_slice()
        ),
        (eve.id.as_str(), "registry", &[9u8; 32][..])
    );
    assert_eq!(stored.expires_at, token.expires_at);
    assert_eq!(stored.client_id, "docker");
    assert!(stored.created_at > 0 && stored.last_used_at.is_none());
    assert!(ids.refresh_token("t2").await.unwrap().is_none());
    ids.touch_refresh_token("t1", 1_000_000).await.unwrap();
    // Within a minute of the last use nothing is written.
    ids.touch_refresh_token("t1", 1_030_000).await.unwrap();
    let stored = ids.refresh_token("t1").await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(1_000_000));
    for id in ["t2", "t3"] {
        let t = RefreshTokenRow {
            id: id.into(),
            ..token.clone()
        };
        ids.create_refresh_token(&t).await.unwrap();
    }
    let expired = RefreshTokenRow {
        id: "t0".into(),
        expires_at: now_millis() - 1,
        ..token.clone()
    };
    ids.create_refresh_token(&expired).await.unwrap();
    let listed = ids.list_refresh_tokens(&eve.id).await.unwrap();
    assert_eq!(names(&listed, |t| &t.id), ["t1", "t2", "t3"]);
    assert!(!ids.delete_refresh_token("someone", "t3").await.unwrap());
    assert!(ids.delete_refresh_token(&eve.id, "t3").await.unwrap());
    assert!(!ids.delete_refresh_token(&eve.id, "t3").await.unwrap());
    // A new password revokes every refresh token and moves the credential generation on; other
    // changes do neither.
    let before = ids.user_by_id(&eve.id).await.unwrap().unwrap();
    let email = UserUpdate {
        email: Some("eve@new.example".into()),
        ..UserUpdate::default()
    };
    assert!(ids.update_user(&eve.id, &email).await.unwrap());
    let after = ids.user_by_id(&eve.id).await.unwrap().unwrap();
    assert_eq!(after.credential_generation, before.credential_generation);
    assert_eq!(ids.list_refresh_tokens(&eve.id).await.unwrap().len(), 2);
    let password = UserUpdate {
        password_hash: Some("hash-eve-2".into()),
        ..UserUpdate::default()
    };
    assert!(ids.update_user(&eve.id, &password).await.unwrap());
    let after = ids.user_by_id(&eve.id).await.unwrap().unwrap();
    assert_eq!(
        after.credential_generation,
        before.credential_generation + 1
    );
    assert!(ids.list_refresh_tokens(&eve.id).await.unwrap().is_empty());
    assert!(ids.refresh_token("t1").await.unwrap().is_none());
    ids.create_refresh_token(&token).await.unwrap();

    login_throttle(ids).await;

    // Deleting the user removes their keys and tokens.
    assert_eq!(ids.delete_user(&eve.id).await.unwrap(), Ok(true));
    assert!(ids.api_key("k2").await.unwrap().is_none());
    assert!(ids.refresh_token("t1").await.unwrap().is_none());
}

/// Runs the body `name` on a fresh store (`meta` and `ids` are the same backend).
async fn body(name: &str, meta: Arc<dyn MetaStore>, ids: Arc<dyn IdentityStore>) {
    let s = meta.as_ref();
    match name {
        "empty_store_answers" => empty_store_answers(s).await,
        "listings_are_in_byte_order_and_page_by_keyset" => {
            listings_are_in_byte_order_and_page_by_keyset(s).await;
        }
        "uploads_advance_by_compare_and_set" => uploads_advance_by_compare_and_set(s).await,
        "finishing_an_upload_records_and_links_the_blob" => {
            finishing_an_upload_records_and_links_the_blob(s).await;
        }
        "mounts_link_only_what_the_source_holds" => mounts_link_only_what_the_source_holds(s).await,
        "refused_manifest_pushes_write_nothing" => refused_manifest_pushes_write_nothing(s).await,
        "manifests_tags_and_indexes" => manifests_tags_and_indexes(s).await,
        "referenced_content_cannot_be_removed" => referenced_content_cannot_be_removed(s).await,
        "referrers_filter_by_artifact_type" => referrers_filter_by_artifact_type(s).await,
        "concurrent_advances_have_one_winner" => concurrent_advances_have_one_winner(&meta).await,
        "concurrent_pushes_to_one_tag_all_land" => {
            concurrent_pushes_to_one_tag_all_land(&meta).await;
        }
        "concurrent_repository_creation_and_blob_commits" => {
            concurrent_repository_creation_and_blob_commits(&meta).await;
        }
        "stale_uploads_and_their_removal" => stale_uploads_and_their_removal(s).await,
        "leases_have_one_holder" => leases_have_one_holder(&meta).await,
        "the_cluster_id_is_created_once" => the_cluster_id_is_created_once(&meta).await,
        "concurrent_claims_are_exclusive" => queue::concurrent_claims_are_exclusive(meta).await,
        "a_lapsed_claim_comes_back" => queue::a_lapsed_claim_comes_back(meta).await,
        "retries_honour_their_time_and_the_last_failure_buries" => {
            queue::retries_honour_their_time_and_the_last_failure_buries(meta).await;
        }
        "deduplication_never_loses_a_change" => {
            queue::deduplication_never_loses_a_change(meta).await;
        }
        "the_database_clock_and_lease_times" => {
            queue::the_database_clock_and_lease_times(meta).await;
        }
        "every_content_write_records_its_changes" => {
            queue::every_content_write_records_its_changes(meta).await;
        }
        "finishing_decides_reuse_in_its_transaction" => {
            queue::finishing_decides_reuse_in_its_transaction(meta).await;
        }
        "ending_uploads_and_repositories_leaves_nothing_behind" => {
            queue::ending_uploads_and_repositories_leaves_nothing_behind(meta).await;
        }
        "every_identity_write_records_its_changes" => {
            queue::every_identity_write_records_its_changes(meta, ids).await;
        }
        "users_share_one_namespace_and_list_in_byte_order" => {
            users_share_one_namespace_and_list_in_byte_order(ids.as_ref()).await;
        }
        "orgs_teams_and_memberships" => orgs_teams_and_memberships(ids.as_ref()).await,
        "repository_access_facts_and_grants" => {
            repository_access_facts_and_grants(s, ids.as_ref()).await;
        }
        "api_keys_refresh_tokens_and_login_failures" => {
            api_keys_refresh_tokens_and_login_failures(ids.as_ref()).await;
        }
        "login_throttle" => login_throttle(ids.as_ref()).await,
        other => panic!("no conformance body {other}"),
    }
}

/// One test per body and backend, so one failure never hides the others.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::SqliteStore::open(&dir.path().join("meta.db"))
                        .await
                        .unwrap();
                    super::body(stringify!($name), super::Arc::new(store.clone()), super::Arc::new(store))
                        .await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, db) = super::postgres_store().await;
                    super::body(stringify!($name), super::Arc::new(store.clone()), super::Arc::new(store.clone()))
                        .await;
                    drop(store);
                    db.drop_now().await.unwrap();
                }
            )*
        }
    };
}

/// Login throttle counters: hard limits refuse without counting, the soft counter only counts,
/// a success is forgiven, windows expire, concurrent attempts never pass a limit together, and
/// expired counters are pruned in bounded batches.
async fn login_throttle(ids: &dyn IdentityStore) {
    use super::identity::{LoginAdmission, LoginLimit};
    let window = 60_000;
    let pair = LoginLimit {
        key: "p:eve:1.2.3.4",
        max: 3,
    };
    let addr = LoginLimit {
        key: "a:1.2.3.4",
        max: 4,
    };
    assert_eq!(ids.login_failures(pair.key, window).await.unwrap(), 0);
    for n in 0..3 {
        assert_eq!(
            ids.begin_login_attempt(&[addr, pair], "u:eve", window)
                .await
                .unwrap(),
            LoginAdmission::Admitted { soft_failures: n }
        );
    }
    assert_eq!(ids.login_failures(pair.key, window).await.unwrap(), 3);
    assert_eq!(ids.login_failures(addr.key, window).await.unwrap(), 3);
    assert_eq!(ids.login_failures("u:eve", window).await.unwrap(), 3);
    // The pair is full: refused, and nothing is counted, not even on the address.
    let refused = ids
        .begin_login_attempt(&[addr, pair], "u:eve", window)
        .await
        .unwrap();
    let LoginAdmission::Refused { until_ms } = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    let now = super::now_millis();
    assert!(
        until_ms > now && until_ms <= now + window,
        "{until_ms} vs {now}"
    );
    assert_eq!(ids.login_failures(addr.key, window).await.unwrap(), 3);
    assert_eq!(ids.login_failures("u:eve", window).await.unwrap(), 3);
    // Another user from the address fills the address counter; then everyone there is refused.
    let other = LoginLimit {
        key: "p:bob:1.2.3.4",
        max: 3,
    };
    assert!(matches!(
        ids.begin_login_attempt(&[addr, other], "u:bob", window)
            .await
            .unwrap(),
        LoginAdmission::Admitted { soft_failures: 0 }
    ));
    assert!(matches!(
        ids.begin_login_attempt(&[addr, other], "u:bob", window)
            .await
            .unwrap(),
        LoginAdmission::Refused { .. }
    ));
    assert_eq!(ids.login_failures(other.key, window).await.unwrap(), 1);
    // A success clears its pair and gives back the one failure it counted elsewhere.
    ids.forgive_login_attempt(other.key, &[addr.key, "u:bob"])
        .await
        .unwrap();
    assert_eq!(ids.login_failures(other.key, window).await.unwrap(), 0);
    assert_eq!(ids.login_failures(addr.key, window).await.unwrap(), 3);
    assert_eq!(ids.login_failures("u:bob", window).await.unwrap(), 0);
    ids.forgive_login_attempt(other.key, &["u:bob", "u:nobody"])
        .await
        .unwrap();
    assert_eq!(ids.login_failures("u:bob", window).await.unwrap(), 0);
    // An expired window counts nothing and starts again.
    assert_eq!(ids.login_failures(pair.key, 0).await.unwrap(), 0);
    assert!(matches!(
        ids.begin_login_attempt(&[pair], "u:eve", 0).await.unwrap(),
        LoginAdmission::Admitted { soft_failures: 0 }
    ));

    // Racers meet on one counter: exactly `max` of them are admitted.
    let racer = LoginLimit {
        key: "p:race:5.6.7.8",
        max: 5,
    };
    let limits = [
        LoginLimit {
            key: "a:5.6.7.8",
            max: 100,
        },
        racer,
    ];
    let results = futures::future::join_all(
        (0..24).map(|_| ids.begin_login_attempt(&limits, "u:race", window)),
    )
    .await;
    let admitted = results
        .iter()
        .filter(|r| matches!(r, Ok(LoginAdmission::Admitted { .. })))
        .count();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(admitted, 5, "{results:?}");
    assert_eq!(ids.login_failures("a:5.6.7.8", window).await.unwrap(), 5);

    // Pruning takes only ended windows, at most `limit` at a time.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(ids.prune_login_failures(window, 100).await.unwrap(), 0);
    let live = ids.login_failures(racer.key, window).await.unwrap();
    assert_eq!(live, 5);
    // Every counter left so far: p:eve, a:1.2.3.4, u:eve, u:bob (kept at zero), p:race,
    // a:5.6.7.8, u:race (p:bob went with the success).
    assert_eq!(ids.prune_login_failures(1, 3).await.unwrap(), 3);
    assert_eq!(ids.prune_login_failures(1, 100).await.unwrap(), 4);
    assert_eq!(ids.prune_login_failures(1, 100).await.unwrap(), 0);
    assert_eq!(ids.login_failures(racer.key, window).await.unwrap(), 0);
}

conformance!(
    empty_store_answers,
    listings_are_in_byte_order_and_page_by_keyset,
    uploads_advance_by_compare_and_set,
    finishing_an_upload_records_and_links_the_blob,
    mounts_link_only_what_the_source_holds,
    refused_manifest_pushes_write_nothing,
    manifests_tags_and_indexes,
    referenced_content_cannot_be_removed,
    referrers_filter_by_artifact_type,
    concurrent_advances_have_one_winner,
    concurrent_pushes_to_one_tag_all_land,
    concurrent_repository_creation_and_blob_commits,
    stale_uploads_and_their_removal,
    leases_have_one_holder,
    the_cluster_id_is_created_once,
    concurrent_claims_are_exclusive,
    a_lapsed_claim_comes_back,
    retries_honour_their_time_and_the_last_failure_buries,
    deduplication_never_loses_a_change,
    the_database_clock_and_lease_times,
    every_content_write_records_its_changes,
    finishing_decides_reuse_in_its_transaction,
    ending_uploads_and_repositories_leaves_nothing_behind,
    every_identity_write_records_its_changes,
    users_share_one_namespace_and_list_in_byte_order,
    orgs_teams_and_memberships,
    repository_access_facts_and_grants,
    api_keys_refresh_tokens_and_login_failures,
    login_throttle,
);
