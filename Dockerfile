# syntax=docker/dockerfile:1
# The rollcall image: the release binary on a distroless base with CA certificates, run as the
# numeric non-root user 65532. Build it from the repository root:
#
#     docker build -t rollcall:0.1.0 .
#
# The build needs BuildKit (the default builder since Docker 23) for its cache mount.

# Keep in step with the channel in rust-toolchain.toml; the builder stage checks that they agree.
ARG RUST_VERSION=1.95.0

# The Cargo manifests, the lock file and the toolchain file, with every other file emptied, so
# that the layer that downloads the crates is rebuilt only when they change or files are added
# or removed. Empty files keep every target a manifest names (benches, binaries) in place.
FROM rust:${RUST_VERSION}-bookworm AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name Cargo.toml ! -name Cargo.lock ! -name rust-toolchain.toml \
    -exec truncate -s 0 {} +

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG RUST_VERSION
# Use the image's toolchain. Without this, rustup would read rust-toolchain.toml and download
# the components it lists (rustfmt, clippy), which the build does not use.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION}
WORKDIR /fetch
COPY --from=manifests /src ./
RUN cargo fetch --locked

WORKDIR /src
COPY . .
RUN grep -qx "channel = \"${RUST_VERSION}\"" rust-toolchain.toml \
    || { echo "error: RUST_VERSION ${RUST_VERSION} differs from the channel in rust-toolchain.toml; update the Dockerfile" >&2; exit 1; }
# Compiled dependencies stay in the cache mount between builds, so a change to rollcall's own
# code recompiles only rollcall's crates.
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p rollcall \
    && install -m 0755 target/release/rollcall /usr/local/bin/rollcall

# Distroless cc for Debian 12: the C runtime libraries, CA certificates and a nonroot user
# (65532), with no shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="rollcall" \
      org.opencontainers.image.description="Attendance registers, policy decisions, casework and referrals for groups of schools in England" \
      org.opencontainers.image.source="https://github.com/rollcall-schools/rollcall" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /usr/local/bin/rollcall /usr/local/bin/rollcall
USER 65532:65532
# gRPC (TLS when configured) and the plaintext health port; see docs/operations.md.
EXPOSE 50051 8081
ENTRYPOINT ["rollcall"]
