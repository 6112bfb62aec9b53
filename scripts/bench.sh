#!/usr/bin/env bash
# Benchmarks Aerugo against CNCF distribution (Debian's docker-registry 2.8.2) in one run, with an
# nginx static-file ceiling and dd/sha256sum context, and writes docs/benchmarks.md.
#
# Usage: scripts/bench.sh [--quick] [aerugo-bench run options...]
#   --quick   one round, shorter runs, 1,000/10,000 tags and repositories (a few minutes)
#   Any other option goes to `aerugo-bench run` (see `aerugo-bench --help`); a run given extra
#   options writes target/bench/benchmarks.md instead of docs/benchmarks.md.
#   AERUGO_BIN=/path/to/aerugo benchmarks that binary instead of building one.
#
# On a fresh Debian 12 machine (as root) it installs docker-registry and nginx when missing.
# Everything listens on 127.0.0.1 on free ports, lives in one temporary directory, and is
# stopped and removed on exit. Raw results go to target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

QUICK=0
EXTRA=()
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) EXTRA+=("$arg") ;;
    esac
done

log() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'bench.sh: %s\n' "$*" >&2
    exit 1
}

# --- Dependencies ---------------------------------------------------------------------------------
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install as root: apt-get install ${missing[*]}"
    log "installing ${missing[*]} from Debian"
    # The packages' own services (nginx on :80, docker-registry on :5000) are not wanted here;
    # a policy-rc.d that refuses service starts keeps them down during installation.
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
REGISTRY=$(command -v docker-registry)
command -v cargo >/dev/null || die "cargo is missing; install Rust (rustup) first"

# --- Build ----------------------------------------------------------------------------------------
log "building aerugo and aerugo-bench (release)"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "${AERUGO_BIN:-}" ]; then
    cargo build --release --quiet -p aerugo --bin aerugo
fi
cargo build --release --quiet -p aerugo-testkit --bin aerugo-bench --bin aerugo-s3
AERUGO="${AERUGO_BIN:-$TARGET_DIR/release/aerugo}"
BENCH="$TARGET_DIR/release/aerugo-bench"
S3SERVER="$TARGET_DIR/release/aerugo-s3"

# --- Servers --------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/aerugo-bench.XXXXXX)
# nginx workers run as an unprivileged user and must be able to read the static files.
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
    if [ -n "$AERUGO_PG_PID" ]; then
        psql "$PG_ADMIN_URL" -qAtc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
    fi
    if [ -n "$AERUGO_S3_PID" ]; then
        psql "$PG_ADMIN_URL" -qAtc "DROP DATABASE IF EXISTS ${PG_DB}_s3" >/dev/null 2>&1 || true
        redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX:*" 2>/dev/null |
            xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

AERUGO_PG_PID="" AERUGO_S3_PID=""
mapfile -t ports < <("$BENCH" free-ports 5)
P_AERUGO=${ports[0]} P_DIST=${ports[1]} P_NGINX=${ports[2]} P_AERUGO_PG=${ports[3]} P_AERUGO_S3=${ports[4]}

log "starting Aerugo (SQLite + filesystem) on 127.0.0.1:$P_AERUGO"
mkdir -p "$WORK/aerugo"
export AERUGO_SERVER__LISTEN_ADDRESS="127.0.0.1:$P_AERUGO"
export AERUGO_DATABASE__URL="sqlite://$WORK/aerugo/aerugo.db"
export AERUGO_STORAGE__ROOT="$WORK/aerugo/blobs"
export AERUGO_LOG=warn
CREDS=()
AUTH_NOTE="no authentication"
# Builds with authentication: the bench pushes as the site admin (through Docker token auth),
# repositories are public so manifest pulls are anonymous, and tokens outlive the run.
if "$AERUGO" config check 2>/dev/null | grep -q '^\[auth\]'; then
    BENCH_PASSWORD="bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
    export AERUGO_AUTH__ADMIN_PASSWORD="$BENCH_PASSWORD"
    export AERUGO_AUTH__SIGNING_KEY_FILE="$WORK/aerugo/token-key.pem"
    export AERUGO_AUTH__DEFAULT_VISIBILITY=public
    export AERUGO_AUTH__TOKEN_TTL_SECONDS=7200
    CREDS=(--username admin --password "$BENCH_PASSWORD")
    AUTH_NOTE="token auth on (pushes as the site admin with a Bearer token; repositories public, so pulls are anonymous unless a row says otherwise)"
