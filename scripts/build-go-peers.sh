#!/usr/bin/env bash
# Builds the grpc-go test peers of runtime/tests/peers/go (go-peer-client and
# go-user-server), and h2spec (the HTTP/2 conformance suite, a tool pinned in
# that go.mod), into a cache outside the checkout, keyed by their source:
#
#   ${XDG_CACHE_HOME:-~/.cache}/grpc-operator/go-peers/<hash>/{go-peer-client,go-user-server,h2spec}
#
# where <hash> covers go.mod, go.sum, every .go file and this script (its build
# flags), and links them into .tools/bin.
# A build happens only when that directory lacks a binary, so an unchanged
# checkout starts in milliseconds. Dependencies come from the committed
# go.mod/go.sum (-mod=readonly): a build never edits them. Prints the bin
# directory as go-peers=DIR on stdout (everything else goes to stderr).
set -euo pipefail
shopt -s inherit_errexit   # a failing command inside $(...) fails the script too
root=$(cd "$(dirname "$0")/.." && pwd)
self="$root/scripts/$(basename "$0")"
src="$root/runtime/tests/peers/go"
bins=(go-peer-client go-user-server h2spec)
export GOTOOLCHAIN=local    # fail fast instead of fetching another Go
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"

log() { echo "build-go-peers: $*" >&2; }

# Paths are hashed with the contents, so a renamed file is a new build too.
key=$(cd "$src" && { printf '%s\n' go.mod go.sum; find . -name '*.go' -type f | LC_ALL=C sort; } \
  | while read -r f; do printf '%s\n' "$f"; cat "$f"; done \
  | cat - "$self" | sha256sum | cut -c1-16)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/grpc-operator/go-peers"
out="$cache/$key"

complete() { local b; for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }

lock=""
if ! complete; then
  command -v go >/dev/null || { log "error: go is not installed (Go 1.26 is needed to build the Go test peers)"; exit 1; }
  # One build at a time (two test processes may both find it missing).
  mkdir -p "$cache"
  exec {lock}>"$cache/build.lock"
  flock "$lock"
fi
if ! complete; then
  log "building ${bins[*]} into $out"
  tmp="$out.tmp.$$" start=$SECONDS
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$tmp/" ./cmd/go-peer-client ./cmd/go-user-server \
    github.com/summerwind/h2spec/cmd/h2spec)
  for b in "${bins[@]}"; do [ -x "$tmp/$b" ] || { log "error: the build did not produce $b"; exit 1; }; done
  rm -rf "$out"
  mv "$tmp" "$out"
  log "built in $((SECONDS - start)) s"
fi
if [ -n "$lock" ]; then exec {lock}>&-; fi

mkdir -p "$root/.tools/bin"
for b in "${bins[@]}"; do ln -sfn "$out/$b" "$root/.tools/bin/$b"; done
echo "go-peers=$out"
