#!/usr/bin/env bash
# client-daemons.sh - a private dockerd and a private containerd for Aerugo's client interop tests.
#
#   scripts/client-daemons.sh start    start what is not running yet, wait until each answers, print env
#   scripts/client-daemons.sh stop     stop only the processes this script started (PID files + cmdline check)
#   scripts/client-daemons.sh status   show what runs
#   scripts/client-daemons.sh env      print the shell exports:  eval "$(scripts/client-daemons.sh env)"
#   scripts/client-daemons.sh clean    stop, then delete the state directory
#
# Everything lives under ${AERUGO_CLIENTS_DIR:-/tmp/aerugo-clients} (keep it short: unix socket paths
# are limited to 107 bytes):
#   docker/      docker.sock, started.pid (ours) + dockerd.pid (dockerd's), dockerd.log, daemon.json, data/ (--data-root), exec/ (--exec-root;
#                dockerd runs its own managed containerd under exec/containerd/), config/ (DOCKER_CONFIG,
#                so no ~/.docker login or manifest-list state leaks in or out)
#   containerd/  containerd.sock(.ttrpc), containerd.pid, containerd.log, config.toml, root/, state/
#   podman/      storage.conf (vfs, graphroot/runroot here) for podman/skopeo via CONTAINERS_STORAGE_CONF
# No daemon touches /var/lib/docker, /var/lib/containerd, /run/containerd or /run/docker.sock.
#
# dockerd: --storage-driver vfs --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
#          --bridge=none (no host network changes). It treats 127.0.0.0/8 as an insecure (plain HTTP)
#          registry by default; extra flags (e.g. --insecure-registry myhost:5000) via DOCKERD_EXTRA_ARGS.
# containerd: CRI plugin disabled, own root/state/sockets; use ctr with --plain-http for HTTP registries.
set -euo pipefail

BASE=${AERUGO_CLIENTS_DIR:-/tmp/aerugo-clients}
D=$BASE/docker
C=$BASE/containerd
P=$BASE/podman
DOCKER_SOCK=$D/docker.sock
CTRD_SOCK=$C/containerd.sock
NAMESPACE=${CONTAINERD_NAMESPACE:-aerugo}
WAIT=${AERUGO_CLIENTS_WAIT:-60}

log() { echo "client-daemons.sh: $*" >&2; }
die() { echo "client-daemons.sh: ERROR: $*" >&2; exit 1; }

# ours NAME PIDFILE MARKER -> prints the pid if it runs and its cmdline contains MARKER (our socket path)
ours() {
  local f=$2 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 < "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$3" || return 1
  echo "$pid"
}
docker_pid() { ours dockerd "$D/started.pid" "$DOCKER_SOCK"; }
ctrd_pid() { ours containerd "$C/containerd.pid" "$C/config.toml"; }

docker_cli() { DOCKER_CONFIG=$D/config docker -H "unix://$DOCKER_SOCK" "$@"; }
docker_ok() { docker_cli version --format '{{.Server.Version}}' >/dev/null 2>&1; }
ctrd_ok() { ctr -a "$CTRD_SOCK" version >/dev/null 2>&1; }

wait_for() { # NAME CHECKFN PIDFN LOG
  local i
  for ((i = 0; i < WAIT * 4; i++)); do
    "$2" && return 0
    "$3" >/dev/null || { tail -n 30 "$4" >&2 || true; die "$1 exited during startup (log: $4)"; }
    sleep 0.25
  done
  tail -n 30 "$4" >&2 || true
  die "$1 did not answer within ${WAIT}s (log: $4)"
}

print_env() {
  cat <<EOF
export DOCKER_HOST=unix://$DOCKER_SOCK
export DOCKER_CONFIG=$D/config
export CONTAINERD_ADDRESS=$CTRD_SOCK
export CONTAINERD_NAMESPACE=$NAMESPACE
export CONTAINERS_STORAGE_CONF=$P/storage.conf
EOF
}

start_docker() {
  command -v dockerd >/dev/null || die "dockerd missing: run scripts/install-clients.sh"
  local pid
  if pid=$(docker_pid); then
    log "dockerd already running (pid $pid)"
  else
    mkdir -p "$D/data" "$D/exec"
    [ -f "$D/daemon.json" ] || echo '{}' > "$D/daemon.json"
    cleanup_docker_leftovers
    # shellcheck disable=SC2086
    setsid nohup dockerd \
      --config-file "$D/daemon.json" \
      -H "unix://$DOCKER_SOCK" \
      --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" \
      --storage-driver vfs \
      --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
      ${DOCKERD_EXTRA_ARGS:-} \
      >> "$D/dockerd.log" 2>&1 < /dev/null &
    echo $! > "$D/started.pid" # not dockerd.pid: dockerd refuses to start if its pidfile names a live pid
    log "dockerd starting (pid $!, log $D/dockerd.log)"
  fi
  wait_for dockerd docker_ok docker_pid "$D/dockerd.log"
  log "dockerd $(docker_cli version --format '{{.Server.Version}}') answers on unix://$DOCKER_SOCK"
}