fi
"$AERUGO" serve >"$WORK/aerugo.log" 2>&1 &
AERUGO_PID=$!
PIDS+=("$AERUGO_PID")

# The same binary with its metadata on PostgreSQL (the stateless-node backend), on a database of
# its own on AERUGO_BENCH_DATABASE_URL's server (default: the local one, trust auth), dropped on exit.
PG_ADMIN_URL="${AERUGO_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_DB="aerugo_bench_$$"
if command -v psql >/dev/null && psql "$PG_ADMIN_URL" -qAtc "CREATE DATABASE $PG_DB" >/dev/null 2>&1; then
    log "starting Aerugo (PostgreSQL + filesystem) on 127.0.0.1:$P_AERUGO_PG"
    mkdir -p "$WORK/aerugo-pg"
    AERUGO_SERVER__LISTEN_ADDRESS="127.0.0.1:$P_AERUGO_PG" \
        AERUGO_DATABASE__URL="${PG_ADMIN_URL%/*}/$PG_DB" \
        AERUGO_STORAGE__ROOT="$WORK/aerugo-pg/blobs" \
        AERUGO_AUTH__SIGNING_KEY_FILE="$WORK/aerugo-pg/token-key.pem" \
        "$AERUGO" serve >"$WORK/aerugo-pg.log" 2>&1 &
    AERUGO_PG_PID=$!
    PIDS+=("$AERUGO_PG_PID")
else
    log "no PostgreSQL at $PG_ADMIN_URL (or psql missing): the PostgreSQL column is skipped"
fi

# The stateless-node setup: metadata on PostgreSQL, blobs in S3 (the testkit's s3s-fs server, which
# checks SigV4 signatures; blob GETs answer 307 to a presigned URL on it), and the shared Redis
# cache tier (AERUGO_BENCH_REDIS_URL, default the local server) under a key prefix of its own.
REDIS_URL="${AERUGO_BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
REDIS_PREFIX="aerugo-bench-$$"
if [ -n "$AERUGO_PG_PID" ] && command -v redis-cli >/dev/null &&
    redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 &&
    psql "$PG_ADMIN_URL" -qAtc "CREATE DATABASE ${PG_DB}_s3" >/dev/null 2>&1; then
    mkdir -p "$WORK/aerugo-s3" "$WORK/s3"
    TMPDIR="$WORK/s3" "$S3SERVER" >"$WORK/s3.env" 2>"$WORK/s3.log" &
    PIDS+=("$!")
    for _ in $(seq 100); do grep -q STORAGE__SECRET "$WORK/s3.env" 2>/dev/null && break; sleep 0.1; done
    log "starting Aerugo (PostgreSQL + S3 + Redis) on 127.0.0.1:$P_AERUGO_S3"
    (
        # shellcheck disable=SC1091
        . "$WORK/s3.env"
        export AERUGO_SERVER__LISTEN_ADDRESS="127.0.0.1:$P_AERUGO_S3" \
            AERUGO_DATABASE__URL="${PG_ADMIN_URL%/*}/${PG_DB}_s3" \
            AERUGO_AUTH__SIGNING_KEY_FILE="$WORK/aerugo-s3/token-key.pem" \
            AERUGO_CACHE__REDIS_URL="$REDIS_URL" AERUGO_CACHE__KEY_PREFIX="$REDIS_PREFIX"
        exec "$AERUGO" serve
    ) >"$WORK/aerugo-s3.log" 2>&1 &
    AERUGO_S3_PID=$!
    PIDS+=("$AERUGO_S3_PID")
else
    log "no PostgreSQL or Redis at $REDIS_URL: the PostgreSQL + S3 + Redis column is skipped"
fi

