# syntax=docker/dockerfile:1
# Aerugo container image: a release build of the `aerugo` binary on Debian bookworm-slim.
#
#   docker build -t aerugo:local .
#   docker run --rm -p 8080:8080 aerugo:local            # embedded mode: SQLite + fs under /var/lib/aerugo
#   docker run --rm aerugo:local config check            # effective configuration, secrets redacted
#
# Every setting can be passed as AERUGO_<SECTION>__<KEY> (see README.md); docs/deployment.md has
# the multi-node setups (docker-compose.yml, charts/aerugo).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace is needed: Cargo resolves every member (storage-backends, testkit) even
# when building only the `aerugo` binary. .dockerignore keeps target/ and .git out.
COPY . .
# The cache mounts keep the registry index and compiled dependencies between builds; the binary
# is copied out of the cached target directory because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin aerugo \
 && install -D -m 0755 target/release/aerugo /out/aerugo

FROM debian:bookworm-slim
# ca-certificates: https S3 endpoints and PostgreSQL/CockroachDB TLS with sslrootcert=system are
# checked against the system's CA store.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned.
RUN groupadd --system --gid 10001 aerugo \
 && useradd --system --uid 10001 --gid aerugo --home-dir /var/lib/aerugo --shell /usr/sbin/nologin aerugo \
 && install -d -o aerugo -g aerugo -m 0750 /var/lib/aerugo /var/lib/aerugo/keys
COPY --from=builder /out/aerugo /usr/local/bin/aerugo
USER 10001:10001
# Relative default paths (./aerugo-data/...) resolve here, the only directory the user may write.
# /var/lib/aerugo/keys exists so that a named volume mounted there (docker-compose.yml shares the
# token signing key that way) starts out owned by the aerugo user.
WORKDIR /var/lib/aerugo
# server.listen_address defaults to 0.0.0.0:8080.
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["aerugo"]
CMD ["serve"]
