/**
 * Bench-only: the least a compiled Bun program can do to renew, i.e. one
 * fetch POST /v1/lease over TLS trusting only the server's certificate, and
 * exit. Built with dist/relayctl's options and timed beside `relayctl client`
 * and curl: the part of the client's time that is Bun's own floor.
 * Usage: fetch-floor URL CA_PEM_FILE TOKEN_FILE BODY_FILE
 */
import { readFileSync } from "node:fs";

const [url, caFile, tokenFile, bodyFile] = process.argv.slice(2);
if (!url || !caFile || !tokenFile || !bodyFile) throw new Error("usage: fetch-floor URL CA TOKEN_FILE BODY_FILE");
const r = await fetch(url, {
  method: "POST",
  headers: { authorization: `Bearer ${readFileSync(tokenFile, "utf8").trim()}`, "content-type": "application/json" },
  body: readFileSync(bodyFile, "utf8"),
  tls: { ca: [readFileSync(caFile, "utf8")] },
} as RequestInit);
await r.text();
process.exit(r.status === 200 ? 0 : 1);