log "starting distribution $("$REGISTRY" --version | awk '{print $3}') on 127.0.0.1:$P_DIST"
mkdir -p "$WORK/distribution"
# Debian's default configuration, minus htpasswd auth (Aerugo has none yet), minus the access log
# (Aerugo runs at log level warn), with its storage in the temporary directory.
cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $WORK/distribution
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$P_DIST
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
"$REGISTRY" serve "$WORK/distribution.yml" >"$WORK/distribution.log" 2>&1 &
DIST_PID=$!
PIDS+=("$DIST_PID")

BLOB_MIB=256
log "writing static files and starting nginx on 127.0.0.1:$P_NGINX"
"$BENCH" static-files "$WORK/static" --blob-mib "$BLOB_MIB"
chmod -R a+rX "$WORK/static"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$P_NGINX;
        root $WORK/static;
    }
}
EOF
"$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
PIDS+=("$!")

"$BENCH" wait "http://127.0.0.1:$P_AERUGO/v2/" --timeout 60 ||
    die "Aerugo did not start: $(tail -5 "$WORK/aerugo.log")"
if [ -n "$AERUGO_PG_PID" ]; then
    "$BENCH" wait "http://127.0.0.1:$P_AERUGO_PG/v2/" --timeout 60 ||
        die "Aerugo on PostgreSQL did not start: $(tail -5 "$WORK/aerugo-pg.log")"
fi
if [ -n "$AERUGO_S3_PID" ]; then
    "$BENCH" wait "http://127.0.0.1:$P_AERUGO_S3/v2/" --timeout 60 ||
        die "Aerugo on PostgreSQL + S3 + Redis did not start: $(tail -5 "$WORK/aerugo-s3.log")"
fi
"$BENCH" wait "http://127.0.0.1:$P_DIST/v2/" --timeout 60 ||
    die "distribution did not start: $(tail -5 "$WORK/distribution.log")"
"$BENCH" wait "http://127.0.0.1:$P_NGINX/" --timeout 60 ||
    die "nginx did not start: $(tail -5 "$WORK/nginx/error.log")"

# --- Context: disk and hashing rates --------------------------------------------------------------
# dd prints "N bytes (...) copied, S s, R MB/s"; the rate is recomputed from N and S in MB/s.
dd_rate() {
    local out
    out=$(dd if=/dev/zero of="$WORK/dd.bin" bs=1M count="$BLOB_MIB" "$@" 2>&1 | tail -1)
    rm -f "$WORK/dd.bin"
    awk '{ for (i = 1; i <= NF; i++) if ($i == "s,") { printf "%.1f\n", $1 / $(i - 1) / 1e6 } }' <<<"$out"
}
median3() { sort -g | sed -n 2p; }
log "measuring dd (256 MiB, with and without fsync) and sha256sum on one core"
DD=$(for _ in 1 2 3; do dd_rate; done | median3)
DD_FSYNC=$(for _ in 1 2 3; do dd_rate conv=fsync; done | median3)
cat "$WORK/static/large.bin" >/dev/null
SHA_SUM=$(for _ in 1 2 3; do
    start=$(date +%s.%N)
    sha256sum "$WORK/static/large.bin" >/dev/null
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v m="$BLOB_MIB" 'BEGIN { printf "%.1f\n", m * 1048576 / (e - s) / 1e6 }'
done | median3)
# Debian's sha256sum does not use the CPU's SHA extensions; OpenSSL does (the issue's 1.4 GB/s),
# and so may the sha2 crate Aerugo hashes with. The target uses the best of the three.
SHA_RUST=$(for _ in 1 2 3; do "$BENCH" sha256 --blob-mib "$BLOB_MIB"; done | median3)
SHA_SSL=""
if command -v openssl >/dev/null; then
    SHA_SSL=$(openssl speed -seconds 1 -bytes 1048576 -evp sha256 2>/dev/null |
        awk '$1 == "sha256" { sub("k", "", $2); printf "%.1f\n", $2 / 1000 }')
fi
SHA=$(printf '%s\n' "$SHA_SUM" "$SHA_RUST" ${SHA_SSL:+"$SHA_SSL"} | sort -g | tail -1)
log "dd: $DD MB/s, with fsync: $DD_FSYNC MB/s; SHA-256: sha256sum $SHA_SUM, sha2 crate $SHA_RUST, openssl ${SHA_SSL:-n/a} MB/s"

