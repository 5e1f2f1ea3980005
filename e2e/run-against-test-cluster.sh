#!/usr/bin/env bash
# Runs e2e.sh against test-cluster: a real control plane (kube-apiserver,
# controller-manager, scheduler, etcd) with kwok nodes, on loopback. Against
# kind or k3d, run e2e.sh directly.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --quiet --bin grpc-operator -p grpc-operator
cargo build --quiet --bin test-cluster -p grpc-operator-testkit
# Build the control plane first (minutes, once per machine), so that the wait
# below is only for the cluster to start.
./scripts/build-test-infra.sh >/dev/null
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

workdir=$(mktemp -d)
# The cluster goes when this script goes: test-cluster stops when its stdin
# (this pipe) closes, whatever ends the script.
exec 3> >("$target/debug/test-cluster" --kubeconfig "$workdir/kubeconfig" --exit-on-stdin-close \
  >"$workdir/cluster.log" 2>&1)
cluster_pid=$!
cleanup() {
  local rc=$?
  exec 3>&-
  # Wait for test-cluster to stop every component.
  for _ in $(seq 1 300); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.1; done
  if [ $rc -ne 0 ]; then echo "--- test-cluster log (last 30 lines) ---" >&2; tail -n 30 "$workdir/cluster.log" >&2 || true; fi
  rm -rf "$workdir"
  exit $rc
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  [ -s "$workdir/kubeconfig" ] && break
  kill -0 "$cluster_pid" 2>/dev/null || { echo "test-cluster exited:" >&2; tail -n 30 "$workdir/cluster.log" >&2; exit 1; }
  sleep 0.2
done
[ -s "$workdir/kubeconfig" ] || { echo "test-cluster did not become ready" >&2; exit 1; }

# fd 3 closed for e2e.sh and the operator it starts: only this script holds
# the pipe that keeps the cluster up.
KUBECONFIG="$workdir/kubeconfig" OPERATOR_BIN="$target/debug/grpc-operator" E2E_TIMEOUT="${E2E_TIMEOUT:-120}" \
  "$root/e2e/e2e.sh" 3>&-
