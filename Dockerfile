# Image of the operator (config/manager/manager.yaml runs it with `run`).
#   docker build -t ghcr.io/grpc-operator/grpc-operator:0.1.0 .
# Not built by the test command: the project's machines run no Docker engine.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin grpc-operator

# distroless "nonroot" runs as uid 65532, matching the manager's securityContext.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/grpc-operator /usr/local/bin/grpc-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/grpc-operator"]
CMD ["run"]
