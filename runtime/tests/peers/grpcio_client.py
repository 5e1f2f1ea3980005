#!/usr/bin/env python3
"""A real grpcio (gRPC C-core) peer for grpc-runtime's integration tests.

Run with .tools/bin/python-peers (the venv scripts/install-tools.sh makes).
Stubs are generated at start-up from the proto with grpc_tools.protoc into a
temporary directory, so the client always speaks the proto the Rust side
compiles.

Prints exactly one JSON line on stdout. An RPC that fails is a result, not a
crash: the exit code is 0 whenever the JSON was printed, and non-zero only on
a usage error (2) or a crash (1).

  --call get     {"ok":true,"user":{"id":1,"name":"..","tags":[..]}}
                 {"ok":false,"code":"NOT_FOUND","details":".."}
  --call create  same shape as get
  --gzip         requests are gzip-compressed (grpc-encoding: gzip) and gzip
                 responses accepted
  --call list    {"ok":true,"users":[{..},..]}
                 {"ok":false,"code":"..","details":"..","users":[received so far]}
  --call loop    {"calls":N,"failures":M,"codes":{"OK":..,"UNAVAILABLE":..},
                  "errors":[first few "CODE: details"],"ready_transitions":R}
                 one channel, one RPC (--loop-call get|create) every
                 --interval-ms for --seconds; R counts how often the channel
                 (re)connected.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import grpc
import grpc_tools
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "user", "v1", "user.proto"))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="HOST:PORT, e.g. 127.0.0.1:50051")
    p.add_argument("--proto", default=DEFAULT_PROTO, help="user.proto (default: runtime/proto/user/v1/user.proto)")
    tls = p.add_argument_group("transport")
    tls.add_argument("--insecure", action="store_true", help="plaintext HTTP/2 (h2c) instead of TLS")
    tls.add_argument("--ca", help="PEM file of the CA(s) that sign the server certificate")
    tls.add_argument("--cert", help="client certificate chain (PEM), for mTLS")
    tls.add_argument("--key", help="client private key (PEM), for mTLS")
    tls.add_argument("--server-name", help="name to check the server certificate against (e.g. localhost)")
    p.add_argument("--call", required=True, choices=["get", "create", "list", "loop"])
    p.add_argument("--user-id", type=int, default=1, help="get: the id to ask for")
    p.add_argument("--name", default="peer", help="create: the new user's name")
    p.add_argument("--tag", action="append", default=[], help="create: a tag (repeatable)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="request metadata (repeatable)")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline of each RPC, seconds")
    p.add_argument("--gzip", action="store_true", help="compress requests with gzip (and accept gzip responses)")
    p.add_argument("--seconds", type=float, default=5.0, help="loop: how long to keep calling")
    p.add_argument("--interval-ms", type=float, default=50.0, help="loop: pause between calls")
    p.add_argument("--loop-call", choices=["get", "create"], default="get", help="loop: which RPC to repeat")
    args = p.parse_args(argv)
    if args.insecure and (args.ca or args.cert or args.key):
        p.error("--insecure excludes --ca/--cert/--key")
    if not args.insecure and not args.ca:
        p.error("give --ca FILE (TLS) or --insecure (plaintext)")
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    for kv in args.metadata:
        if "=" not in kv:
            p.error(f"--metadata wants KEY=VALUE, got {kv!r}")
    return args


def load_stubs(proto_path):
    """Generates <name>_pb2 and <name>_pb2_grpc from proto_path and imports them."""
    proto_path = os.path.abspath(proto_path)
    if not os.path.isfile(proto_path):
        raise SystemExit(f"proto not found: {proto_path}")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    out = tempfile.mkdtemp(prefix="grpcio-peer-")
    try:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{os.path.dirname(proto_path)}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.basename(proto_path),
        ])
        if rc != 0:
            raise SystemExit(f"grpc_tools.protoc failed on {proto_path} (exit {rc})")
        stem = os.path.splitext(os.path.basename(proto_path))[0]
        sys.path.insert(0, out)
        try:
            pb2 = importlib.import_module(f"{stem}_pb2")
            pb2_grpc = importlib.import_module(f"{stem}_pb2_grpc")
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return pb2, pb2_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def make_channel(args):
    compression = grpc.Compression.Gzip if args.gzip else None
    if args.insecure:
        return grpc.insecure_channel(args.target, compression=compression)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key) if args.key else None,
        certificate_chain=read(args.cert) if args.cert else None,
    )
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(args.target, creds, options=options, compression=compression)


def user_json(u):
    return {"id": u.id, "name": u.name, "tags": list(u.tags)}


def error_json(err):
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return {"ok": False, "code": code.name if code else "UNKNOWN", "details": details or ""}


def main(argv):
    args = parse_args(argv)
    pb2, pb2_grpc = load_stubs(args.proto)
    metadata = [tuple(kv.split("=", 1)) for kv in args.metadata]
    metadata = [(k.lower(), v) for k, v in metadata]

    channel = make_channel(args)
    stub = pb2_grpc.UserServiceStub(channel)

    def get():
        return stub.GetUser(pb2.GetUserRequest(user_id=args.user_id), timeout=args.timeout, metadata=metadata)

    def create():
        return stub.CreateUser(pb2.CreateUserRequest(name=args.name, tags=args.tag), timeout=args.timeout,
                               metadata=metadata)

    try:
        if args.call in ("get", "create"):
            try:
                user = (get if args.call == "get" else create)()
                result = {"ok": True, "user": user_json(user)}
            except grpc.RpcError as err:
                result = error_json(err)
        elif args.call == "list":
            users = []
            try:
                for u in stub.ListUsers(pb2.ListUsersRequest(), timeout=args.timeout, metadata=metadata):
                    users.append(user_json(u))
                result = {"ok": True, "users": users}
            except grpc.RpcError as err:
                result = dict(error_json(err), users=users)
        else:
            result = run_loop(args, channel, get if args.loop_call == "get" else create)
    finally:
        channel.close()
    print(json.dumps(result), flush=True)
    return 0


def run_loop(args, channel, call):
    ready = {"n": 0}
    lock = threading.Lock()

    def on_state(state):
        if state == grpc.ChannelConnectivity.READY:
            with lock:
                ready["n"] += 1

    channel.subscribe(on_state, try_to_connect=True)
    calls, failures, codes, errors = 0, 0, {}, []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        calls += 1
        try:
            call()
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as err:
            failures += 1
            e = error_json(err)
            codes[e["code"]] = codes.get(e["code"], 0) + 1
            if len(errors) < 5:
                errors.append(f'{e["code"]}: {e["details"]}')
        time.sleep(args.interval_ms / 1000.0)
    channel.unsubscribe(on_state)
    with lock:
        transitions = ready["n"]
    return {"calls": calls, "failures": failures, "codes": codes, "errors": errors,
            "ready_transitions": transitions}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
