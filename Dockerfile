# syntax=docker/dockerfile:1
# Build stage: compile the release binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
# Declared targets must exist for cargo to read the manifest.
COPY bench bench
RUN cargo build --release --locked && strip target/release/secateur

# Runtime stage: the binary, CA certificates and curl (for the health check), a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin secateur \
 && mkdir -p /data && chown secateur:secateur /data
COPY --from=build /src/target/release/secateur /usr/local/bin/secateur
USER secateur
ENV SECATEUR_DATA_DIR=/data \
    SECATEUR_LISTEN=0.0.0.0:8080 \
    SECATEUR_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["secateur"]
CMD ["serve"]
