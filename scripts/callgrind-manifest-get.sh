#!/usr/bin/env bash
# Counts the instructions an `aerugo` binary executes per anonymous manifest GET by tag (SQLite +
# filesystem, public repository, keep-alive connection), with valgrind's callgrind. Instruction
# counts do not depend on what else the machine runs, so two builds compare exactly; the bench
# (scripts/bench.sh) measures rates.
#
# Usage: scripts/callgrind-manifest-get.sh [BINARY] [REQUESTS]
#   BINARY defaults to target/release/aerugo (built when missing), REQUESTS to 300.
# Needs valgrind and curl. Only the GETs are instrumented (startup and the push are not).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/aerugo}; N=${2:-300}
if [ "$BIN" = target/release/aerugo ] && [ ! -x "$BIN" ]; then cargo build --release --quiet -p aerugo --bin aerugo; fi
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
PORT=$((20000 + RANDOM % 20000))
export AERUGO_SERVER__LISTEN_ADDRESS=127.0.0.1:$PORT AERUGO_DATABASE__URL=sqlite://$W/db.sqlite AERUGO_STORAGE__ROOT=$W/blobs
export AERUGO_AUTH__ADMIN_PASSWORD=cgpass AERUGO_AUTH__SIGNING_KEY_FILE=$W/key.pem AERUGO_AUTH__DEFAULT_VISIBILITY=public AERUGO_LOG=warn
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$W/cg.out "$BIN" serve > $W/log 2>&1 &
VP=$!
for i in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 0.5; done
U=http://127.0.0.1:$PORT
A="-u admin:cgpass"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > $W/cfg
head -c 1000 /dev/urandom > $W/layer
d() { echo "sha256:$(sha256sum $1 | cut -d' ' -f1)"; }
for f in cfg layer; do
  loc=$(curl -sf $A -X POST -D - -o /dev/null $U/v2/cg/app/blobs/uploads/ | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case $loc in http*) ;; *) loc=$U$loc;; esac
  sep='?'; [[ $loc == *\?* ]] && sep='&'
  curl -sf $A -X PUT --data-binary @$W/$f -H 'Content-Type: application/octet-stream' "$loc${sep}digest=$(d $W/$f)" -o /dev/null
done
cat > $W/m <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$(d $W/cfg)","size":$(stat -c%s $W/cfg)},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$(d $W/layer)","size":1000}]}
JSON
curl -sf $A -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @$W/m $U/v2/cg/app/manifests/v1 -o /dev/null
# warm up
for i in 1 2 3 4 5; do curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' $U/v2/cg/app/manifests/v1; done
callgrind_control -i on $VP >/dev/null
urls=(); for i in $(seq $N); do urls+=(-o /dev/null $U/v2/cg/app/manifests/v1); done
curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "${urls[@]}"
callgrind_control -i off $VP >/dev/null
kill -TERM $VP; wait $VP || true
total=$(grep -E '^totals:' $W/cg.out | head -1 | awk '{print $2}')
echo "$(basename $BIN): $total instructions for $N GETs = $((total / N)) per GET"
