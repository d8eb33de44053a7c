# syntax=docker/dockerfile:1
#
# The kured image: a static binary and a CA bundle, nothing else.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/kured-rs/kured:0.1.0 .
#
# The binary comes from scripts/build-static, the same build scripts/check-static (run by
# scripts/test) checks in an empty chroot, so what CI checked is what the image holds.

# The builder runs on the architecture it builds for (no --platform=$BUILDPLATFORM): ring's C
# code needs a musl C compiler for the target, and Debian ships musl-gcc only as a native
# compiler. A foreign architecture therefore builds under emulation (binfmt/QEMU, as buildx sets
# up): slower, but the same toolchain and command on every architecture. Debian 12, like CI.
FROM rust:1.95.0-slim-bookworm AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/build-static scripts/build-static
RUN rustup target add "$(scripts/build-static --arch "$TARGETARCH" --print-target)"
COPY Cargo.toml Cargo.lock ./
COPY src src
# Crate downloads are shared between builds; the target directory is kept per architecture, so
# the two builds of a multi-platform image neither wait for each other nor evict each other's
# artifacts. The binary is copied out of the cache mount, which the next stage cannot see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=kured-target-$TARGETARCH \
    scripts/build-static --arch "$TARGETARCH" --out /out/kured

# scratch rather than distroless/static: the binary is static, resolves names with musl (which
# reads /etc/hosts and /etc/resolv.conf, both mounted by the kubelet, and needs no NSS modules)
# and carries its own time zone database, so the only file it needs beside itself is the CA
# bundle for https notifications and Prometheus. distroless would add tzdata, /etc/passwd and
# /tmp, none of which kured uses. The reboot command and a sentinel command are run in the
# host's mount namespace, found on the host's filesystem, never in the image.
FROM scratch
# The Debian bundle of the builder image; it is the first path src/http.rs looks at.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/kured /usr/bin/kured
# Commands given without a path (--reboot-command=systemctl reboot, needs-restarting -r) are
# looked up with this PATH after entering the host's mount namespace.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Root-owned and never written to, so readOnlyRootFilesystem holds. No USER: the agent runs as
# root (entering PID 1's mount namespace, signalling systemd); the manifests set runAsUser.
LABEL org.opencontainers.image.title="kured" \
      org.opencontainers.image.description="Kubernetes Reboot Daemon: safe, rolling reboots of nodes that need one" \
      org.opencontainers.image.source="https://github.com/kured-rs/kured" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENTRYPOINT ["/usr/bin/kured"]
