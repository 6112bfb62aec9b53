#!/usr/bin/env bash
# Runs the whole test suite exactly as CI does: formatting, lints, then every test of the workspace
# (unit tests, the storage conformance suite, API integration tests against real aerugo processes,
# and end-to-end tests with real clients: skopeo, podman, docker, ctr, oras).
#
# The real clients must be installed first (Debian, as root): scripts/install-clients.sh
# PostgreSQL must be reachable at AERUGO_TEST_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres); tests say how to start it when it is not.
# The tests start the private dockerd/containerd they need; this script stops them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

stop_daemons() { bash scripts/client-daemons.sh stop >/dev/null 2>&1 || true; }
trap stop_daemons EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (metadata on SQLite)"
cargo test --workspace
echo "== API integration tests again, metadata on PostgreSQL"
# The same test bodies, each node on a fresh database of AERUGO_TEST_DATABASE_URL's server.
# Modules that always run on PostgreSQL (several nodes on one database, faults of a private cluster,
# the cross-node cache) ran in the first pass already.
AERUGO_TEST_BACKEND=postgres cargo test --test integration -- \
  --skip multinode:: --skip faults:: --skip contention:: --skip cache::
