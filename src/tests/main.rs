//! Integration tests: real HTTP against `aerugo` processes started by the testkit (random ports,
//! temporary directories). One test binary, one module per area.

#![expect(
    clippy::unwrap_used,
    reason = "tests and their helpers: a failed step is a failed test"
)]

mod auth;
mod blobs;
mod cache;
mod clients;
mod contention;
mod credentials;
mod faults;
mod hardening;
mod jobs;
mod listing;
mod manifests;
mod mgmt;
mod multinode;
mod policy;
mod process;
mod protocol;
mod robustness;
mod s3;
mod support;
mod throttle;
mod uploads;
