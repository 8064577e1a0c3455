/**
 * Throughput baseline: a bare Bun.serve TLS endpoint (same certificate and key
 * as the relayctl server under test) that answers 200 to everything.
 * Usage: bun bench/bare-server.ts CERT KEY PORT   (listens on 127.0.0.1 only)
 */
import { readFileSync } from "node:fs";

const [cert, key, port] = process.argv.slice(2);
if (!cert || !key || !port) throw new Error("usage: bare-server.ts CERT KEY PORT");
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(port),
  tls: { cert: readFileSync(cert, "utf8"), key: readFileSync(key, "utf8") },
  fetch: () => new Response('{"ok":true}\n', { headers: { "content-type": "application/json" } }),
});
console.log(`listening ${server.port}`);
process.once("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});
