#!/usr/bin/env node
// A real browser as a gRPC-Web peer: headless Chromium (Debian `chromium`),
// driven by playwright-core, opens grpc_web_page.html served from its own
// origin (http://127.0.0.1:PAGE_PORT) and calls the service at --target, a
// different origin, so the browser applies CORS as it would for a web app.
//
// Usage:
//   node browser_client.mjs --target http://127.0.0.1:PORT --page-port N
//        [--stream-repeat 1] [--stream-interval-ms 0] [--timeout-ms 60000]
//        [--screenshot out.png] [--chromium /usr/bin/chromium]
//
// Prints one JSON line: {"origin":"http://127.0.0.1:N","result":{get,notFound,stream},
// "console":[...]} where each call is what the page saw (grpcStatus, user,
// messages, arrival times) or {"error":"TypeError: Failed to fetch"}
// when the browser blocked it. Exit 0 once printed; 2 usage; 1 crash.

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  process.stderr.write(`browser_client: ${msg}\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      target: { type: "string" },
      "page-port": { type: "string" },
      "stream-repeat": { type: "string", default: "1" },
      "stream-interval-ms": { type: "string", default: "0" },
      "timeout-ms": { type: "string", default: "60000" },
      screenshot: { type: "string" },
      chromium: { type: "string", default: "/usr/bin/chromium" },
    },
    strict: true,
  }).values;
} catch (e) {
  usage(e.message);
}
const target = args.target ?? usage("--target is required");
const pagePort = Number(args["page-port"] ?? usage("--page-port is required"));
const page = readFileSync(join(here, "grpc_web_page.html"));

async function main() {
  const server = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(pagePort, "127.0.0.1", resolve);
  });
  const browser = await chromium.launch({
    executablePath: args.chromium,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
    const tab = await context.newPage();
    const console = [];
    tab.on("console", (m) => console.push(`${m.type()}: ${m.text()}`));
    const origin = `http://127.0.0.1:${pagePort}`;
    await tab.goto(`${origin}/`);
    const result = await tab.evaluate(
      ([t, repeat, interval, timeout]) => window.runCalls(t, repeat, interval, timeout),
      [target, Number(args["stream-repeat"]), Number(args["stream-interval-ms"]), Number(args["timeout-ms"])],
    );
    if (args.screenshot) await tab.screenshot({ path: args.screenshot, fullPage: true });
    process.stdout.write(JSON.stringify({ origin, result, console }) + "\n");
  } finally {
    await browser.close();
    server.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`browser_client: ${e?.stack ?? e}\n`);
    process.exit(1);
  },
);
