#!/usr/bin/env bash
# Runs e2e.sh against the Kubernetes API double (testkit's fake-apiserver),
# for machines without a cluster. Against a real cluster, run e2e.sh directly.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --quiet --bin grpc-operator -p grpc-operator
cargo build --quiet --bin fake-apiserver -p grpc-operator-testkit
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

workdir=$(mktemp -d)
"$target/debug/fake-apiserver" --kubeconfig "$workdir/kubeconfig" >"$workdir/apiserver.log" 2>&1 &
server_pid=$!
cleanup() {
  local rc=$?
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  if [ $rc -ne 0 ]; then echo "--- fake-apiserver log (last 30 lines) ---" >&2; tail -n 30 "$workdir/apiserver.log" >&2 || true; fi
  rm -rf "$workdir"
  exit $rc
}
trap cleanup EXIT
for _ in $(seq 1 100); do [ -s "$workdir/kubeconfig" ] && break; sleep 0.1; done
[ -s "$workdir/kubeconfig" ] || { echo "fake-apiserver did not start" >&2; exit 1; }

KUBECONFIG="$workdir/kubeconfig" OPERATOR_BIN="$target/debug/grpc-operator" \
  E2E_FAKE_KUBELET=1 E2E_KUBECTL_VALIDATE=false E2E_TIMEOUT="${E2E_TIMEOUT:-30}" \
  "$root/e2e/e2e.sh"
