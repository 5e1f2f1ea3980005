#!/usr/bin/env bash
# End-to-end test of grpc-operator against the cluster of $KUBECONFIG.
#
# It installs crds/, runs the operator binary locally against the cluster,
# applies a GrpcService, waits for Ready, deletes it and checks that the
# Deployment and Service are gone. It works unchanged against a real cluster
# (kind, k3d) and against the API double (see run-against-fake.sh).
#
# Environment:
#   KUBECONFIG              cluster to use (required)
#   OPERATOR_BIN            operator binary (default: target/debug/grpc-operator, built if missing)
#   E2E_NAMESPACE           namespace for the test objects (default: grpc-operator-e2e)
#   E2E_IMAGE               workload image; on a real cluster it must implement the
#                           workload contract (/healthz and /readyz on ADMIN_PORT,
#                           non-root, read-only root fs) or Ready never becomes True
#   E2E_FAKE_KUBELET=1      play the Deployment controller: mark the Deployment
#                           available (only for the API double, where no kubelet runs)
#   E2E_KUBECTL_VALIDATE    kubectl --validate value (default: strict; the API double
#                           serves no OpenAPI document, so use false there)
#   E2E_TIMEOUT             seconds to wait for each step (default: 120)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
: "${KUBECONFIG:?set KUBECONFIG to the cluster to test against}"
export KUBECONFIG
bin=${OPERATOR_BIN:-$root/target/debug/grpc-operator}
ns=${E2E_NAMESPACE:-grpc-operator-e2e}
image=${E2E_IMAGE:-$(sed -n 's/^  image: //p' "$root/config/samples/user-service.yaml")}
validate=${E2E_KUBECTL_VALIDATE:-strict}
timeout=${E2E_TIMEOUT:-120}
name=user-service
k() { kubectl --request-timeout=30s "$@"; }
step() { printf '\n==> %s\n' "$*"; }
fail() { echo "E2E FAILED: $*" >&2; exit 1; }

if [ ! -x "$bin" ]; then
  step "building the operator"
  (cd "$root" && cargo build --quiet --bin grpc-operator)
fi

workdir=$(mktemp -d)
operator_pid=
cleanup() {
  local rc=$?
  if [ -n "$operator_pid" ] && kill -0 "$operator_pid" 2>/dev/null; then
    kill -TERM "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ] && [ -f "$workdir/operator.log" ]; then
    echo "--- operator log (last 50 lines) ---" >&2
    tail -n 50 "$workdir/operator.log" >&2 || true
  fi
  k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$workdir"
  exit $rc
}
trap cleanup EXIT

step "installing the CRD"
k apply --validate="$validate" -f "$root/crds/"
k wait --for=condition=Established --timeout="${timeout}s" crd/grpcservices.grpcoperator.io

step "creating namespace $ns"
k create namespace "$ns" --dry-run=client -o yaml | k apply --validate="$validate" -f -

step "starting the operator"
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" run --namespace "$ns" --admin-addr "127.0.0.1:$admin_port" --log-format text >"$workdir/operator.log" 2>&1 &
operator_pid=$!
for _ in $(seq 1 "$timeout"); do
  if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$operator_pid" 2>/dev/null || fail "operator exited: $(tail -n 5 "$workdir/operator.log")"
  sleep 1
done
curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null || fail "operator not ready after ${timeout}s"

step "applying the sample GrpcService as $ns/$name"
# The sample itself (config/samples), moved to the test namespace and, when
# E2E_IMAGE is set, to an image that implements the workload contract.
sed -e "s/^  namespace: .*/  namespace: $ns/" -e "s|^  image: .*|  image: $image|" \
  "$root/config/samples/user-service.yaml" | k apply --validate="$validate" -f -

step "waiting for the Deployment and Service"
for _ in $(seq 1 "$timeout"); do
  if k -n "$ns" get deployment "$name" >/dev/null 2>&1 && k -n "$ns" get service "$name" >/dev/null 2>&1; then break; fi
  sleep 1
done
k -n "$ns" get deployment "$name" >/dev/null || fail "Deployment not created"
k -n "$ns" get service "$name" >/dev/null || fail "Service not created"
owner=$(k -n "$ns" get deployment "$name" -o jsonpath='{.metadata.ownerReferences[0].kind}')
[ "$owner" = "GrpcService" ] || fail "Deployment not owned by the GrpcService (owner: '$owner')"
app_protocol=$(k -n "$ns" get service "$name" -o jsonpath='{.spec.ports[?(@.name=="grpc")].appProtocol}')
[ "$app_protocol" = "kubernetes.io/h2c" ] || fail "grpc port appProtocol is '$app_protocol'"

if [ "${E2E_FAKE_KUBELET:-0}" = 1 ]; then
  step "marking the Deployment available (no kubelet on the API double)"
  generation=$(k -n "$ns" get deployment "$name" -o jsonpath='{.metadata.generation}')
  replicas=$(k -n "$ns" get deployment "$name" -o jsonpath='{.spec.replicas}')
  k -n "$ns" patch deployment "$name" --subresource=status --type=merge -p "{\"status\":{\"observedGeneration\":$generation,\"replicas\":$replicas,\"updatedReplicas\":$replicas,\"readyReplicas\":$replicas,\"availableReplicas\":$replicas,\"conditions\":[{\"type\":\"Available\",\"status\":\"True\",\"reason\":\"MinimumReplicasAvailable\"}]}}"
fi

step "waiting for Ready"
k -n "$ns" wait --for=condition=Ready --timeout="${timeout}s" "grpcservice/$name"
k -n "$ns" get grpcservice "$name"
ready_column=$(k -n "$ns" get grpcservice "$name" --no-headers | awk '{print $2}')
[ "$ready_column" = "True" ] || fail "printer column READY shows '$ready_column'"
observed=$(k -n "$ns" get grpcservice "$name" -o jsonpath='{.status.observedGeneration}')
generation=$(k -n "$ns" get grpcservice "$name" -o jsonpath='{.metadata.generation}')
[ "$observed" = "$generation" ] || fail "observedGeneration $observed != generation $generation"

step "deleting the GrpcService"
k -n "$ns" delete grpcservice "$name" --wait=true --timeout="${timeout}s"
k -n "$ns" wait --for=delete --timeout="${timeout}s" "deployment/$name" 2>/dev/null || true
k -n "$ns" wait --for=delete --timeout="${timeout}s" "service/$name" 2>/dev/null || true
if k -n "$ns" get deployment "$name" >/dev/null 2>&1; then fail "Deployment left behind"; fi
if k -n "$ns" get service "$name" >/dev/null 2>&1; then fail "Service left behind"; fi

step "checking operator metrics"
metrics=$(curl -fsS "http://127.0.0.1:$admin_port/metrics")
echo "$metrics" | grep -q '^grpc_operator_reconcile_total{outcome="ready"}' || fail "no successful reconcile in metrics"

step "stopping the operator (SIGTERM)"
kill -TERM "$operator_pid"
wait "$operator_pid" || fail "operator exited non-zero on SIGTERM"
operator_pid=

echo
echo "E2E PASSED"
