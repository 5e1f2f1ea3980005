#!/usr/bin/env bash
# Regenerates userpb/ (the Go stubs of runtime/proto/user/v1/user.proto) with
# protoc, protoc-gen-go and protoc-gen-go-grpc. Run it after changing the proto
# or the versions below, and commit the result: builds never run protoc.
#
# protoc-gen-go is taken at the google.golang.org/protobuf version go.mod pins,
# so the generated code always matches the runtime it is compiled against;
# protoc-gen-go-grpc is pinned here (it is a module of its own, not in go.mod).
# Both are installed into a temporary GOBIN: nothing lands on PATH.
#
# The proto has no go_package option (buf, grpcio and prost share it), so the
# Go import path is given with protoc's M flags instead.
set -euo pipefail
shopt -s inherit_errexit
here=$(cd "$(dirname "$0")" && pwd)
proto_root=$(cd "$here/../../../proto" && pwd)
proto=user/v1/user.proto
protoc_gen_go_grpc_version=v1.6.2

export GOTOOLCHAIN=local
export GOFLAGS=-mod=readonly
command -v protoc >/dev/null || { echo "generate.sh: protoc is missing (apt-get install protobuf-compiler)" >&2; exit 1; }

module=$(cd "$here" && go list -m)
protobuf_version=$(cd "$here" && go list -m -f '{{.Version}}' google.golang.org/protobuf)
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT
GOBIN="$gobin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$protobuf_version"
GOBIN="$gobin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$protoc_gen_go_grpc_version"

rm -f "$here"/userpb/*.pb.go
mapping="M$proto=$module/userpb"
# module=... strips the module path from the import path, so files land in
# $here/userpb/ while the descriptor keeps its canonical name user/v1/user.proto.
PATH="$gobin:$PATH" protoc \
  -I "$proto_root" \
  --go_out="$here" --go_opt="module=$module" --go_opt="$mapping" \
  --go-grpc_out="$here" --go-grpc_opt="module=$module" --go-grpc_opt="$mapping" \
  "$proto"
ls "$here"/userpb/*.pb.go
