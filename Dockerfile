# The Kura image: the `kura` binary on Debian bookworm-slim, run as the
# unprivileged user 10001 (the uid deploy/k8s expects).
#
#   docker build -t kura:0.1.0 .
#   docker run --rm kura:0.1.0 --help
#
# Two stages: the builder compiles the release binary (RocksDB's C++
# included: 10-20 minutes on two cores the first time; the cache mounts
# keep the crate registry and the target dir between builds, so later
# builds recompile only what changed); the runtime stage gets the binary
# alone. Needs BuildKit (the default builder since Docker 23).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# RocksDB's bindgen needs libclang and clang's own headers (stdbool.h).
# The protos are compiled by protox: no protoc. Debian's versions are not
# pinned (DL3008): bookworm only takes fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kura \
 && install -D -m 0755 target/release/kura /out/kura

FROM ${RUNTIME_IMAGE}
# kura links libstdc++ (RocksDB) and glibc: the same Debian release as the
# builder. /bin/sh stays: the StatefulSets derive each pod's node id from
# its ordinal with a one-line shell command.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kura \
 && useradd --system --uid 10001 --gid kura --home-dir /var/lib/kura \
      --no-create-home --shell /usr/sbin/nologin kura \
 && install -d -o kura -g kura -m 0750 /var/lib/kura \
 && install -d -m 0755 /etc/kura
COPY --from=build /out/kura /usr/local/bin/kura
USER 10001:10001
WORKDIR /var/lib/kura
# 7600 gRPC Archive API, 7601 ops HTTP (/healthz /readyz /metrics),
# 7700 Raft + metadata, 7800 shards.
EXPOSE 7600 7601 7700 7800
ENTRYPOINT ["kura"]
CMD ["server", "--config", "/etc/kura/kura.toml"]
