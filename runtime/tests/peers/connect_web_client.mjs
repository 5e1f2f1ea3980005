#!/usr/bin/env node
// A real gRPC-Web peer for grpc-runtime's integration tests: the browser
// client @connectrpc/connect-web (over Node's global fetch, HTTP/1.1), or
// for comparison @connectrpc/connect-node's gRPC-Web / gRPC transports.
//
// Message and service types are generated at start-up from the proto with
// protoc-gen-es (v2) through `buf generate` (both from node_modules, no
// network), into a temporary directory removed on exit.
//
// Usage:
//   node connect_web_client.mjs --base-url http://127.0.0.1:PORT
//        [--calls get,create,list] [--user-id 1] [--name NAME] [--tag T]...
//        [--origin http://app.example] [--header 'k: v']...
//        [--transport web|node-grpcweb|node-grpc] [--http-version 1.1|2]
//        [--json] [--timeout-ms 5000] [--proto PATH] [--proto-root DIR] [--strict]
//        [--list-repeat N] [--list-interval-ms MS]
//        [--loop-seconds S] [--interval-ms MS]   (calls: loop)
//
// Prints one JSON line on stdout:
//   {"transport":"web","baseUrl":"..","origin":"..",
//    "get":   {"ok":true,"user":{"id":1,"name":"..","tags":[]},"headers":{..}},
//    "create":{"ok":true,"user":{..},"headers":{..}},
//    "list":  {"ok":true,"users":[{..},..],"arrivalsMs":[..],"headers":{..}}}
// (arrivalsMs: when each streamed message arrived, ms after the call began)
//    "loop":  {"ok":true,"calls":N,"failures":0,"errors":[..]}
// (GetUser over and over for --loop-seconds, --interval-ms apart; ok when
// no call failed; errors holds the first 10 failures)
// a failed call is {"ok":false,"code":"NotFound","codeNumber":5,
//                   "message":"..","metadata":{..}}
// (code is the Connect Code name; codeNumber the gRPC status number;
// headers are the response headers, lower-case; metadata is the error's
// headers and trailers). Exit 0 once the JSON is printed, whatever the RPCs
// returned, unless --strict and a call failed (exit 1); usage error 2,
// crash 1.

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  createGrpcTransport as createNodeGrpcTransport,
  createGrpcWebTransport as createNodeGrpcWebTransport,
} from "@connectrpc/connect-node";

const here = dirname(fileURLToPath(import.meta.url));
const defaultProto = resolve(here, "..", "..", "proto", "user", "v1", "user.proto");

