#!/usr/bin/env bash
# install-clients.sh - install the real container clients that Aerugo's interop tests drive:
#   skopeo 1.9.3, podman 4.3.1 (+ crun, conmon), docker.io 20.10.24 (dockerd + client), containerd 1.6.20 (ctr),
#   all from Debian 12 (bookworm) packages, and oras-py (PyPI `oras`, pinned) in a venv with a small
#   ORAS-style CLI `aerugo-oras` (push with --subject, referrers, pull, resolve) - Debian has no `oras` CLI.
#
# Usage: scripts/install-clients.sh            (root; idempotent; ~1 s when everything is present)
#   AERUGO_CLIENTS_PREFIX   where the oras venv and aerugo-oras live (default /opt/aerugo-clients);
#                           aerugo-oras is also linked to /usr/local/bin/aerugo-oras
#   ORAS_PY_VERSION         oras-py version (default 0.2.43)
#
# Nothing is started: package postinst scripts are kept from starting dockerd/containerd (policy-rc.d).
# Run scripts/client-daemons.sh start for a private dockerd + containerd. See docs/clients-notes.md.
set -euo pipefail

PREFIX=${AERUGO_CLIENTS_PREFIX:-/opt/aerugo-clients}
ORAS_PY_VERSION=${ORAS_PY_VERSION:-0.2.43}
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)

