//! `aerugo-storage`: the byte/key contract that every blob backend fulfils, implemented over OpenDAL.
//!
//! This crate knows keys and bytes only: nothing about digests, repositories, tenants or manifests.
//! The registry's key layout lives in the `aerugo` crate (`storage` module) on top of [`BlobStore`].
//!
//! Invariants every backend upholds (checked by the conformance suite in `conformance`):
//! - an object written through an [`ObjectWriter`] becomes readable only after [`ObjectWriter::finish`];
//! - reads stream; no backend call holds a whole object in memory;
//! - deletes are idempotent: deleting a missing key succeeds.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, Operator, services};

pub mod conformance;

/// A stream of object bytes, as read from a backend.
pub type ByteStream = BoxStream<'static, std::result::Result<Bytes, Error>>;

/// Errors of a blob backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// The requested range lies outside the object.
    #[error("range {start}..{end} is outside object {key}")]
    InvalidRange {
        /// The object key.
        key: String,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
    },
    /// The backend failed (I/O, network, credentials, ...).
    #[error("storage backend error: {0}")]
    Backend(#[source] opendal::Error),
}

impl From<opendal::Error> for Error {
    fn from(err: opendal::Error) -> Self {
        Error::Backend(err)
    }
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An object being written. Dropping it without [`ObjectWriter::finish`] leaves no readable object
/// on backends that support atomic writes, and at worst an object under the same key that the caller
/// never recorded anywhere.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes to the object.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Completes the object and returns its size in bytes.
    async fn finish(self: Box<Self>) -> Result<u64>;
    /// Abandons the object.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The contract of a blob backend: keyed objects, written once, read in ranges, deleted.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug + 'static {
    /// Starts writing the object `key`, replacing any object under that key once finished.
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Streams the object `key`, or the byte range `range` of it.
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream>;
    /// Returns the size of object `key`, or `None` when it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Deletes the object `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Lists the keys under `prefix` (which should end with `/`), recursively.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Checks that the backend is reachable.
    async fn check(&self) -> Result<()>;
    /// A URL that lets whoever holds it `GET` the object `key` (with or without a `Range` header)
    /// for `expiry`, without any other credentials; `None` when the backend cannot presign
    /// (fs, memory). The URL's signature covers the method, host, key and expiry only, so a client
    /// may add its own unsigned `Range` header.
    async fn presign_read(&self, key: &str, expiry: Duration) -> Result<Option<String>> {
        let _ = (key, expiry);
        Ok(None)
    }
    /// Writes the objects `parts`, in order, into one new object `dest` and returns its size;
    /// the parts stay. Like any write, `dest` becomes readable only once complete. By default the
    /// bytes stream through this process; backends with a cheaper way override it.
    async fn concat(&self, parts: &[String], dest: &str) -> Result<u64> {
        concat_streamed(self, parts, dest).await
    }
}

/// [`BlobStore::concat`] by streaming every part through this process into a new writer.
pub async fn concat_streamed<S: BlobStore + ?Sized>(
    store: &S,
    parts: &[String],
    dest: &str,
) -> Result<u64> {
    let mut writer = store.writer(dest).await?;
    for part in parts {
        let mut stream = match store.read(part, None).await {
            Ok(stream) => stream,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(chunk) => writer.write(chunk).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
    }
    writer.finish().await
}

/// How to reach an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...).
#[derive(Clone, Default)]
pub struct S3Options {
    /// The bucket's name.
    pub bucket: String,
    /// The region requests are signed for (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// The endpoint URL the nodes use; `None` for AWS S3's regional endpoint.
    pub endpoint: Option<String>,
    /// Address buckets as `<endpoint>/<bucket>` (MinIO, Ceph RGW) instead of `<bucket>.<endpoint>`.
    pub path_style: bool,
    /// A key prefix inside the bucket, so several registries can share one bucket.
    pub prefix: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key; never printed by `Debug`.
    pub secret_access_key: String,
    /// An endpoint URL used only for presigned URLs, when clients reach S3 at another address than
    /// the nodes do (a SigV4 signature binds the host).
    pub public_endpoint: Option<String>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("public_endpoint", &self.public_endpoint)
            .finish()
    }
}