start_containerd() {
  command -v containerd >/dev/null || die "containerd missing: run scripts/install-clients.sh"
  local pid
  if pid=$(ctrd_pid); then
    log "containerd already running (pid $pid)"
  else
    mkdir -p "$C/root" "$C/state"
    cat > "$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
    rm -f "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"
    setsid nohup containerd --config "$C/config.toml" >> "$C/containerd.log" 2>&1 < /dev/null &
    echo $! > "$C/containerd.pid"
    log "containerd starting (pid $!, log $C/containerd.log)"
  fi
  wait_for containerd ctrd_ok ctrd_pid "$C/containerd.log"
  log "containerd $(ctr -a "$CTRD_SOCK" version 2>/dev/null | awk '/Server:/{s=1} s&&/Version:/{print $2; exit}') answers on $CTRD_SOCK (namespace $NAMESPACE)"
}

write_docker_config() {
  # DOCKER_CONFIG dir for docker, podman and skopeo: no logins. podman 4.3 fails
  # ("stat $DOCKER_CONFIG/config.json: no such file") when DOCKER_CONFIG is set but the file is missing.
  mkdir -p "$D/config"
  [ -s "$D/config/config.json" ] || echo '{"auths":{}}' > "$D/config/config.json"
}

write_podman_conf() {
  mkdir -p "$P/root" "$P/run"
  cat > "$P/storage.conf.tmp" <<EOF
[storage]
driver = "vfs"
graphroot = "$P/root"
runroot = "$P/run"
EOF
  mv "$P/storage.conf.tmp" "$P/storage.conf"
}

stop_one() { # NAME PIDFN PIDFILE
  local pid i
  if ! pid=$("$2"); then
    log "$1 not running (by this script)"
    rm -f "$3"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 120; i++)); do
    [ -d "/proc/$pid" ] || break
    sleep 0.25
  done
  if [ -d "/proc/$pid" ]; then
    log "$1 (pid $pid) ignored SIGTERM for 30s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$3"
  log "$1 (pid $pid) stopped"
}

unmount_under() { # unmount anything a killed daemon left under DIR (deepest first)
  [ -d "$1" ] || return 0
  awk -v b="$1/" 'index($2, b) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null && log "unmounted $m" || true
  done
}

# After a dockerd crash/SIGKILL: its managed containerd may linger (or be a zombie whose pid is still in
# exec/containerd/containerd.pid - dockerd would then wait for it forever: "timeout waiting for
# containerd to start"), its pidfile and its bind mount of the data root may be left behind.
cleanup_docker_leftovers() {
  local mpid
  if mpid=$(ours docker-containerd "$D/exec/containerd/containerd.pid" "$D/exec/containerd/containerd.toml"); then
    kill -TERM "$mpid" 2>/dev/null || true
    sleep 1
    if [ -d "/proc/$mpid" ]; then kill -KILL "$mpid" 2>/dev/null || true; fi
    log "dockerd's containerd (pid $mpid) stopped"
  fi
  rm -f "$D/exec/containerd/containerd.pid" "$D/dockerd.pid" "$DOCKER_SOCK"
  unmount_under "$D"
}

stop_all() {
  stop_one dockerd docker_pid "$D/started.pid"
  cleanup_docker_leftovers # dockerd stops its managed containerd itself unless it was killed
  stop_one containerd ctrd_pid "$C/containerd.pid"
  unmount_under "$BASE"
  rm -f "$CTRD_SOCK" "$CTRD_SOCK.ttrpc"
}

status() {
  local pid
  if pid=$(docker_pid); then echo "dockerd     running pid $pid  unix://$DOCKER_SOCK"; else echo "dockerd     stopped"; fi
  if pid=$(ctrd_pid); then echo "containerd  running pid $pid  $CTRD_SOCK"; else echo "containerd  stopped"; fi
}

case "${1:-}" in
  start)
    [ "$(id -u)" = 0 ] || die "must run as root"
    mkdir -p "$BASE"
    write_docker_config
    write_podman_conf
    start_containerd
    start_docker
    print_env
    ;;
  stop) stop_all ;;
  status) status ;;
  env) print_env ;;
  clean)
    stop_all
    rm -rf "$BASE"
    log "removed $BASE"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
