#!/usr/bin/env bash
# End-to-end test of grpc-operator against the cluster of $KUBECONFIG, as a
# user installs and runs it:
#
#   1. apply the CRDs (server-side) and the operator's ClusterRole;
#   2. kubectl create namespace; a ServiceAccount and RoleBinding there (the
#      namespaced install);
#   3. run the operator binary locally with that ServiceAccount's token, so its
#      RBAC is the one under test (never cluster-admin);
#   4. apply the sample, kubectl wait for Ready with every pod Ready;
#   5. delete the sample: the garbage collector removes the children.
#
# The test command runs it against test-cluster (run-against-test-cluster.sh),
# where kwok plays the kubelets. It is meant to run unchanged on kind or k3d
# with E2E_IMAGE set to an image that implements the workload contract (not
# verifiable on the project's machines: they have no container engine).
#
# Environment:
#   KUBECONFIG     cluster to use, as an admin (required)
#   OPERATOR_BIN   operator binary (default: target/debug/grpc-operator, built if missing)
#   E2E_NAMESPACE  namespace for the test objects (default: grpc-operator-e2e)
#   E2E_IMAGE      workload image; on a real cluster it must serve /healthz and
#                  /readyz on ADMIN_PORT as non-root with a read-only root fs
#   E2E_TIMEOUT    seconds to wait for each step (default: 120)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
: "${KUBECONFIG:?set KUBECONFIG to the cluster to test against}"
export KUBECONFIG
bin=${OPERATOR_BIN:-$root/target/debug/grpc-operator}
ns=${E2E_NAMESPACE:-grpc-operator-e2e}
image=${E2E_IMAGE:-$(sed -n 's/^  image: //p' "$root/config/samples/user-service.yaml")}
timeout=${E2E_TIMEOUT:-120}
name=user-service
account=grpc-operator
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
    # While the operator still runs, so that it releases its finalizer and the
    # namespace can go (a rerun would otherwise meet it Terminating).
    k -n "$ns" delete grpcservices --all --wait=true --timeout=30s >/dev/null 2>&1 || true
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

step "installing the CRD and the operator's ClusterRole (server-side apply)"
k apply --server-side -f "$root/crds/"
k wait --for=condition=Established --timeout="${timeout}s" crd/grpcservices.grpcoperator.io
k apply --server-side -f "$root/config/rbac/role.yaml"

step "creating namespace $ns and the operator's ServiceAccount in it"
k delete namespace "$ns" --ignore-not-found --wait=true --timeout="${timeout}s" >/dev/null
k create namespace "$ns"
k -n "$ns" create serviceaccount "$account"
k -n "$ns" create rolebinding "$account" --clusterrole="$account" --serviceaccount="$ns:$account"
# The operator's CA lives in the same namespace here (config/ca-rbac's Role).
sed -e "s/^  namespace: system$/  namespace: $ns/" "$root/config/ca-rbac/role.yaml" | k apply -f -
k -n "$ns" create rolebinding grpc-operator-ca --role=grpc-operator-ca --serviceaccount="$ns:$account"

step "writing a kubeconfig with the ServiceAccount's token"
server=$(k config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.server}')
k config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$workdir/ca.crt"
token=$(k -n "$ns" create token "$account" --duration=2h)
operator_kubeconfig="$workdir/operator.kubeconfig"
KUBECONFIG="$operator_kubeconfig" kubectl config set-cluster e2e --server="$server" \
  --certificate-authority="$workdir/ca.crt" --embed-certs=true >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-credentials "$account" --token="$token" >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-context e2e --cluster=e2e --user="$account" >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config use-context e2e >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl auth can-i patch deployments -n "$ns" | grep -qx yes \
  || fail "the ServiceAccount cannot patch Deployments in $ns"
if KUBECONFIG="$operator_kubeconfig" kubectl auth can-i list deployments -n default 2>/dev/null | grep -qx yes; then
  fail "the ServiceAccount reaches beyond its namespace"
fi