log() { echo "install-clients.sh: $*" >&2; }
die() { echo "install-clients.sh: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get)"

# --- Debian packages: command -> package -----------------------------------------------------------
# docker.io pulls in containerd, runc and tini; podman/skopeo pull in conmon and containers-common
# (/etc/containers/policy.json, registries.conf); podman gets crun only if no runc is installed in the
# same run, so crun (podman's default runtime) is listed explicitly. As root nothing else is needed: no uidmap, no
# fuse-overlayfs (rootless only), no storage.conf (podman's default native overlay works here; the
# tests use vfs under /tmp via CONTAINERS_STORAGE_CONF, see client-daemons.sh).
declare -a WANT=(
  "skopeo:skopeo"
  "podman:podman"
  "crun:crun"
  "dockerd:docker.io"
  "containerd:containerd"
  "ctr:containerd"
  "runc:runc"
)
missing=()
for w in "${WANT[@]}"; do
  cmd=${w%%:*} pkg=${w#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]-} " != *" $pkg "* ]]; then missing+=("$pkg"); fi
done
# oras-py needs `python3 -m venv` (Debian: python3-venv provides ensurepip)
if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && [ ! -x "$PREFIX/oras-venv/bin/python" ]; then
  missing+=("python3-venv")
fi

apt_lists_fresh() {
  # lists present and they know every package we want
  local p out
  for p in "$@"; do
    out=$(apt-cache policy "$p" 2>/dev/null || true)  # (no `| grep -q`: SIGPIPE + pipefail)
    [[ $out == *"Candidate: "* && $out != *"Candidate: (none)"* ]] || return 1
  done
}

if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  t0=$(date +%s)
  if ! apt_lists_fresh "${missing[@]}"; then
    log "apt-get update"
    apt-get update -q -o DPkg::Lock::Timeout=600 >&2
  fi
  # keep postinst scripts from starting the system dockerd/containerd
  policy_tmp=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy_tmp=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy_tmp"; chmod 755 "$policy_tmp"
  fi
  rc=0
  apt-get install "${APT_OPTS[@]}" "${missing[@]}" >&2 || rc=$?
  if [ $rc -ne 0 ]; then
    log "apt-get install failed (rc=$rc); retrying after apt-get update"
    apt-get update -q -o DPkg::Lock::Timeout=600 >&2
    rc=0; apt-get install "${APT_OPTS[@]}" "${missing[@]}" >&2 || rc=$?
  fi
  [ -n "$policy_tmp" ] && rm -f "$policy_tmp"
  [ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed"
  log "Debian packages installed in $(( $(date +%s) - t0 ))s"
fi
if [ ! -f /etc/containers/policy.json ]; then
  # skopeo/podman refuse to copy without a signature policy (containers-common ships this one; dpkg
  # does not restore a deleted conffile on reinstall): accept anything (test machine)
  mkdir -p /etc/containers
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' > /etc/containers/policy.json
  log "wrote /etc/containers/policy.json (insecureAcceptAnything)"
fi

# --- oras-py venv --------------------------------------------------------------------------------------
VENV=$PREFIX/oras-venv
have_oras=$("$VENV/bin/python" -c 'import oras.version as v; print(v.__version__)' 2>/dev/null || true)
if [ "$have_oras" != "$ORAS_PY_VERSION" ]; then
  log "installing oras-py $ORAS_PY_VERSION (PyPI 'oras') into $VENV"
  t0=$(date +%s)
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "oras==$ORAS_PY_VERSION" >&2
  log "oras-py installed in $(( $(date +%s) - t0 ))s"
fi

# --- aerugo-oras helper CLI ----------------------------------------------------------------------------
mkdir -p "$PREFIX/bin"
helper_tmp=$(mktemp)
trap 'rm -f "$helper_tmp"' EXIT
{ echo "#!$VENV/bin/python"; cat <<'PY'
"""aerugo-oras: tiny ORAS-style CLI on top of oras-py (PyPI `oras`), for plain-HTTP registries.

  aerugo-oras push      [--plain-http] [AUTH] REF FILE[:MEDIATYPE]... [--artifact-type T]
                        [--subject REF|DIGEST] [--annotation K=V]... [--no-fallback-tag]
  aerugo-oras pull      [--plain-http] [AUTH] REF [-o DIR]
  aerugo-oras referrers [--plain-http] [AUTH] REF[@DIGEST|:TAG] [--artifact-type T]
  aerugo-oras resolve   [--plain-http] [AUTH] REF       (prints digest, mediaType, size of a manifest)

  AUTH: -u/--username USER -p/--password PASSWORD (default: anonymous).  oras-py ignores
  DOCKER_CONFIG (it reads only ~/.docker/config.json), so credentials are passed explicitly.

REF is HOST:PORT/REPO[:TAG][@DIGEST].  --subject takes a full REF or a bare sha256:... digest
(same repository as REF).  The artifact manifest is an OCI image manifest with "artifactType" set
and config = the OCI empty descriptor (application/vnd.oci.empty.v1+json, '{}'), like ORAS 1.1+
(without --artifact-type: oras-py's default config type application/vnd.unknown.config.v1+json).
If the registry does not answer the manifest PUT with an `OCI-Subject` header (no Referrers API,
e.g. distribution 2.8), the referrers tag schema fallback (tag sha256-<hex> = OCI index) is kept
up to date, as the OCI distribution-spec 1.1 requires of clients; `referrers` reads the API first
and falls back to that tag on 404.

Authentication uses oras-py's token backend (Docker token auth: on a 401 it asks the challenge's
realm for a token, with Basic credentials when given).  oras-py 0.2.43 keeps the first token it gets
and, on a later 401, retries with that same token; it asks for a new one only after a 403
(`Registry.do_request` / `TokenAuth.authenticate_request`).  A push starts with `HEAD blob`, whose
challenge asks for `pull` only, so the following `POST .../blobs/uploads/` is answered
401 `insufficient_scope` again and again and the push fails ("Issue retrieving session url").
Like the Go `oras` CLI (oras-go asks for `pull,push` up front), `push` therefore fetches a
`repository:<name>:pull,push` token through oras-py's own `request_token` before it starts.
"""
import argparse
import hashlib
import json
import os
import sys
import urllib.parse

import oras.auth.utils
import oras.container
import oras.oci
import oras.provider

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
ACCEPT = ", ".join([MT_MANIFEST, MT_INDEX,
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])
EMPTY = b"{}"
EMPTY_DESC = {"mediaType": MT_EMPTY, "digest": "sha256:" + hashlib.sha256(EMPTY).hexdigest(), "size": 2}


def split_ref(ref):
    c = oras.container.Container(ref)
    return c, f"{c.registry}", f"{c.namespace}/{c.repository}" if c.namespace else c.repository


def base(args, registry):
    return f"{'http' if args.plain_http else 'https'}://{registry}/v2"


def make_client(args, registry, repo, push=False):
    """An oras-py client with the credentials; for a push, holding a pull,push token for `repo`."""
    client = oras.provider.Registry(insecure=args.plain_http)
    if args.username is None:
        return client
    client.auth.set_basic_auth(args.username, args.password or "")
    if push:
        # Work around oras-py's token reuse (see the module doc): get the push token first.
        ping = client.session.get(f"{base(args, registry)}/")
        challenge = ping.headers.get("Www-Authenticate", "")
        if ping.status_code == 401 and challenge.lower().startswith("bearer "):
            h = oras.auth.utils.parse_auth_header(challenge)
            h.scope = f"repository:{repo}:pull,push"
            token = client.auth.request_token(h)
            if not token:
                sys.exit(f"aerugo-oras: no token for {h.scope} from {h.realm}")
            client.auth.token = token
    return client


def head_manifest(args, client, ref):
    c, reg, repo = split_ref(ref)
    r = c.digest or c.tag
    resp = client.do_request(f"{base(args, reg)}/{repo}/manifests/{r}", "GET", headers={"Accept": ACCEPT})
    if resp.status_code != 200:
        sys.exit(f"aerugo-oras: GET manifest {ref}: HTTP {resp.status_code} {resp.text[:200]}")
    body = resp.content
    return {"mediaType": resp.headers.get("Content-Type", "").split(";")[0] or json.loads(body).get("mediaType"),
            "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}, body


def cmd_push(args):
    c, reg, repo = split_ref(args.ref)
    client = make_client(args, reg, repo, push=True)
    subject = None
    if args.subject:
        sref = args.subject if "/" in args.subject else f"{reg}/{repo}@{args.subject}"
        _, sreg, srepo = split_ref(sref)
        sclient = client if (sreg, srepo) == (reg, repo) else make_client(args, sreg, srepo)
        sdesc, _ = head_manifest(args, sclient, sref)
        subject = oras.oci.Subject(mediaType=sdesc["mediaType"], digest=sdesc["digest"], size=sdesc["size"])
    # ORAS 1.1-style manifest: artifactType + empty config.  oras-py (0.2.x) has no artifactType
    # parameter, so it is added just before the manifest is uploaded.
    orig_upload = client.upload_manifest

    def upload_manifest(manifest, container):
        if args.artifact_type:
            manifest["artifactType"] = args.artifact_type
            manifest["config"] = dict(EMPTY_DESC)  # oras-py uploaded the '{}' blob already
        if not manifest.get("annotations"):
            manifest.pop("annotations", None)
        upload_manifest.sent = manifest
        return orig_upload(manifest, container)

    client.upload_manifest = upload_manifest
    annotations = dict(a.split("=", 1) for a in args.annotation) or None
    cwd = os.getcwd()
    files = []
    for f in args.files:
        path, _, mt = f.partition(":")
        files.append(os.path.relpath(os.path.abspath(path), cwd) + (":" + mt if mt else ""))
    resp = client.push(target=args.ref, files=files, subject=subject, manifest_annotations=annotations,
                       disable_path_validation=True, quiet=True)
    digest = resp.headers.get("Docker-Content-Digest")
    body = json.dumps(upload_manifest.sent).encode()  # requests' json= uses json.dumps(...) the same way
    size = len(body)
    if digest != "sha256:" + hashlib.sha256(body).hexdigest():
        print(f"aerugo-oras: warning: registry digest {digest} != local sha256 of body", file=sys.stderr)
    print(f"Pushed {args.ref}")
    print(f"Digest: {digest}")
    if subject:
        oci_subject = resp.headers.get("OCI-Subject")
        if oci_subject:
            print(f"OCI-Subject: {oci_subject} (registry supports the Referrers API)")
        elif not args.no_fallback_tag:
            desc = {"mediaType": MT_MANIFEST, "digest": digest, "size": size}
            if args.artifact_type:
                desc["artifactType"] = args.artifact_type
            if annotations:
                desc["annotations"] = annotations
            update_fallback_tag(args, client, reg, repo, subject.digest, desc)


def update_fallback_tag(args, client, reg, repo, subject_digest, desc):
    tag = subject_digest.replace(":", "-")
    u = f"{base(args, reg)}/{repo}/manifests/{tag}"
    r = client.do_request(u, "GET", headers={"Accept": MT_INDEX})
    index = r.json() if r.status_code == 200 else {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
    index["manifests"] = [m for m in index.get("manifests", []) if m.get("digest") != desc["digest"]] + [desc]
    r = client.do_request(u, "PUT", data=json.dumps(index).encode(), headers={"Content-Type": MT_INDEX})
    if r.status_code != 201:
        sys.exit(f"aerugo-oras: PUT fallback tag {tag}: HTTP {r.status_code} {r.text[:200]}")
    print(f"No OCI-Subject header: updated referrers fallback tag {reg}/{repo}:{tag}")


def cmd_referrers(args):
    c, reg, repo = split_ref(args.ref)
    client = make_client(args, reg, repo)
    digest = c.digest
    if not digest:
        digest = head_manifest(args, client, args.ref)[0]["digest"]
    u = f"{base(args, reg)}/{repo}/referrers/{digest}"
    if args.artifact_type:
        u += "?" + urllib.parse.urlencode({"artifactType": args.artifact_type})
    r = client.do_request(u, "GET", headers={"Accept": MT_INDEX})
    source = "referrers API"
    if r.status_code == 404:
        r = client.do_request(f"{base(args, reg)}/{repo}/manifests/{digest.replace(':', '-')}", "GET",
                              headers={"Accept": MT_INDEX})
        source = "fallback tag " + digest.replace(":", "-")
        index = r.json() if r.status_code == 200 else {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
        if args.artifact_type:
            index["manifests"] = [m for m in index["manifests"] if m.get("artifactType") == args.artifact_type]
    elif r.status_code == 200:
        index = r.json()
        if args.artifact_type and "artifactType" not in r.headers.get("OCI-Filters-Applied", ""):
            index["manifests"] = [m for m in index["manifests"] if m.get("artifactType") == args.artifact_type]
        if r.headers.get("Link"):
            print(f"# note: more pages: Link: {r.headers['Link']}", file=sys.stderr)
    else:
        sys.exit(f"aerugo-oras: GET {u}: HTTP {r.status_code} {r.text[:200]}")
    print(f"# {len(index['manifests'])} referrer(s) of {reg}/{repo}@{digest} via {source}", file=sys.stderr)
    print(json.dumps(index, indent=2))


def cmd_pull(args):
    _, reg, repo = split_ref(args.ref)
    client = make_client(args, reg, repo)
    for f in client.pull(target=args.ref, outdir=args.output):
        print(f)


def cmd_resolve(args):
    _, reg, repo = split_ref(args.ref)
    desc, _ = head_manifest(args, make_client(args, reg, repo), args.ref)
    print(desc["digest"], desc["mediaType"], desc["size"])


def main():
    p = argparse.ArgumentParser(prog="aerugo-oras", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("push", "pull", "referrers", "resolve"):
        s = sub.add_parser(name)
        s.add_argument("--plain-http", action="store_true", help="use http:// instead of https://")
        s.add_argument("-u", "--username", help="user name for the registry's token auth")
        s.add_argument("-p", "--password", help="password (or API key) of --username")
        s.add_argument("ref")
        if name == "push":
            s.add_argument("files", nargs="+")
            s.add_argument("--artifact-type")
            s.add_argument("--subject")
            s.add_argument("--annotation", "-a", action="append", default=[])
            s.add_argument("--no-fallback-tag", action="store_true")
        if name == "pull":
            s.add_argument("-o", "--output", default=".")
        if name == "referrers":
            s.add_argument("--artifact-type")
    args = p.parse_args()
    if args.password is not None and args.username is None:
        p.error("--password needs --username")
    {"push": cmd_push, "pull": cmd_pull, "referrers": cmd_referrers, "resolve": cmd_resolve}[args.cmd](args)


if __name__ == "__main__":
    main()
PY
} > "$helper_tmp"
if ! cmp -s "$helper_tmp" "$PREFIX/bin/aerugo-oras"; then
  install -m 755 "$helper_tmp" "$PREFIX/bin/aerugo-oras"
  log "wrote $PREFIX/bin/aerugo-oras"
fi
if [ "$(readlink /usr/local/bin/aerugo-oras 2>/dev/null)" != "$PREFIX/bin/aerugo-oras" ]; then
  ln -sfn "$PREFIX/bin/aerugo-oras" /usr/local/bin/aerugo-oras
  log "linked /usr/local/bin/aerugo-oras"
fi

# --- summary --------------------------------------------------------------------------------------------
ver() { "$@" 2>/dev/null | head -1 || echo "?"; }
log "skopeo:     $(ver skopeo --version)"
log "podman:     $(ver podman --version)"
log "dockerd:    $(ver dockerd --version)"
log "docker CLI: $(command -v docker) $(ver docker --version)"
log "containerd: $(ver containerd --version)"
log "ctr:        $(ver ctr --version)"
log "runc:       $(ver runc --version)"
log "oras-py:    $("$VENV/bin/python" -c 'import oras.version as v; print(v.__version__)') ($PREFIX/bin/aerugo-oras)"
