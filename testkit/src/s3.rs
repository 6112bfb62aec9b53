//! A real S3 server for tests: `s3s-fs` (files in a fresh temporary directory) behind `s3s`, which
//! checks every request's AWS Signature V4 (header-signed and presigned URLs alike).
//!
//! [`S3Server::start`] binds a random loopback port and serves on a thread of its own with its own
//! Tokio runtime, so the server outlives the runtime of the test that started it and any number of
//! Aerugo processes can share it (give each node [`S3Server::node_env`]). Buckets are directories
//! under the server's root; [`S3Server::create_bucket`] makes a fresh one per test. Requests are
//! served path style (`http://127.0.0.1:<port>/<bucket>/<key>`). Dropping the value stops the
//! server and deletes its files.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

/// The access key id every test server accepts.
pub const ACCESS_KEY_ID: &str = "aerugo-test-access";
/// The secret access key every test server accepts.
pub const SECRET_ACCESS_KEY: &str = "aerugo-test-secret-0123456789";
/// The region clients sign for.
pub const REGION: &str = "us-east-1";
/// The bucket [`S3Server::start`] creates.
pub const DEFAULT_BUCKET: &str = "aerugo";

/// A running S3 server; stops when dropped.
pub struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

impl S3Server {
    /// Starts a server on a random loopback port with a fresh root and the bucket
    /// [`DEFAULT_BUCKET`].
    pub fn start() -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("aerugo-s3-")
            .tempdir()
            .context("creating the S3 server's root directory")?;
        let fs = s3s_fs::FileSystem::new(root.path())
            .map_err(|e| anyhow::anyhow!("starting s3s-fs: {e:?}"))?;
        let service = {
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
            builder.build()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the S3 port")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("aerugo-s3")
            .enable_all()
            .build()
            .context("building the S3 server's runtime")?;
        let thread = std::thread::Builder::new()
            .name("aerugo-s3".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => panic!("S3 server cannot listen: {e}"),
                    };
                    let http = ConnBuilder::new(TokioExecutor::new());
                    loop {
                        let socket = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        let conn = http
                            .serve_connection(TokioIo::new(socket), service.clone())
                            .into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                });
                runtime.shutdown_background();
            })
            .context("spawning the S3 server thread")?;
        let server = Self {
            addr,
            root,
            stop: Some(stop),
            thread: Some(thread),
        };
        server.create_bucket(DEFAULT_BUCKET)?;
        Ok(server)
    }

    /// The server's URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates the bucket `name` (idempotent).
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.root.path().join(name))
            .with_context(|| format!("creating bucket {name}"))
    }

    /// Creates a bucket with a unique name, for one test.
    pub fn fresh_bucket(&self) -> anyhow::Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name)?;
        Ok(name)
    }

    /// The environment that points an Aerugo node at `bucket` on this server (path style,
    /// credentials through `AERUGO_STORAGE__*`).
    pub fn node_env(&self, bucket: &str) -> Vec<(String, String)> {
        [
            ("AERUGO_STORAGE__TYPE", "s3".to_owned()),
            ("AERUGO_STORAGE__BUCKET", bucket.to_owned()),
            ("AERUGO_STORAGE__REGION", REGION.to_owned()),
            ("AERUGO_STORAGE__ENDPOINT", self.endpoint()),
            ("AERUGO_STORAGE__PATH_STYLE", "true".to_owned()),
            ("AERUGO_STORAGE__ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            (
                "AERUGO_STORAGE__SECRET_ACCESS_KEY",
                SECRET_ACCESS_KEY.to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