function usage(msg) {
  process.stderr.write(`connect_web_client: ${msg}\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      "base-url": { type: "string" },
      calls: { type: "string", default: "get,create,list" },
      "user-id": { type: "string", default: "1" },
      name: { type: "string", default: "connect-web" },
      tag: { type: "string", multiple: true, default: [] },
      origin: { type: "string" },
      header: { type: "string", multiple: true, default: [] },
      transport: { type: "string", default: "web" },
      "http-version": { type: "string" },
      json: { type: "boolean", default: false },
      "timeout-ms": { type: "string", default: "5000" },
      proto: { type: "string", default: defaultProto },
      "proto-root": { type: "string" },
      service: { type: "string", default: "user.v1.UserService" },
      strict: { type: "boolean", default: false },
      "list-repeat": { type: "string", default: "0" },
      "list-interval-ms": { type: "string", default: "0" },
      "loop-seconds": { type: "string", default: "10" },
      "interval-ms": { type: "string", default: "20" },
    },
    strict: true,
  }).values;
} catch (e) {
  usage(e.message);
}
const baseUrl = args["base-url"] ?? usage("--base-url is required");
const calls = args.calls.split(",").map((c) => c.trim()).filter(Boolean);
for (const c of calls) if (!["get", "create", "list", "loop"].includes(c)) usage(`unknown call ${c}`);
if (!["web", "node-grpcweb", "node-grpc"].includes(args.transport)) usage(`unknown transport ${args.transport}`);
const httpVersion = args["http-version"] ?? (args.transport === "node-grpc" ? "2" : "1.1");
if (!["1.1", "2"].includes(httpVersion)) usage(`--http-version is 1.1 or 2`);
if (args.transport === "web" && args["http-version"]) usage("--http-version applies to node-* transports (fetch picks HTTP/1.1)");
if (args.transport === "node-grpc" && httpVersion !== "2") usage("gRPC needs HTTP/2");
const timeoutMs = Number(args["timeout-ms"]);
const extraHeaders = args.header.map((h) => {
  const i = h.indexOf(":");
  if (i <= 0) usage(`--header wants 'name: value', got ${h}`);
  return [h.slice(0, i).trim(), h.slice(i + 1).trim()];
});

// --- code generation -------------------------------------------------------

function bufBinary() {
  const pkg = {
    "linux x64": "buf-linux-x64",
    "linux arm64": "buf-linux-aarch64",
    "darwin x64": "buf-darwin-x64",
    "darwin arm64": "buf-darwin-arm64",
  }[`${process.platform} ${process.arch}`];
  const native = pkg && join(here, "node_modules", "@bufbuild", pkg, "bin", "buf");
  return native && existsSync(native) ? native : join(here, "node_modules", ".bin", "buf");
}

function findPbFiles(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...findPbFiles(p));
    else if (e.name.endsWith("_pb.js")) out.push(p);
  }
  return out;
}

async function generate(work) {
  const proto = resolve(args.proto);
  if (!existsSync(proto)) throw new Error(`proto not found: ${proto}`);
  const plugin = join(here, "node_modules", "@bufbuild", "protoc-gen-es", "bin", "protoc-gen-es");
  if (!existsSync(plugin)) throw new Error(`${plugin} missing: run scripts/install-tools.sh`);
  const gen = join(work, "gen");
  const template = JSON.stringify({
    version: "v2",
    plugins: [{ local: [process.execPath, plugin], out: gen, opt: ["target=js"] }],
  });
  const input = args["proto-root"] ? [resolve(args["proto-root"]), "--path", proto] : [proto];
  execFileSync(bufBinary(), ["generate", ...input, "--template", template], {
    cwd: work,
    stdio: ["ignore", "ignore", "pipe"],
  });
  // Generated code imports @bufbuild/protobuf: resolve it from our node_modules.
  symlinkSync(join(here, "node_modules"), join(work, "node_modules"), "dir");
  for (const f of findPbFiles(gen)) {
    const mod = await import(pathToFileURL(f).href);
    for (const v of Object.values(mod)) {
      if (v?.kind === "service" && v.typeName === args.service) return v;
    }
  }
  throw new Error(`service ${args.service} not found in ${proto}`);
}

// --- calls -----------------------------------------------------------------

const headersOf = (h) => Object.fromEntries([...(h ?? new Headers()).entries()]);
const int64 = (v) => (Number.isSafeInteger(Number(v)) ? Number(v) : String(v));
const userJson = (u) => ({ id: int64(u.id), name: u.name, tags: [...u.tags] });

function errorJson(e) {
  const err = ConnectError.from(e);
  const out = { ok: false, code: Code[err.code], codeNumber: err.code, message: err.rawMessage };
  out.metadata = headersOf(err.metadata);
  // Transport failures (e.g. "fetch failed") wrap the socket error: report the
  // innermost cause, preferring its errno code (ECONNREFUSED, ECONNRESET, ...).
  let c = err.cause;
  while (c?.cause) c = c.cause;
  if (c) out.cause = String(c.code ?? c.message ?? c);
  return out;
}

async function main() {
  const work = mkdtempSync(join(tmpdir(), "connect-peer-"));
  try {
    const service = await generate(work);
    const seen = {};
    const interceptors = [
      (next) => async (req) => {
        if (args.origin) req.header.set("Origin", args.origin);
        for (const [k, v] of extraHeaders) req.header.append(k, v);
        const res = await next(req);
        seen[req.method.name] = res.header;
        return res;
      },
    ];
    const useBinaryFormat = !args.json;
    let transport;
    if (args.transport === "web") {
      transport = createGrpcWebTransport({ baseUrl, useBinaryFormat, interceptors });
    } else if (args.transport === "node-grpcweb") {
      transport = createNodeGrpcWebTransport({ baseUrl, httpVersion, useBinaryFormat, interceptors });
    } else {
      transport = createNodeGrpcTransport({ baseUrl, httpVersion, useBinaryFormat, interceptors });
    }
    const client = createClient(service, transport);
    const result = { transport: args.transport, baseUrl };
    if (args.origin) result.origin = args.origin;
    for (const call of calls) {
      try {
        if (call === "loop") {
          const end = Date.now() + Number(args["loop-seconds"]) * 1000;
          const pause = Number(args["interval-ms"]);
          const out = { calls: 0, failures: 0, errors: [] };
          while (Date.now() < end) {
            out.calls += 1;
            try {
              await client.getUser({ userId: BigInt(args["user-id"]) }, { timeoutMs });
            } catch (e) {
              out.failures += 1;
              if (out.errors.length < 10) out.errors.push(errorJson(e));
            }
            await new Promise((r) => setTimeout(r, pause));
          }
          result.loop = { ok: out.failures === 0, ...out };
        } else if (call === "get") {
          const u = await client.getUser({ userId: BigInt(args["user-id"]) }, { timeoutMs });
          result.get = { ok: true, user: userJson(u), headers: headersOf(seen.GetUser) };
        } else if (call === "create") {
          const u = await client.createUser({ name: args.name, tags: args.tag }, { timeoutMs });
          result.create = { ok: true, user: userJson(u), headers: headersOf(seen.CreateUser) };
        } else {
          const users = [];
          const arrivalsMs = [];
          const started = Date.now();
          const request = { repeat: Number(args["list-repeat"]), intervalMs: Number(args["list-interval-ms"]) };
          try {
            for await (const u of client.listUsers(request, { timeoutMs })) {
              users.push(userJson(u));
              arrivalsMs.push(Date.now() - started);
            }
          } catch (e) {
            result.list = { ...errorJson(e), users, arrivalsMs };
            continue;
          }
          result.list = { ok: true, users, arrivalsMs, headers: headersOf(seen.ListUsers) };
        }
      } catch (e) {
        result[call] = errorJson(e);
      }
    }
    process.stdout.write(JSON.stringify(result) + "\n");
    return calls.every((c) => result[c]?.ok) || !args.strict ? 0 : 1;
  } finally {
    try {
      unlinkSync(join(work, "node_modules"));
    } catch {}
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`connect_web_client: ${e?.stack ?? e}\n`);
    if (e?.stderr) process.stderr.write(String(e.stderr));
    process.exit(1);
  },
);
