/**
 * The pin (and, without one, CA verification) holds whatever the environment
 * says: with NODE_TLS_REJECT_UNAUTHORIZED=0 set, the compiled client still
 * refuses a server with another certificate and never sends it the token.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { certificatePin, generateSelfSigned } from "../../src/lib/tls.ts";
import { renderClientConfig } from "../../src/lib/config.ts";
import { run, tmpDir, type TmpDir } from "./harness.ts";
import { BIN, ensureBinary } from "./relayctl.ts";

const INSECURE = { NODE_TLS_REJECT_UNAUTHORIZED: "0" };
const TOKEN = "rl_secret-token-never-to-be-sent";

describe("pin checked with NODE_TLS_REJECT_UNAUTHORIZED=0", () => {
  const enrolled = generateSelfSigned({ hosts: ["127.0.0.1"] });
  const pin = certificatePin(enrolled.certPem);
  const requests: { path: string; authorization: string | null }[] = [];
  let fake: ReturnType<typeof Bun.serve>;
  let url: string;
  let tmp: TmpDir;

  beforeAll(async () => {
    await ensureBinary();
    tmp = tmpDir("relayctl-e2e-pin-");
    // An impostor: same address and name in its certificate, a different key.
    const other = generateSelfSigned({ hosts: ["127.0.0.1"] });
    fake = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: other.certPem, key: other.keyPem },
      fetch(req) {
        requests.push({ path: new URL(req.url).pathname, authorization: req.headers.get("authorization") });
        return Response.json({ client: "h1", ip: "127.0.0.1", ttl: 1200, leases: [], expires_at: new Date().toISOString() });
      },
    });
    url = `https://127.0.0.1:${fake.port}`;
  });
  afterAll(() => {
    fake?.stop(true);
    tmp?.remove();
  });

  const clientConfig = (name: string, extra: { pin?: string; serverCert?: string }): string => {
    const path = join(tmp.path, `${name}.toml`);
    writeFileSync(path, renderClientConfig({ server: url, name: "h1", token: TOKEN, ...extra }), { mode: 0o600 });
    return path;
  };
  const relayctl = (args: string[]) => run([BIN, ...args], { env: INSECURE });

  test("the fake server answers a plain request, so silence below means the client refused", async () => {
    const r = await fetch(`${url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit);
    expect(r.status).toBe(200);
    expect(requests.splice(0)).toEqual([{ path: "/healthz", authorization: null }]);
  });

  const cases: { name: string; args: () => string[]; message: string }[] = [
    { name: "client with pin and saved chain", args: () => ["client", "--config", clientConfig("saved", { pin, serverCert: enrolled.certPem })], message: `does not match the pinned ${pin}` },
    { name: "client with pin only", args: () => ["client", "--config", clientConfig("pinonly", { pin })], message: `does not match the pinned ${pin}` },
    { name: "client status with pin and saved chain", args: () => ["client", "status", "--config", clientConfig("status", { pin, serverCert: enrolled.certPem })], message: `does not match the pinned ${pin}` },
    { name: "client without pin (CA verification)", args: () => ["client", "--config", clientConfig("nopin", {})], message: "cannot verify the server certificate" },
    { name: "client enroll with pin", args: () => ["client", "enroll", url, "--name", "h1", "--token", TOKEN, "--pin", pin, "--config", join(tmp.path, "enroll.toml")], message: `does not match the pinned ${pin}` },
    { name: "client enroll without pin", args: () => ["client", "enroll", url, "--name", "h1", "--token", TOKEN, "--config", join(tmp.path, "enroll2.toml")], message: "cannot verify the server certificate" },
  ];
  for (const c of cases) {
    test(`${c.name}: exit 3, no request carries the token`, async () => {
      const r = await relayctl(c.args());
      expect(r.stderr).toContain(c.message);
      expect(r.code).toBe(3);
      expect(requests.filter((q) => q.authorization !== null)).toEqual([]);
      expect(requests.splice(0)).toEqual([]);
    });
  }
});
