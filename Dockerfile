# The plexus agent in a container: `docker build -t plexus .`, then
#   docker run --network host -v /etc/plexus:/etc/plexus:ro plexus
# with /etc/plexus holding plexus.toml and the cluster secret (owner-only, readable by
# uid 10001). The image runs `plexus agent`; `plexus status` and `plexus secret` are in it.

# Build: only a Rust toolchain and crates.io are needed (ring's C parts use the image's cc).
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN cargo build --release --locked -p plexus-cli --bin plexus

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home plexus \
    && mkdir -p /etc/plexus /run/plexus \
    && chown plexus:plexus /run/plexus
COPY --from=build /src/target/release/plexus /usr/local/bin/plexus
USER plexus
ENV RUST_LOG=info
# The node's listen address and the metrics address come from the configuration.
EXPOSE 7100 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/plexus", "agent", "--config", "/etc/plexus/plexus.toml"]
