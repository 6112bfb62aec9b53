//! Several Aerugo nodes sharing one metadata database and one blob store, as a load balancer's
//! backends would.
//!
//! The database is the caller's (a `postgres::TestDatabase` URL); the blob store is pluggable
//! through [`SharedStorage`]: a shared directory today, an S3 bucket for the S3 tests. The token
//! signing key is shared too, so a token minted by one node verifies on every other. Nodes start
//! one after another, so the first one migrates and creates the admin user alone.

use std::path::PathBuf;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::node::{Node, NodeOptions};

/// The blob store the nodes share, as the environment each node gets.
#[derive(Debug, Clone)]
pub enum SharedStorage {
    /// A directory of the shared file system (`storage.type = "fs"`).
    Fs(PathBuf),
    /// Any other backend: these `AERUGO_STORAGE__*` variables (e.g. S3 bucket and endpoint).
    Env(Vec<(String, String)>),
}

impl SharedStorage {
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Fs(dir) => vec![
                ("AERUGO_STORAGE__TYPE".into(), "fs".into()),
                ("AERUGO_STORAGE__ROOT".into(), dir.display().to_string()),
            ],
            Self::Env(vars) => vars.clone(),
        }
    }
}

/// `n` running nodes sharing a database and a blob store.
#[derive(Debug)]
pub struct NodeSet {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    // Declared last: the shared directory outlives the nodes.
    _shared: TempDir,
}

impl NodeSet {
    /// Starts `n` nodes from `base` (binary and extra variables), all on `database_url` and
    /// `storage` (`None`: a fresh shared directory).
    pub async fn spawn(
        n: usize,
        base: &NodeOptions,
        database_url: &str,
        storage: Option<SharedStorage>,
    ) -> anyhow::Result<Self> {
        let shared = tempfile::Builder::new()
            .prefix("aerugo-nodeset-")
            .tempdir()
            .context("creating the shared directory")?;
        let storage = storage.unwrap_or_else(|| SharedStorage::Fs(shared.path().join("blobs")));
        let key = shared.path().join("token-signing-key.pem");
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut opts = base.clone();
            let mut env = vec![
                ("AERUGO_DATABASE__URL".to_owned(), database_url.to_owned()),
                (
                    "AERUGO_AUTH__SIGNING_KEY_FILE".to_owned(),
                    key.display().to_string(),
                ),
            ];
            env.extend(storage.env());
            // The caller's own variables win.
            env.append(&mut opts.env);
            opts.env = env;
            nodes.push(
                Node::spawn(opts)
                    .await
                    .with_context(|| format!("starting node {} of {n}", i + 1))?,
            );
        }
        Ok(Self {
            nodes,
            _shared: shared,
        })
    }
}