impl S3Options {
    /// An OpenDAL operator for these options, talking to `endpoint`. Only what is given here is
    /// used: OpenDAL's own loading of `~/.aws/config`, `AWS_*` variables and the EC2 metadata
    /// service is off, so a node never signs with credentials its operator did not configure.
    fn operator(&self, endpoint: Option<&str>) -> Result<Operator> {
        let mut builder = services::S3::default()
            .bucket(&self.bucket)
            .region(&self.region)
            .root(&format!("/{}", self.prefix.trim_matches('/')))
            .access_key_id(&self.access_key_id)
            .secret_access_key(&self.secret_access_key)
            .disable_config_load()
            .disable_ec2_metadata();
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint(endpoint);
        }
        if !self.path_style {
            builder = builder.enable_virtual_host_style();
        }
        Ok(Operator::new(builder)?.finish())
    }
}

/// A [`BlobStore`] backed by an OpenDAL operator.
#[derive(Clone)]
pub struct OpendalStore {
    op: Operator,
    /// The root directory of an `fs` store, for operations OpenDAL has no call for.
    fs_root: Option<std::path::PathBuf>,
    /// Bytes a writer gathers before handing them to the backend.
    write_chunk: usize,
    /// The operator that signs presigned URLs (S3 only); it may name another endpoint than `op`.
    presigner: Option<Operator>,
    kind: &'static str,
}

impl fmt::Debug for OpendalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpendalStore")
            .field("kind", &self.kind)
            .finish()
    }
}

/// Write buffer of S3 stores: one multipart part (S3 wants at least 5 MiB per part but the last).
const S3_WRITE_CHUNK: usize = 8 * 1024 * 1024;
/// Write buffer of the other stores: large enough for few system calls, small enough that many
/// concurrent uploads stay cheap.
const LOCAL_WRITE_CHUNK: usize = 1024 * 1024;

impl OpendalStore {
    /// A store in a local directory. Writes go to a temporary file first and are renamed into place,
    /// so a crash never leaves a half-written object under its final key.
    pub fn fs(root: &Path) -> Result<Self> {
        let root_str = root.to_string_lossy();
        let tmp = root.join(".tmp");
        let builder = services::Fs::default()
            .root(&root_str)
            .atomic_write_dir(&tmp.to_string_lossy());
        Ok(Self {
            op: Operator::new(builder)?.finish(),
            fs_root: Some(root.to_path_buf()),
            write_chunk: LOCAL_WRITE_CHUNK,
            presigner: None,
            kind: "fs",
        })
    }

    /// A store in process memory, for tests and throwaway registries.
    pub fn memory() -> Result<Self> {
        Ok(Self {
            op: Operator::new(services::Memory::default())?.finish(),
            fs_root: None,
            write_chunk: LOCAL_WRITE_CHUNK,
            presigner: None,
            kind: "memory",
        })
    }

    /// A store in an S3-compatible bucket. Writes are streamed: objects larger than one write chunk
    /// (8 MiB) go up as multipart uploads, one part in memory at a time.
    pub fn s3(options: &S3Options) -> Result<Self> {
        let op = options.operator(options.endpoint.as_deref())?;
        let presigner = match &options.public_endpoint {
            Some(public) => options.operator(Some(public))?,
            None => op.clone(),
        };
        Ok(Self {
            op,
            fs_root: None,
            write_chunk: S3_WRITE_CHUNK,
            presigner: Some(presigner),
            kind: "s3",
        })
    }

    /// Wraps the store for sharing.
    pub fn shared(self) -> Arc<dyn BlobStore> {
        Arc::new(self)
    }
}

struct OpendalWriter {
    inner: opendal::Writer,
}

#[async_trait]
impl ObjectWriter for OpendalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.inner.write(data).await?;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let meta = self.inner.close().await?;
        Ok(meta.content_length())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.inner.abort().await?;
        Ok(())
    }
}