step "starting the operator as $ns/$account"
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KUBECONFIG="$operator_kubeconfig" "$bin" run --namespace "$ns" --ca-secret-namespace "$ns" --admin-addr "127.0.0.1:$admin_port" \
  --log-format text >"$workdir/operator.log" 2>&1 &
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
  "$root/config/samples/user-service.yaml" | k apply -f -

step "waiting for Ready"
k -n "$ns" wait --for=condition=Ready --timeout="${timeout}s" "grpcservice/$name"
k -n "$ns" get grpcservice "$name"
ready_column=$(k -n "$ns" get grpcservice "$name" --no-headers | awk '{print $2}')
[ "$ready_column" = "True" ] || fail "printer column READY shows '$ready_column'"
observed=$(k -n "$ns" get grpcservice "$name" -o jsonpath='{.status.observedGeneration}')
generation=$(k -n "$ns" get grpcservice "$name" -o jsonpath='{.metadata.generation}')
[ "$observed" = "$generation" ] || fail "observedGeneration $observed != generation $generation"

step "checking the children and the pods"
owner=$(k -n "$ns" get deployment "$name" -o jsonpath='{.metadata.ownerReferences[0].kind}')
[ "$owner" = "GrpcService" ] || fail "Deployment not owned by the GrpcService (owner: '$owner')"
# Mutual TLS by default: a certificate Secret from the operator's CA, the
# service's own ServiceAccount, and a gRPC port that no longer claims h2c.
app_protocol=$(k -n "$ns" get service "$name" -o jsonpath='{.spec.ports[?(@.name=="grpc")].appProtocol}')
[ -z "$app_protocol" ] || fail "grpc port appProtocol is '$app_protocol' with TLS on"
secret_type=$(k -n "$ns" get secret "$name-tls" -o jsonpath='{.type}')
[ "$secret_type" = "kubernetes.io/tls" ] || fail "certificate Secret $name-tls has type '$secret_type'"
k -n "$ns" get serviceaccount "$name" >/dev/null || fail "no ServiceAccount $name"
cert_ready=$(k -n "$ns" get grpcservice "$name" -o jsonpath='{.status.conditions[?(@.type=="CertificateReady")].status}')
[ "$cert_ready" = "True" ] || fail "CertificateReady is '$cert_ready'"
replicas=$(k -n "$ns" get grpcservice "$name" -o jsonpath='{.spec.replicas}')
k -n "$ns" wait --for=condition=Ready --timeout="${timeout}s" pod -l "grpcoperator.io/service=$name"
ready_pods=$(k -n "$ns" get pods -l "grpcoperator.io/service=$name" \
  -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true)
[ "$ready_pods" = "$replicas" ] || fail "$ready_pods of $replicas pods Ready"
k -n "$ns" get pods -l "grpcoperator.io/service=$name" -o wide

step "deleting the GrpcService: the garbage collector removes its children"
k -n "$ns" delete grpcservice "$name" --wait=true --timeout="${timeout}s"
k -n "$ns" wait --for=delete --timeout="${timeout}s" "deployment/$name" 2>/dev/null || true
k -n "$ns" wait --for=delete --timeout="${timeout}s" "service/$name" 2>/dev/null || true
if k -n "$ns" get deployment "$name" >/dev/null 2>&1; then fail "Deployment left behind"; fi
if k -n "$ns" get service "$name" >/dev/null 2>&1; then fail "Service left behind"; fi
k -n "$ns" wait --for=delete --timeout="${timeout}s" "secret/$name-tls" 2>/dev/null || true
if k -n "$ns" get secret "$name-tls" >/dev/null 2>&1; then fail "certificate Secret left behind"; fi

step "checking operator metrics"
metrics=$(curl -fsS "http://127.0.0.1:$admin_port/metrics")
grep -q '^grpc_operator_reconcile_total{outcome="ready"}' <<<"$metrics" || fail "no successful reconcile in metrics"

step "stopping the operator (SIGTERM)"
kill -TERM "$operator_pid"
wait "$operator_pid" || fail "operator exited non-zero on SIGTERM"
operator_pid=

echo
echo "E2E PASSED"
