/**
 * Throughput baseline: a bare Bun.serve endpoint (TLS with the same
 * certificate and key as the relayctl server under test) that answers 200 to
 * everything. Flags, for the profile's split of a renewal:
 *   plain   plain HTTP instead of TLS
 *   stream  read the JSON body as relayctl's readJsonBody does (getReader loop, Buffer.concat, JSON.parse)
 *   text    read the JSON body with `await req.text()` + JSON.parse
 * Usage: bun bench/bare-server.ts CERT KEY PORT [flag,flag]   (listens on 127.0.0.1 only)
 */
import { readFileSync } from "node:fs";

const [cert, key, port, flagArg] = process.argv.slice(2);
if (!cert || !key || !port) throw new Error("usage: bare-server.ts CERT KEY PORT [plain,stream,text]");
const flags = new Set((flagArg ?? "").split(",").filter(Boolean));
const ok = () => new Response('{"ok":true}\n', { headers: { "content-type": "application/json" } });
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(port),
  ...(flags.has("plain") ? {} : { tls: { cert: readFileSync(cert, "utf8"), key: readFileSync(key, "utf8") } }),
  fetch: flags.has("stream")
    ? async (req) => {
        const chunks: Uint8Array[] = [];
        if (req.body) {
          const reader = req.body.getReader();
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            chunks.push(value);
          }
        }
        if (chunks.length) JSON.parse(Buffer.concat(chunks).toString("utf8"));
        return ok();
      }
    : flags.has("text")
      ? async (req) => {
          const t = await req.text();
          if (t) JSON.parse(t);
          return ok();
        }
      : ok,
});
console.log(`listening ${server.port}`);
process.once("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});