fn map_not_found(key: &str, err: opendal::Error) -> Error {
    if err.kind() == ErrorKind::NotFound {
        Error::NotFound(key.to_owned())
    } else {
        Error::Backend(err)
    }
}

#[async_trait]
impl BlobStore for OpendalStore {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.op.writer_with(key).chunk(self.write_chunk).await?;
        Ok(Box::new(OpendalWriter { inner }))
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let size = self
            .op
            .stat(key)
            .await
            .map_err(|e| map_not_found(key, e))?
            .content_length();
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(Error::InvalidRange {
                key: key.to_owned(),
                start: range.start,
                end: range.end,
            });
        }
        let reader = self
            .op
            .reader_with(key)
            .chunk(1024 * 1024)
            .await
            .map_err(|e| map_not_found(key, e))?;
        let key = key.to_owned();
        let stream = reader
            .into_bytes_stream(range)
            .await
            .map_err(|e| map_not_found(&key, e))?;
        Ok(stream
            .map_err(|e| Error::Backend(opendal::Error::new(ErrorKind::Unexpected, e.to_string())))
            .boxed())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.op.stat(key).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let entries = match self.op.list_with(prefix).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.path().to_owned())
            .collect())
    }

    async fn check(&self) -> Result<()> {
        self.op.check().await?;
        Ok(())
    }

    async fn presign_read(&self, key: &str, expiry: Duration) -> Result<Option<String>> {
        let Some(presigner) = &self.presigner else {
            return Ok(None);
        };
        let request = presigner.presign_read(key, expiry).await?;
        Ok(Some(request.uri().to_string()))
    }

    async fn concat(&self, parts: &[String], dest: &str) -> Result<u64> {
        let Some(root) = &self.fs_root else {
            return concat_streamed(self, parts, dest).await;
        };
        let (root, parts, dest) = (root.clone(), parts.to_vec(), dest.to_owned());
        tokio::task::spawn_blocking(move || fs_concat(&root, &parts, &dest))
            .await
            .map_err(|e| {
                Error::Backend(opendal::Error::new(ErrorKind::Unexpected, e.to_string()))
            })?
    }
}

/// The path of `key` under `root`; keys with `..`, empty or absolute components are refused (the
/// registry never makes such keys, and this must not reach outside the root even if it did).
fn fs_path(root: &Path, key: &str) -> Result<std::path::PathBuf> {
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::Backend(opendal::Error::new(
            ErrorKind::Unexpected,
            format!("refusing unsafe key {key:?}"),
        )));
    }
    Ok(root.join(key))
}

