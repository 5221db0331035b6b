# agentgate container image: a multi-stage build (BoringSSL needs cmake, clang, libclang) and a
# minimal non-root runtime. Not built in CI here (no registry access); build with
#   docker build -t agentgate:0.1.0 .
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin agentgate \
 && strip target/release/agentgate

# Distroless: glibc, CA roots, no shell, runs as nonroot (65532) unless the pod says otherwise.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/agentgate /usr/local/bin/agentgate
COPY conf/agentgate.yaml /etc/agentgate/config/agentgate.yaml
USER 10001:10001
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/agentgate"]
CMD ["run", "--config", "/etc/agentgate/config/agentgate.yaml"]
