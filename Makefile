# Developer entry points. The README's two commands are `make render-sample`
# (the main job, no cluster) and `./scripts/test-all.sh` (every test on a
# fresh Debian machine; .ci/run calls it).

CARGO ?= cargo
CRD_FILE := crds/grpcservices.grpcoperator.io.yaml

.PHONY: all build test lint fmt crds envoy-descriptors render-sample test-all test-infra test-cluster e2e bench bench-tls bench-grpc-web bench-monitoring bench-runtime bench-vs-go bench-h2-abuse run-example

all: build

build:
	$(CARGO) build --workspace --all-targets

## Unit and integration tests (the integration tests start a real control plane: see test-infra).
test:
	$(CARGO) test --workspace

## fmt check + clippy with warnings denied.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate the CRD from the Rust types (and the copy kustomize loads).
crds:
	$(CARGO) run --quiet --bin grpc-operator -- crd > $(CRD_FILE)
	cp $(CRD_FILE) config/crd/bases/

## Regenerate src/envoy/envoy.binpb, Envoy's descriptor set, from the locked envoy-types.
envoy-descriptors:
	UPDATE_ENVOY_DESCRIPTORS=1 $(CARGO) test --lib envoy::descriptors::tests::the_committed_envoy_descriptor_set_is_current

## The main job with no cluster: render the sample into the objects the controller applies.
render-sample:
	$(CARGO) run --quiet --bin grpc-operator -- render -f config/samples/user-service.yaml

## Every test, as CI runs it (installs what it needs).
test-all:
	./scripts/test-all.sh

## Build the real control plane (kube-apiserver, controller-manager, scheduler,
## etcd, kwok) from Go modules into ~/.cache/grpc-operator/test-infra (once).
test-infra:
	./scripts/build-test-infra.sh

## A real control plane on loopback for trying the operator by hand (Ctrl-C stops it).
test-cluster:
	mkdir -p $(CURDIR)/.tools
	$(CARGO) run -p grpc-operator-testkit --bin test-cluster -- --kubeconfig $(CURDIR)/.tools/test-cluster.kubeconfig

## End-to-end test against test-cluster.
e2e:
	./e2e/run-against-test-cluster.sh

## Convergence benchmark on the real control plane (see docs/benchmarks.md).
bench:
	$(CARGO) build --release --bin grpc-operator
	$(CARGO) run --release -p grpc-operator --example converge-bench -- --objects 1000 --idle-seconds 60 --deletions 20

## The operator's PKI: issuing 1,000 certificates, and a Secret update to the runtime serving it.
bench-tls:
	$(CARGO) build --release -p grpc-runtime --example user-service
	$(CARGO) run --release -p grpc-operator --example pki-bench -- --leaves 1000
	$(CARGO) run --release -p grpc-operator --example tls-reload-bench -- --swaps 20

## gRPC-Web: building the sidecar's bootstrap, and unary calls native vs through the sidecar.
bench-grpc-web:
	$(CARGO) build --release -p grpc-runtime --example user-service
	$(CARGO) run --release -p grpc-operator --example grpc-web-bench -- --builds 20000 --seconds 8 --rounds 3

## Monitoring: the generated rules of 1,000 GrpcServices in a real Prometheus.
bench-monitoring:
	$(CARGO) run --release -p grpc-operator --example monitoring-bench -- --services 1000 --minutes 3

## Runtime benchmark: the user service with the full chain vs bare tonic (see docs/benchmarks.md).
bench-runtime:
	$(CARGO) build --release -p grpc-runtime --examples
	./target/release/examples/runtime-bench

## grpc-runtime vs grpc-go with its middleware chain, under h2load on pinned cores.
bench-vs-go:
	$(CARGO) build --release -p grpc-runtime --examples
	./scripts/build-go-peers.sh >/dev/null
	./target/release/examples/vs-go

## HTTP/2 abuse (rapid reset, CONTINUATION, SETTINGS, PING floods, oversized headers) under load.
bench-h2-abuse:
	$(CARGO) build --release -p grpc-runtime --examples
	taskset -c 1 ./target/release/examples/h2-abuse

## The example service with the contract defaults (gRPC :50051, admin :9090).
run-example:
	$(CARGO) run -p grpc-runtime --example user-service