/// Concatenates files in the kernel (`std::io::copy` between files uses `copy_file_range` on
/// Linux, which never copies through user space and shares extents on filesystems that can),
/// into a temporary file that is synced and renamed into place, like OpenDAL's atomic writes.
fn fs_concat(root: &Path, parts: &[String], dest: &str) -> Result<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let io = |key: &str, e: std::io::Error| -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(key.to_owned())
        } else {
            Error::Backend(opendal::Error::new(
                ErrorKind::Unexpected,
                format!("{key}: {e}"),
            ))
        }
    };
    let target = fs_path(root, dest)?;
    let tmp_dir = root.join(".tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(|e| io(dest, e))?;
    let tmp = tmp_dir.join(format!(
        "concat-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp).map_err(|e| io(dest, e))?;
        let mut total = 0;
        for part in parts {
            let mut input = std::fs::File::open(fs_path(root, part)?).map_err(|e| io(part, e))?;
            total += std::io::copy(&mut input, &mut out).map_err(|e| io(part, e))?;
        }
        out.sync_all().map_err(|e| io(dest, e))?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dest, e))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| io(dest, e))?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_conformance() {
        let store = OpendalStore::memory().unwrap().shared();
        conformance::run(store.as_ref()).await;
    }

    #[tokio::test]
    async fn fs_store_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = OpendalStore::fs(dir.path()).unwrap().shared();
        conformance::run(store.as_ref()).await;
    }

    fn s3_options(server: &aerugo_testkit::s3::S3Server, prefix: &str) -> S3Options {
        use aerugo_testkit::s3;
        S3Options {
            bucket: server.fresh_bucket().unwrap(),
            region: s3::REGION.to_owned(),
            endpoint: Some(server.endpoint()),
            path_style: true,
            prefix: prefix.to_owned(),
            access_key_id: s3::ACCESS_KEY_ID.to_owned(),
            secret_access_key: s3::SECRET_ACCESS_KEY.to_owned(),
            public_endpoint: None,
        }
    }

    #[tokio::test]
    async fn s3_store_passes_conformance() {
        let server = aerugo_testkit::s3::S3Server::start().unwrap();
        let store = OpendalStore::s3(&s3_options(&server, "")).unwrap().shared();
        conformance::run(store.as_ref()).await;
        // The same bucket under a prefix: keys stay inside it.
        let store = OpendalStore::s3(&s3_options(&server, "some/prefix"))
            .unwrap()
            .shared();
        conformance::run(store.as_ref()).await;
    }

    #[tokio::test]
    async fn s3_rejects_wrong_credentials() {
        let server = aerugo_testkit::s3::S3Server::start().unwrap();
        let mut options = s3_options(&server, "");
        options.secret_access_key = "not-the-secret".to_owned();
        let store = OpendalStore::s3(&options).unwrap();
        assert!(store.check().await.is_err(), "the server checks signatures");
        assert!(!format!("{options:?}").contains("not-the-secret"));
    }

    #[tokio::test]
    async fn s3_presigned_reads_need_no_credentials_and_resist_tampering() {
        let server = aerugo_testkit::s3::S3Server::start().unwrap();
        let store = OpendalStore::s3(&s3_options(&server, "pre")).unwrap();
        let mut w = store.writer("obj/one").await.unwrap();
        w.write(Bytes::from_static(b"0123456789")).await.unwrap();
        w.finish().await.unwrap();
        let mut w = store.writer("obj/two").await.unwrap();
        w.write(Bytes::from_static(b"other")).await.unwrap();
        w.finish().await.unwrap();

        let url = store
            .presign_read("obj/one", Duration::from_secs(600))
            .await
            .unwrap()
            .expect("s3 presigns");
        let http = reqwest::Client::new();
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b"0123456789");
        // The client's own Range header is not part of the signature.
        let resp = http
            .get(&url)
            .header("Range", "bytes=2-4")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b"234");
        // Another key under the same signature, or a changed signature, is refused.
        let other = url.replace("obj/one", "obj/two");
        assert_ne!(other, url);
        assert_eq!(http.get(&other).send().await.unwrap().status(), 403);
        let (head, sig) = url.split_once("X-Amz-Signature=").unwrap();
        let flipped: String = sig
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    if c == '0' { '1' } else { '0' }
                } else {
                    c
                }
            })
            .collect();
        let tampered = format!("{head}X-Amz-Signature={flipped}");
        assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
        // A presigned GET does not allow HEAD (the method is signed).
        assert_eq!(http.head(&url).send().await.unwrap().status(), 403);

        // A public endpoint signs for the host clients use.
        let mut options = s3_options(&server, "pre");
        options.public_endpoint = Some(format!("http://localhost:{}", server.addr().port()));
        let public = OpendalStore::s3(&options).unwrap();
        let url = public
            .presign_read("obj/one", Duration::from_secs(600))
            .await
            .unwrap()
            .unwrap();
        assert!(url.starts_with(&format!("http://localhost:{}/", server.addr().port())));
        assert_eq!(
            http.get(&url).send().await.unwrap().status(),
            404,
            "fresh bucket has no such key"
        );

        assert_eq!(
            OpendalStore::memory()
                .unwrap()
                .presign_read("x", Duration::from_secs(1))
                .await
                .unwrap(),
            None
        );
    }
}
