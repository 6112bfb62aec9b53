//! Conformance bodies of the work queue, the change records and the data-safety rules of
//! finishing, cancelling and deleting (shared by both backends like the rest of the suite).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{digest, manifest, part, push_blob, repo, tag};
use crate::meta::changes::{Change, DISCARD_TOPIC, Discard};
use crate::meta::{BlobCommit, MetaStore, NewBlob, NewWork, PutManifest, now_millis};

/// A fixed time base, far from the wall clock, so nothing depends on when the test runs.
const T0: i64 = 1_000_000_000_000;

fn work(topic: &str, key: &str, payload: &str) -> NewWork {
    NewWork {
        topic: topic.into(),
        key: key.into(),
        payload: payload.into(),
        delay_ms: 0,
    }
}

/// Sixteen claimers drain 120 items at once; every item goes to exactly one of them.
pub(crate) async fn concurrent_claims_are_exclusive(store: Arc<dyn MetaStore>) {
    let items: Vec<NewWork> = (0..120)
        .map(|i| work("t-claims", &format!("k{i:03}"), "{}"))
        .collect();
    store.enqueue_work(items, T0).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(super::RACERS));
    let mut tasks = Vec::new();
    for i in 0..super::RACERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let holder = format!("claimer-{i}");
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_work("t-claims", &holder, T0, 60_000, 5)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|w| w.key));
            }
        }));
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for key in t.await.unwrap() {
            *seen.entry(key).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 120, "every item was claimed");
    assert!(
        seen.values().all(|n| *n == 1),
        "no item was claimed twice while its claim lasted: {seen:?}"
    );
}

