//! Aerugo: a distributed, multi-tenant OCI container registry.
//!
//! The crate is layered; dependencies point down only (see `docs/ARCHITECTURE.md`):
//! `main` → `app` → `api` → `service` → {`meta`, `storage`} → `oci`, with `config` a leaf.
//! `tidy` enforces the arrows in `cargo test`.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod jobs;
pub mod meta;
pub mod oci;
pub mod service;
pub mod storage;
pub mod telemetry;

#[cfg(test)]
mod tidy;
