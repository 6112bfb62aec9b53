//! `aerugo-bench`: measures OCI registries over their HTTP API (see `aerugo_testkit::bench`).
//!
//! `scripts/bench.sh` drives it to compare Aerugo with CNCF distribution and an nginx
//! static-file ceiling; `aerugo-bench --help` lists the workloads' knobs.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    aerugo_testkit::bench::main(std::env::args().skip(1).collect()).await
}
