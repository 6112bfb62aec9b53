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

pub mod bench;
pub mod client;
pub mod clients;
pub mod image;
pub mod node;
pub mod postgres;
pub mod redis;

pub use client::RegistryClient;
pub use image::{Blob, Image};
pub use node::{Node, NodeOptions};
