//! The conformance suite every [`BlobStore`](crate::BlobStore) must pass.
//!
//! Each backend's tests call [`run`] on a fresh, empty store (or a fresh prefix of a shared one).
//! The suite panics on the first violation, with a message naming the broken rule.

#![expect(
    clippy::unwrap_used,
    reason = "a test suite: a failed step is a failed test"
)]

use bytes::Bytes;
use futures::TryStreamExt;

use crate::{BlobStore, Error};

async fn read_all(
    store: &dyn BlobStore,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .read(key, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

/// Runs every rule of the contract against `store`.
pub async fn run(store: &dyn BlobStore) {
    store.check().await.unwrap();

    // Missing objects.
    assert_eq!(
        store.size("conf/missing").await.unwrap(),
        None,
        "size of a missing key is None"
    );
    assert!(
        matches!(
            store.read("conf/missing", None).await,
            Err(Error::NotFound(_))
        ),
        "reading a missing key is NotFound"
    );
    store.delete("conf/missing").await.unwrap();

    // Write in several pieces, read whole and in ranges.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = store.writer("conf/a/object").await.unwrap();
    for piece in data.chunks(70_000) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(
        w.finish().await.unwrap(),
        data.len() as u64,
        "finish reports the size"
    );
    assert_eq!(
        store.size("conf/a/object").await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(
        read_all(store, "conf/a/object", None).await,
        data,
        "whole read round-trips"
    );
    assert_eq!(
        read_all(store, "conf/a/object", Some(10..20)).await,
        data[10..20].to_vec()
    );
    assert_eq!(
        read_all(store, "conf/a/object", Some(299_990..300_000)).await,
        data[299_990..].to_vec(),
        "a range that ends at the object's end"
    );
    assert!(
        read_all(store, "conf/a/object", Some(5..5))
            .await
            .is_empty()
    );
    assert!(
        matches!(
            store.read("conf/a/object", Some(10..300_001)).await,
            Err(Error::InvalidRange { .. })
        ),
        "a range past the end is refused"
    );

    // An empty object.
    let w = store.writer("conf/a/empty").await.unwrap();
    assert_eq!(w.finish().await.unwrap(), 0);
    assert_eq!(store.size("conf/a/empty").await.unwrap(), Some(0));
    assert!(read_all(store, "conf/a/empty", None).await.is_empty());

    // Overwrite replaces.
    let mut w = store.writer("conf/a/empty").await.unwrap();
    w.write(Bytes::from_static(b"now full")).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(read_all(store, "conf/a/empty", None).await, b"now full");

    // An aborted write leaves nothing under the key.
    let mut w = store.writer("conf/b/aborted").await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(
        store.size("conf/b/aborted").await.unwrap(),
        None,
        "aborted writes are invisible"
    );

    // Listing is recursive and only lists objects under the prefix.
    let mut keys = store.list("conf/a/").await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec!["conf/a/empty".to_owned(), "conf/a/object".to_owned()]
    );
    assert!(store.list("conf/nothing/").await.unwrap().is_empty());

    // An object larger than one write chunk (a multipart upload on S3), written in pieces.
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut w = store.writer("conf/c/big").await.unwrap();
    for piece in big.chunks(1024 * 1024 + 7) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), big.len() as u64);
    assert_eq!(
        store.size("conf/c/big").await.unwrap(),
        Some(big.len() as u64)
    );
    assert!(
        read_all(store, "conf/c/big", None).await == big,
        "a multi-chunk object round-trips"
    );
    let tail = 9 * 1024 * 1024..(big.len() as u64);
    assert!(
        read_all(store, "conf/c/big", Some(tail.clone())).await
            == big[tail.start as usize..].to_vec(),
        "a range across part boundaries"
    );
    store.delete("conf/c/big").await.unwrap();

    // Concatenation: parts in order (an empty one included) into a new object; the parts stay.
    let pieces: [Vec<u8>; 3] = [
        (0..100_000u32).map(|i| (i % 241) as u8).collect(),
        Vec::new(),
        (0..300_001u32).map(|i| (i % 239) as u8).collect(),
    ];
    let mut keys = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let key = format!("conf/d/part-{i}");
        let mut w = store.writer(&key).await.unwrap();
        if !piece.is_empty() {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        w.finish().await.unwrap();
        keys.push(key);
    }
    let joined = pieces.concat();
    assert_eq!(
        store.concat(&keys, "conf/e/joined").await.unwrap(),
        joined.len() as u64,
        "concat reports the size"
    );
    assert!(
        read_all(store, "conf/e/joined", None).await == joined,
        "concat joins the parts in order"
    );
    assert_eq!(store.size(&keys[2]).await.unwrap(), Some(300_001));
    // A missing part fails the whole concatenation and leaves nothing under the key.
    let with_missing = [keys[0].clone(), "conf/d/missing".to_owned()];
    assert!(
        matches!(
            store.concat(&with_missing, "conf/e/broken").await,
            Err(Error::NotFound(_))
        ),
        "concat of a missing part is NotFound"
    );
    assert_eq!(store.size("conf/e/broken").await.unwrap(), None);
    for key in keys.iter().chain([&"conf/e/joined".to_owned()]) {
        store.delete(key).await.unwrap();
    }

    // Deletes.
    store.delete("conf/a/object").await.unwrap();
    store.delete("conf/a/object").await.unwrap();
    assert_eq!(store.size("conf/a/object").await.unwrap(), None);
    store.delete("conf/a/empty").await.unwrap();
}