# --- Run ------------------------------------------------------------------------------------------
mkdir -p target/bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
JSON="target/bench/bench-$STAMP.json"
FRAGMENT="$WORK/results.md"
args=(run
    --target "aerugo=http://127.0.0.1:$P_AERUGO" --pid "aerugo=$AERUGO_PID"
    --target "distribution=http://127.0.0.1:$P_DIST" --pid "distribution=$DIST_PID"
    --static "http://127.0.0.1:$P_NGINX"
    --blob-mib "$BLOB_MIB"
    --fsync aerugo --fsync distribution
    --sha256-mbps "$SHA" --dd-mbps "$DD" --dd-fsync-mbps "$DD_FSYNC"
    --json "$JSON" --markdown "$FRAGMENT"
    "${CREDS[@]}")
if [ -n "$AERUGO_PG_PID" ]; then
    args+=(--target "aerugo-pg=http://127.0.0.1:$P_AERUGO_PG" --pid "aerugo-pg=$AERUGO_PG_PID" --fsync aerugo-pg)
fi
# Both registries fsync every blob before answering: Aerugo's fs backend through OpenDAL (its writer
# calls sync_all on close), distribution's filesystem driver on commit. So the push target that
# applies is "≥ 0.8× dd with fsync".
# distribution fsyncs every link file it writes (about 200 tag or mount requests per second
# here), so populating it to 100,000 tags and repositories would take it over 15 minutes; it is
# measured at the small scale only, Aerugo at both.
if [ "$QUICK" = 1 ]; then
    args+=(--quick --max-entries distribution=1000)
else
    args+=(--max-entries distribution=10000)
fi
# Populating PostgreSQL to 100,000 tags and repositories one request at a time takes long too; the
# flat-cost claim is shown on SQLite, PostgreSQL is measured at 10,000.
if [ -n "$AERUGO_PG_PID" ]; then
    if [ "$QUICK" = 1 ]; then args+=(--max-entries aerugo-pg=1000); else args+=(--max-entries aerugo-pg=10000); fi
fi
# S3 has no fsync to speak of: its push rate is judged against one core's SHA-256 rate.
if [ -n "$AERUGO_S3_PID" ]; then
    args+=(--target "aerugo-s3=http://127.0.0.1:$P_AERUGO_S3" --pid "aerugo-s3=$AERUGO_S3_PID")
    if [ "$QUICK" = 1 ]; then args+=(--max-entries aerugo-s3=1000); else args+=(--max-entries aerugo-s3=10000); fi
fi
log "running the workloads (this takes a while; progress below)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
"$BENCH" "${args[@]}" "${EXTRA[@]}" >/dev/null
elapsed=$(($(date +%s) - started))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
cp "$JSON" target/bench/latest.json

for pid in "$AERUGO_PID" "$DIST_PID" $AERUGO_PG_PID $AERUGO_S3_PID; do
    kill -0 "$pid" 2>/dev/null || die "a server died during the run (pid $pid); see $WORK"
done

