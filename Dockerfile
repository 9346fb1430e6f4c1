# jobkeeper: a static musl binary (rustls, no OpenSSL) on distroless/static, run as nonroot.
#
#   docker build -t jobkeeper:dev .
#
# Without a Docker engine, `make image` builds the same image (a static glibc build instead
# of musl, see tests/cluster/jobkeeper-image.sh) with the final stage's config taken from
# tests/cluster/images/jobkeeper.spec; tests/deploy.rs fails when the two disagree.
#
# The dependency layer is built from Cargo.toml and Cargo.lock alone, so editing src/
# rebuilds only the jobkeeper crate.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
ARG TARGET=x86_64-unknown-linux-musl
# musl-gcc compiles ring's C and assembly for the musl target. Package versions are not
# pinned: the base image tag fixes the Debian release, and bookworm only takes security
# fixes, which we want.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "${TARGET}"
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
WORKDIR /build

# Dependencies: build against an empty crate of the same shape (a library and a binary).
# Only the jobkeeper binary: the benchmark's sources (bench/) are not in the context.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target "${TARGET}" --bin jobkeeper \
    && rm -rf src \
        "target/${TARGET}/release/.fingerprint/jobkeeper-"* \
        "target/${TARGET}/release/deps/jobkeeper-"* \
        "target/${TARGET}/release/deps/libjobkeeper-"*

# The crate itself. The fingerprints removed above make cargo rebuild it even when the
# copied sources are older than the placeholder.
COPY src ./src
RUN cargo build --release --locked --target "${TARGET}" --bin jobkeeper \
    && cp "target/${TARGET}/release/jobkeeper" /jobkeeper \
    && /jobkeeper --version

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="jobkeeper" \
      org.opencontainers.image.description="A Kubernetes Job controller for Jobs whose spec.managedBy names it" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /jobkeeper /jobkeeper
USER 65532:65532
# 8080: /metrics; 8081: /healthz and /readyz.
EXPOSE 8080 8081
ENTRYPOINT ["/jobkeeper"]
CMD ["run"]