/// A claim is a lease: it lapses, another claimer takes the item, and the first claimer's late
/// completion does not remove it.
pub(crate) async fn a_lapsed_claim_comes_back(store: Arc<dyn MetaStore>) {
    let s = store.as_ref();
    s.enqueue_work(vec![work("t-lapse", "a", "{\"n\":1}")], T0)
        .await
        .unwrap();
    let first = s.claim_work("t-lapse", "dead", T0, 1000, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempts, 1);
    assert!(
        s.claim_work("t-lapse", "other", T0 + 999, 1000, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed until the lease ends"
    );
    let again = s
        .claim_work("t-lapse", "other", T0 + 1000, 1000, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the lapsed claim came back");
    assert_eq!(again[0].attempts, 2);
    assert!(
        !s.complete_work(&first[0], "dead").await.unwrap(),
        "the dead claimer's completion removes nothing"
    );
    assert!(s.complete_work(&again[0], "other").await.unwrap());
    assert!(
        s.claim_work("t-lapse", "x", T0 + 10_000, 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A failed item is due again exactly at its retry time, with its error recorded; after the
/// last attempt it is buried, listed, counted and requeueable.
pub(crate) async fn retries_honour_their_time_and_the_last_failure_buries(
    store: Arc<dyn MetaStore>,
) {
    let s = store.as_ref();
    s.enqueue_work(vec![work("t-retry", "r", "{}")], T0)
        .await
        .unwrap();
    let item = s.claim_work("t-retry", "n1", T0, 60_000, 1).await.unwrap();
    s.fail_work(&item[0], "n1", T0, "boom", Some(T0 + 5000))
        .await
        .unwrap();
    assert!(
        s.claim_work("t-retry", "n1", T0 + 4999, 60_000, 1)
            .await
            .unwrap()
            .is_empty(),
        "not before its retry time"
    );
    let retry = s
        .claim_work("t-retry", "n1", T0 + 5000, 60_000, 1)
        .await
        .unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempts, 2);
    s.fail_work(&retry[0], "n1", T0 + 5000, "boom again", None)
        .await
        .unwrap();
    assert!(
        s.claim_work("t-retry", "n1", T0 + 999_999, 60_000, 1)
            .await
            .unwrap()
            .is_empty(),
        "a buried item is never claimed"
    );
    let stats = s.queue_stats(T0 + 6000).await.unwrap();
    let st = stats.iter().find(|t| t.topic == "t-retry").unwrap();
    assert_eq!((st.depth, st.buried), (0, 1));
    let buried = s.buried_work(Some("t-retry"), None, 10).await.unwrap();
    assert_eq!(buried.len(), 1);
    assert_eq!(buried[0].last_error.as_deref(), Some("boom again"));
    assert_eq!(buried[0].attempts, 2);
    assert!(s.requeue_work("t-retry", "r", T0 + 7000).await.unwrap());
    assert!(!s.requeue_work("t-retry", "missing", T0).await.unwrap());
    let back = s
        .claim_work("t-retry", "n2", T0 + 7000, 60_000, 1)
        .await
        .unwrap();
    assert_eq!(back.len(), 1, "requeued");
    assert_eq!(back[0].attempts, 1, "with its attempts reset");
}

/// One item per (topic, key): enqueues merge; one that meets a claimed item re-arms it, so the
/// claimer's completion leaves the newer work to run.
pub(crate) async fn deduplication_never_loses_a_change(store: Arc<dyn MetaStore>) {
    let s = store.as_ref();
    s.enqueue_work(vec![work("t-dedup", "k", "{\"v\":1}")], T0)
        .await
        .unwrap();
    s.enqueue_work(vec![work("t-dedup", "k", "{\"v\":2}")], T0 + 1)
        .await
        .unwrap();
    let stats = s.queue_stats(T0 + 2).await.unwrap();
    assert_eq!(
        stats.iter().find(|t| t.topic == "t-dedup").unwrap().depth,
        1,
        "merged"
    );
    let claimed = s
        .claim_work("t-dedup", "n1", T0 + 2, 60_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].payload, "{\"v\":2}", "the newest payload");
    // A change arrives while the item is being worked on.
    s.enqueue_work(vec![work("t-dedup", "k", "{\"v\":3}")], T0 + 3)
        .await
        .unwrap();
    assert!(
        !s.complete_work(&claimed[0], "n1").await.unwrap(),
        "the re-armed item is not removed"
    );
    let rerun = s
        .claim_work("t-dedup", "n2", T0 + 4, 60_000, 10)
        .await
        .unwrap();
    assert_eq!(rerun.len(), 1, "the newer change runs");
    assert_eq!(rerun[0].payload, "{\"v\":3}");
    assert!(s.complete_work(&rerun[0], "n2").await.unwrap());
    assert!(
        s.claim_work("t-dedup", "n2", T0 + 5, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The database clock is the wall clock, give or take; leases use the time they are given.
pub(crate) async fn the_database_clock_and_lease_times(store: Arc<dyn MetaStore>) {
    let s = store.as_ref();
    let db_now = s.database_now().await.unwrap();
    assert!(
        (db_now - now_millis()).abs() < 60_000,
        "database time {db_now} is near the wall clock"
    );
    assert!(s.try_acquire_lease("l", "a", T0, 1000).await.unwrap());
    assert!(!s.try_acquire_lease("l", "b", T0 + 999, 1000).await.unwrap());
    assert!(
        s.try_acquire_lease("l", "b", T0 + 1000, 1000)
            .await
            .unwrap()
    );
    s.release_lease("l", "a").await.unwrap();
    assert!(
        !s.try_acquire_lease("l", "a", T0 + 1001, 1000)
            .await
            .unwrap(),
        "only the holder releases"
    );
    s.release_lease("l", "b").await.unwrap();
    assert!(
        s.try_acquire_lease("l", "a", T0 + 1001, 1000)
            .await
            .unwrap()
    );
}

/// Claims every discard item due now and returns their payloads.
async fn take_discards(s: &dyn MetaStore) -> Vec<Discard> {
    let items = s
        .claim_work(DISCARD_TOPIC, "test", now_millis() + 1, 60_000, 100)
        .await
        .unwrap();
    let mut out = Vec::new();
    for item in items {
        out.push(serde_json::from_str(&item.payload).unwrap());
        assert!(s.complete_work(&item, "test").await.unwrap());
    }
    out
}

/// Every content write records what it changed, with the tag's previous target on a retag.
pub(crate) async fn every_content_write_records_its_changes(store: Arc<dyn MetaStore>) {
    let s = store.as_ref();
    let r = repo("changes/app");
    let d1 = push_blob(s, &r, "c-layer", 3).await;
    let m1 = manifest("m1", &[&d1], &[], Some("v1"));
    let m2 = manifest("m2", &[&d1], &[], Some("v1"));
    assert_eq!(s.put_manifest(&r, &m1).await.unwrap(), PutManifest::Stored);
    assert_eq!(s.put_manifest(&r, &m2).await.unwrap(), PutManifest::Stored);
    let latest = s.recent_changes(1).await.unwrap();
    assert_eq!(
        latest[0],
        Change::ManifestPut {
            repo: r.to_string(),
            digest: m2.digest.to_string(),
            tag: Some("v1".into()),
            previous: Some(m1.digest.to_string()),
        },
        "a retag names the digest the tag pointed at before"
    );
    assert!(s.delete_tag(&r, &tag("v1")).await.unwrap());
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::TagDeleted {
            repo: r.to_string(),
            tag: "v1".into(),
            digest: m2.digest.to_string(),
        }
    );
    let m3 = manifest("m3", &[&d1], &[], Some("a"));
    s.put_manifest(&r, &m3).await.unwrap();
    let m3_b = crate::meta::NewManifest {
        tag: Some(tag("b")),
        ..m3.clone()
    };
    s.put_manifest(&r, &m3_b).await.unwrap();
    s.delete_manifest(&r, &m3.digest).await.unwrap();
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::ManifestDeleted {
            repo: r.to_string(),
            digest: m3.digest.to_string(),
            tags: vec!["a".into(), "b".into()],
        }
    );
    let other = repo("changes/other");
    s.mount_blob(&r, &other, &d1).await.unwrap().unwrap();
    let mounted = s.recent_changes(2).await.unwrap();
    assert!(mounted.contains(&Change::BlobLinked {
        repo: other.to_string(),
        digest: d1.to_string(),
        via: "mount".into(),
    }));
    assert!(mounted.contains(&Change::RepositoryCreated {
        repo: other.to_string()
    }));
    s.unlink_blob(&other, &d1).await.unwrap();
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::BlobUnlinked {
            repo: other.to_string(),
            digest: d1.to_string(),
        }
    );
    // A refused write records nothing.
    let before = s.recent_changes(1).await.unwrap();
    let missing = manifest("m4", &[&digest("absent")], &[], Some("x"));
    assert!(matches!(
        s.put_manifest(&r, &missing).await.unwrap(),
        PutManifest::MissingReferences(_)
    ));
    assert_eq!(s.recent_changes(1).await.unwrap(), before);
}

/// A finish that could reuse a blob decides inside its transaction: without a storage key it
/// changes nothing unless the blob exists; a one-part finish queues no cleanup, a multi-part one
/// queues its parts (keeping the joined object), a reused blob queues the whole session.
pub(crate) async fn finishing_decides_reuse_in_its_transaction(store: Arc<dyn MetaStore>) {
    let s = store.as_ref();
    let r = repo("safety/finish");
    let d = digest("safety-blob");
    s.create_upload(&r, "sf1", b"s").await.unwrap();
    s.advance_upload("sf1", 0, &part(0, 2, "objects/sf1/a"), b"s2")
        .await
        .unwrap();
    s.advance_upload("sf1", 2, &part(2, 2, "objects/sf1/b"), b"s4")
        .await
        .unwrap();
    let probe = NewBlob {
        digest: d.clone(),
        size: 4,
        storage_key: None,
    };
    assert_eq!(
        s.finish_upload(&r, "sf1", 4, &probe).await.unwrap(),
        Some(BlobCommit::NeedsBytes)
    );
    assert!(
        s.upload(&r, "sf1").await.unwrap().is_some(),
        "asking changed nothing"
    );
    let take = take_discards(s).await;
    let with_key = NewBlob {
        storage_key: Some("objects/sf1/joined-1".into()),
        ..probe.clone()
    };
    assert_eq!(
        s.finish_upload(&r, "sf1", 4, &with_key).await.unwrap(),
        Some(BlobCommit::Inserted)
    );
    let mut queued = take_discards(s).await;
    queued.extend(take);
    assert_eq!(
        queued,
        vec![Discard {
            uploads: vec!["sf1".into()],
            keep: Some("objects/sf1/joined-1".into()),
        }]
    );
    // The same content again: reused inside the transaction, the whole session discarded.
    s.create_upload(&r, "sf2", b"s").await.unwrap();
    s.advance_upload("sf2", 0, &part(0, 4, "objects/sf2/a"), b"s4")
        .await
        .unwrap();
    assert!(matches!(
        s.finish_upload(&r, "sf2", 4, &probe).await.unwrap(),
        Some(BlobCommit::AlreadyPresent(_))
    ));
    assert_eq!(
        take_discards(s).await,
        vec![Discard {
            uploads: vec!["sf2".into()],
            keep: None,
        }]
    );
    // One part that becomes the blob: nothing to clean up.
    push_blob(s, &r, "safety-single", 5).await;
    assert!(take_discards(s).await.is_empty());
}

/// Cancelling the only upload of a repository it created leaves no repository; deleting a
/// repository queues its open uploads' objects.
pub(crate) async fn ending_uploads_and_repositories_leaves_nothing_behind(
    store: Arc<dyn MetaStore>,
) {
    let s = store.as_ref();
    let r = repo("safety/cancel");
    s.create_upload(&r, "c1", b"s").await.unwrap();
    assert!(s.repository_exists(&r).await.unwrap());
    s.delete_upload(&r, "c1").await.unwrap().unwrap();
    assert!(
        !s.repository_exists(&r).await.unwrap(),
        "start then cancel leaves no repository"
    );
    assert_eq!(
        take_discards(s).await,
        vec![Discard {
            uploads: vec!["c1".into()],
            keep: None,
        }]
    );
    // A repository with content stays when an upload in it is cancelled.
    let kept = repo("safety/kept");
    push_blob(s, &kept, "kept-blob", 1).await;
    s.create_upload(&kept, "c2", b"s").await.unwrap();
    s.delete_upload(&kept, "c2").await.unwrap().unwrap();
    assert!(s.repository_exists(&kept).await.unwrap());
    take_discards(s).await;
    // Deleting a repository takes its open sessions and queues their objects.
    s.create_upload(&kept, "c3", b"s").await.unwrap();
    s.advance_upload("c3", 0, &part(0, 1, "objects/c3/a"), b"s1")
        .await
        .unwrap();
    assert!(s.delete_repository(&kept).await.unwrap());
    assert!(s.upload(&kept, "c3").await.unwrap().is_none());
    assert_eq!(
        take_discards(s).await,
        vec![Discard {
            uploads: vec!["c3".into()],
            keep: None,
        }]
    );
    assert!(matches!(
        s.recent_changes(1).await.unwrap()[0],
        Change::RepositoryDeleted { .. }
    ));
    assert!(s.buried_work(None, None, 10).await.unwrap().is_empty());
    // The purge's deletions queue the same way.
    let p = repo("safety/purge");
    s.create_upload(&p, "p1", b"s").await.unwrap();
    assert!(
        s.delete_stale_upload("p1", now_millis() + 60_000)
            .await
            .unwrap()
    );
    assert!(!s.repository_exists(&p).await.unwrap());
    assert_eq!(take_discards(s).await.len(), 1);
}

/// The kind of the newest change record.
async fn latest_kind(s: &dyn MetaStore) -> &'static str {
    s.recent_changes(1)
        .await
        .unwrap()
        .first()
        .map_or("none", Change::kind)
}

/// Every identity write records what it changed; writes that change nothing record nothing.
pub(crate) async fn every_identity_write_records_its_changes(
    meta: Arc<dyn MetaStore>,
    ids: Arc<dyn crate::meta::identity::IdentityStore>,
) {
    use crate::meta::identity::{ApiKeyRow, GrantSubject, RefreshTokenRow, UserUpdate, Visibility};
    let (s, ids) = (meta.as_ref(), ids.as_ref());
    let ada = super::user(ids, "ada").await;
    assert_eq!(latest_kind(s).await, "user_changed");
    let org = ids
        .create_org("lab", &ada.id, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest_kind(s).await, "org_changed");
    let bob = super::user(ids, "bob").await;
    ids.set_org_member(&org.id, &bob.id, "member")
        .await
        .unwrap();
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::MembershipChanged {
            group: org.id.clone()
        }
    );
    let team = ids.create_team(&org.id, "core").await.unwrap().unwrap();
    ids.add_team_member(&team.id, &bob.id).await.unwrap();
    assert_eq!(latest_kind(s).await, "membership_changed");
    let r = repo("lab/app");
    push_blob(s, &r, "identity-blob", 1).await;
    ids.set_visibility("lab/app", Visibility::Public)
        .await
        .unwrap();
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::VisibilityChanged {
            repo: "lab/app".into(),
            visibility: "public".into(),
        }
    );
    let to_bob = GrantSubject::User(bob.id.clone());
    assert!(ids.grant("lab/app", &to_bob, "write").await.unwrap());
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::GrantChanged {
            repo: "lab/app".into(),
            subject_kind: "user".into(),
            subject: bob.id.clone(),
        }
    );
    // Nothing changed, nothing recorded.
    let before = s.recent_changes(1).await.unwrap();
    assert!(
        !ids.revoke("lab/app", &GrantSubject::User("nobody".into()))
            .await
            .unwrap()
    );
    assert!(!ids.remove_team_member(&team.id, "nobody").await.unwrap());
    assert_eq!(s.recent_changes(1).await.unwrap(), before);
    assert!(ids.revoke("lab/app", &to_bob).await.unwrap());
    assert_eq!(latest_kind(s).await, "grant_changed");
    let key = ApiKeyRow {
        id: "k1".into(),
        user_id: bob.id.clone(),
        name: "ci".into(),
        secret_hash: vec![1; 32],
        scope_kind: "all".into(),
        scope_name: String::new(),
        permission: "read".into(),
        expires_at: None,
        revoked_at: None,
        created_at: now_millis(),
    };
    assert!(ids.create_api_key(&key).await.unwrap());
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::CredentialChanged {
            user: bob.id.clone(),
            credential: "api_key".into(),
        }
    );
    assert!(ids.revoke_api_key(&bob.id, "k1").await.unwrap());
    assert_eq!(latest_kind(s).await, "credential_changed");
    let token = RefreshTokenRow {
        id: "rt1".into(),
        user_id: bob.id.clone(),
        service: "aerugo".into(),
        secret_hash: vec![2; 32],
        expires_at: now_millis() + 60_000,
        client_id: "docker".into(),
        created_at: now_millis(),
        last_used_at: None,
    };
    ids.create_refresh_token(&token).await.unwrap();
    assert!(ids.delete_refresh_token(&bob.id, "rt1").await.unwrap());
    assert_eq!(latest_kind(s).await, "credential_changed");
    let update = UserUpdate {
        password_hash: Some("new-hash".into()),
        ..UserUpdate::default()
    };
    assert!(ids.update_user(&bob.id, &update).await.unwrap());
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::UserChanged {
            user: bob.id.clone(),
            what: "updated".into(),
        }
    );
    assert!(ids.remove_org_member(&org.id, &bob.id).await.unwrap());
    assert!(ids.delete_team(&team.id).await.unwrap());
    assert_eq!(latest_kind(s).await, "membership_changed");
    assert_eq!(ids.delete_user(&bob.id).await.unwrap(), Ok(true));
    assert_eq!(
        s.recent_changes(1).await.unwrap()[0],
        Change::UserChanged {
            user: bob.id.clone(),
            what: "deleted".into(),
        }
    );
}