# --- Report ---------------------------------------------------------------------------------------
OUT=docs/benchmarks.md
if ((${#EXTRA[@]})); then OUT=target/bench/benchmarks.md; fi
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
os=$(. /etc/os-release && echo "$PRETTY_NAME")
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then rev="$rev + uncommitted changes"; fi
mode="full"
if [ "$QUICK" = 1 ]; then mode="quick (--quick)"; fi
{
    echo "# Benchmarks"
    echo
    echo "Generated by \`scripts/bench.sh\` ($mode run) on $(date -u '+%Y-%m-%d %H:%M UTC'); the workloads took ${elapsed} s."
    echo "Do not edit by hand: rerun the script."
    echo "Issue 6 describes the workloads and the targets."
    echo
    echo "## Machine and versions"
    echo
    echo "- CPU: $cpu, $(nproc) cores; memory: $mem; $os, Linux $(uname -r)."
    echo "- Load average (1, 5, 15 min) just before the workloads: $LOAD_BEFORE; just after: $LOAD_AFTER. Anything else running on the machine lowers every absolute number; the same-run ratios are the stable part."
    echo "- Aerugo: commit $rev, $(rustc --version | awk '{print $1, $2}'), release build; embedded mode (SQLite + filesystem in a temporary directory), \`AERUGO_LOG=warn\`, $AUTH_NOTE."
    if [ -n "$AERUGO_PG_PID" ]; then
        echo "- aerugo-pg: the same binary with its metadata on PostgreSQL $(psql "$PG_ADMIN_URL" -qAtc 'SHOW server_version' 2>/dev/null) on this machine (SERIALIZABLE writes, TCP on loopback), blobs on the filesystem."
    fi
    if [ -n "$AERUGO_S3_PID" ]; then
        echo "- aerugo-s3: the stateless-node setup, one node: metadata on the same PostgreSQL, blobs in S3 (the testkit's \`s3s-fs\` 0.14.1 server on loopback, which checks SigV4 signatures; blob GETs answer 307 to a presigned URL and the client downloads from S3), cache tier 2 on Redis $(redis-cli -u "$REDIS_URL" info server 2>/dev/null | sed -n 's/^redis_version:\(.*\)\r*$/\1/p'). \`s3s-fs\` is a test server (it also runs on this machine's two cores), so this column's blob rates measure it as much as Aerugo."
    fi
    echo "- CNCF distribution: $("$REGISTRY" --version | awk '{print $3}') (Debian package \`docker-registry\`), filesystem storage, delete enabled, in-memory blob descriptor cache, no access log."
    echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/.*: //'), \`sendfile on\`, no access log, one worker per core."
    echo "- Context measured in this run: one core's SHA-256 rate $SHA_SUM MB/s with coreutils \`sha256sum\`, $SHA_RUST MB/s with the sha2 crate Aerugo uses, ${SHA_SSL:-(not measured)} MB/s with \`openssl speed -evp sha256\` (the targets use the best: $SHA MB/s); \`dd\` of $BLOB_MIB MiB from \`/dev/zero\` $DD MB/s without and $DD_FSYNC MB/s with \`conv=fsync\` (median of three each, on the filesystem holding the registries' data)."
    echo
    echo "## Method"
    echo
    echo "- All servers and the load generator (\`aerugo-bench\`, in \`testkit/\`, Rust with reqwest and tokio) share this machine and talk over 127.0.0.1; the client competes with the server for the same cores, so absolute numbers are lower than with a separate load machine."
    echo "- Each workload runs against Aerugo, then distribution (then nginx where it has a counterpart), and repeats in that order; the table shows each server's median run (the better one when there are two rounds)."
    echo "- Both registries fsync every blob before answering a push (Aerugo through OpenDAL's fs writer, distribution in its filesystem driver), so their push rates are judged against \`dd conv=fsync\`; a chunked push fsyncs every chunk."
    echo "- MB means 10^6 bytes. CPU µs per request is the server's utime + stime (\`/proc/PID/stat\`) during the run divided by the HTTP requests it served; peak RSS is \`VmHWM\`, reset through \`/proc/PID/clear_refs\` before each run."
    echo "- The nginx column uses the same client on the same two cores, so it measures what this client can drive (a dedicated load tool on another machine gets far more from nginx); server CPU µs per request is the measure that does not depend on the client."
    echo "- Request-rate runs get a 0.25 s warm-up first. Blob content is pseudo-random and new in every run, so no server can skip work for content it already holds."
    echo "- Tags and repositories are created through the API before the list runs: one small manifest pushed under many tags, and repositories made of one cross-repository blob mount each (both registries list those in the catalog)."
    echo "- distribution fsyncs every link file it writes, so it accepts only about 200 tag or mount requests per second here; it is measured at the small scale only (\`--max-entries\`), Aerugo at both."
    echo
    cat "$FRAGMENT"
    echo
    echo "## How to reproduce"
    echo
    echo "As root on Debian 12: \`scripts/bench.sh\` (about ten minutes on two cores; \`scripts/bench.sh --quick\` for a shorter run)."
    echo "It installs \`docker-registry\` and \`nginx\` when missing, builds in release mode, and writes this page and the raw results (\`target/bench/latest.json\`)."
} >"$OUT"
log "wrote $OUT and $JSON"
