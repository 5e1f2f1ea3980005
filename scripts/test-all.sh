#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine of the project's
# kind (Rust toolchain present), installing the tools the tests need.
# .ci/run calls this; so can a person: ./scripts/test-all.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CI="${CI:-true}"   # tests needing an external tool fail instead of skipping
export PATH="$root/.tools/bin:$PATH"

echo "==> installing test tools"
./scripts/install-tools.sh

echo "==> format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> the runtime's guide and API docs build without broken links"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -q -p grpc-runtime -p grpc-contract

echo "==> one TLS crypto provider (ring) in the dependency tree"
if grep -Eq '^name = "aws-lc-(rs|sys)"' Cargo.lock; then
  echo "aws-lc-rs is in Cargo.lock: rustls must use only the ring provider" >&2
  cargo tree --workspace -e normal,build,dev -i aws-lc-rs >&2 || true
  exit 1
fi

echo "==> kustomize builds"
kubectl kustomize config/default >/dev/null
kubectl kustomize config/namespaced >/dev/null

echo "==> end-to-end against test-cluster (real control plane, kwok nodes)"
./e2e/run-against-test-cluster.sh

echo "==> unit and integration tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line with the totals over every test binary.
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')

# No test leaves a process behind: each test cluster's watchdog deletes it
# when its test process exits; give them a moment, then check.
clusters="${TMPDIR:-/tmp}/grpc-operator-test-clusters"
for _ in $(seq 1 120); do
  [ -z "$(ls -A "$clusters" 2>/dev/null)" ] && break
  sleep 0.5
done
left=$(pgrep -af 'grpc-operator-test-clusters/' || true)
if [ -n "$left" ]; then
  echo "error: test cluster processes left behind:" >&2
  echo "$left" >&2
  rc=1
fi

echo
echo "all tests: $passed passed, $failed failed"
exit "$rc"
