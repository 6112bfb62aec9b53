//! Test infrastructure for Aerugo.
//!
//! This crate deliberately does not depend on the `aerugo` crate: it drives the
//! registry only from the outside, the way real clients do, so that tests
//! exercise the same surface that `docker`, `skopeo` or `oras` would.
//!
//! - [`node`] starts, stops, kills and restarts real Aerugo server processes.
//! - [`image`] builds small but real OCI and Docker images, indexes and
//!   artifacts offline and deterministically from a seed.
//! - [`client`] is a minimal OCI Distribution API client for pushing and
//!   pulling content and for inspecting raw responses.
//! - [`clients`] runs real container clients (`skopeo`, `podman`, `docker`,
//!   `ctr`, `aerugo-oras`) with timeouts and starts their private daemons.
//! - [`s3`] runs a real S3 server (`s3s-fs`, checking SigV4) on a loopback port.
//! - [`multinode`] starts several nodes sharing a database and a blob store.
//! - [`pgcluster`] creates a private PostgreSQL cluster a test may stop and start.
//! - [`redis`] hands out a Redis URL and key prefix per test, or a private `redis-server`.

pub mod bench;
pub mod client;
pub mod clients;
pub mod image;
pub mod multinode;
pub mod node;
pub mod pgcluster;
pub mod postgres;
pub mod redis;
pub mod s3;

pub use client::RegistryClient;
pub use image::{Blob, Image};
pub use node::{Node, NodeOptions};
