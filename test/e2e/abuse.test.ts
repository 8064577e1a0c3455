/**
 * Hardening, round two, against the compiled server: strangers cannot lock a
 * client out, the disk stays bounded under renewals and floods, special
 * addresses stay special under wide allow lists, and a certificate reload
 * never leaves the port without a listener.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateSelfSigned } from "../../src/lib/tls.ts";
import { requireE2E } from "./harness.ts";
import { addClient, apiCaller, relayctl, stage, tokenOf, type Stage } from "./relayctl.ts";

const enabled = requireE2E();

/** Bytes of every file in a directory (state.db, its WAL and shm, status.json, ...). */
function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((n, f) => {
    const st = statSync(join(dir, f));
    return st.isFile() ? n + st.size : n;
  }, 0);
}

describe.if(enabled)("abuse and limits", () => {
  let s: Stage;
  let api: ReturnType<typeof apiCaller>;
  beforeAll(async () => {
    s = await stage({
      prefix: "rcab",
      // The test talks from the bridge address, a trusted proxy: X-Forwarded-For names the client.
      prepare: async (st) => st.writeConfig({ trusted_proxies: ["198.18.0.1/32"], renewals_per_minute: 0 }),
    });
    api = apiCaller(s.url, s.stateDir);
  }, 90_000);
  afterAll(async () => s?.cleanup());

  const post = (token: string, from: string, body?: unknown) =>
    api("/v1/lease", { method: "POST", token, headers: { "x-forwarded-for": from, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  const token = async (name: string, extra: string[] = []): Promise<string> => tokenOf(await addClient(s.config, name, extra));

  test("strangers behind the same proxy cannot lock a client out; a valid token from a throttled source still works", async () => {
    const nas = await token("nas");
    const bad = `${nas.slice(0, 17)}${"A".repeat(43)}`;
    const codes: number[] = [];
    for (let i = 0; i < 15; i++) codes.push((await post(bad, "192.0.2.66")).status);
    expect(codes.slice(0, 10)).toEqual(Array(10).fill(401));
    expect(codes.slice(10)).toEqual(Array(5).fill(429));
    // Another client behind the same proxy is not affected at all.
    expect((await post(nas, "192.0.2.10")).status).toBe(200);
    // Not even the throttled source is refused a valid token.
    expect((await post(nas, "192.0.2.66")).status).toBe(200);
    expect((await post(bad, "192.0.2.11")).status).toBe(401);
    // IPv6 sources are one subscriber per /64: rotating addresses does not reset the count.
    const v6: number[] = [];
    for (let i = 1; i <= 12; i++) v6.push((await post(bad, `2001:db8:9:9::${i.toString(16)}`)).status);
    expect(v6.slice(10)).toEqual([429, 429]);
  }, 60_000);

  test("special addresses stay special under wide allow lists; an allow entry inside the range admits them", async () => {
    const wide = await token("wide", ["--allow", "0.0.0.0/0", "--allow", "::/0"]);
    const halves = await token("halves", ["--allow", "0.0.0.0/1", "--allow", "128.0.0.0/1"]);
    for (const ip of ["127.0.0.1", "0.0.0.0", "224.0.0.1", "169.254.1.1", "255.255.255.255", "::1", "fe80::1", "ff02::1", "::"]) {
      const r = await post(wide, "192.0.2.20", { ip });
      expect({ ip, status: r.status }).toEqual({ ip, status: 403 });
    }
    expect((await post(halves, "192.0.2.21", { ip: "127.0.0.1" })).status).toBe(403);
    const lo = await token("lo", ["--allow", "127.0.0.1/32"]);
    expect((await post(lo, "192.0.2.22", { ip: "127.0.0.1" })).status).toBe(200);
    expect((await api("/v1/lease", { method: "DELETE", token: lo, headers: { "x-forwarded-for": "192.0.2.22" } })).status).toBe(200);
    expect(s.mapEntries()).not.toContain("127.0.0.1 OK");
  }, 60_000);

  test("bounded disk: 20,000 plain renewals grow state_dir by less than 100 KB", async () => {
    const tok = await token("busy");
    expect((await post(tok, "192.0.2.30")).status).toBe(200);
    await Bun.sleep(11_000); // one checkpoint interval: start from a folded WAL
    const before = dirBytes(s.stateDir);
    const t0 = performance.now();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < 20_000) {
        next++;
        const r = await post(tok, "192.0.2.30");
        if (r.status !== 200) throw new Error(`renewal answered ${r.status}`);
        await r.arrayBuffer();
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    const secs = (performance.now() - t0) / 1000;
    await Bun.sleep(11_000);
    const grown = dirBytes(s.stateDir) - before;
    console.log(`20,000 plain renewals in ${secs.toFixed(1)} s: state_dir grew by ${grown} bytes`);
    expect(grown).toBeLessThan(100 * 1024);
    const list = JSON.parse((await relayctl(["server", "list", "--json", "--config", s.config])).stdout);
    expect(list.clients.find((c: { name: string }) => c.name === "busy").leases).toHaveLength(1);
    const log = JSON.parse((await relayctl(["server", "log", "--json", "--client", "busy", "--config", s.config])).stdout);
    expect(log.events.map((e: { event: string }) => e.event)).toEqual(["add", "grant"]);
  }, 180_000);

  test("bounded disk: 3,000 refused requests from 3,000 sources grow state_dir by less than 256 KB; server log still says who, from where, how often", async () => {
    await Bun.sleep(11_000);
    const before = dirBytes(s.stateDir);
    const bad = `0123456789abcdef.${"B".repeat(43)}`;
    for (let i = 0; i < 3000; i += 50) {
      await Promise.all(Array.from({ length: 50 }, (_, k) => post(bad, `2001:db8:${(i + k + 1).toString(16)}::1`).then((r) => r.arrayBuffer())));
    }
    await Bun.sleep(11_000);
    const grown = dirBytes(s.stateDir) - before;
    console.log(`3,000 refusals from 3,000 sources: state_dir grew by ${grown} bytes`);
    expect(grown).toBeLessThan(256 * 1024);
    const log = JSON.parse((await relayctl(["server", "log", "--json", "--since", "5m", "--config", s.config])).stdout);
    type Ev = { event: string; source: string | null; detail: string; count: number };
    // Rows of this flood: one per source up to the per-minute cap, then summary rows for the rest.
    const flood = (log.events as Ev[]).filter((e) => e.event === "refuse" && (/^2001:db8:[0-9a-f]+::1$/.test(e.source ?? "") || /unrecorded/.test(e.detail)));
    expect(flood.length).toBeGreaterThan(0);
    expect(flood.length).toBeLessThan(200);
    expect(flood[0]!.detail).toContain("unauthorized");
    expect(flood.reduce((n, e) => n + e.count, 0)).toBe(3000);
  }, 120_000);

  test("a certificate reload keeps the port served throughout; a failed reload keeps the old listener", async () => {
    const certPath = join(s.tmp.path, "cert.pem");
    const keyPath = join(s.tmp.path, "key.pem");
    const first = generateSelfSigned({ hosts: ["198.18.0.1"] });
    writeFileSync(certPath, first.certPem);
    writeFileSync(keyPath, first.keyPem, { mode: 0o600 });
    s.writeConfig({ trusted_proxies: ["198.18.0.1/32"], renewals_per_minute: 0, tls_cert: certPath, tls_key: keyPath });
    await s.server!.stop();
    await s.start();
    const healthz = async (): Promise<number> => {
      try {
        return (await fetch(`${s.url}/healthz`, { tls: { rejectUnauthorized: false }, keepalive: false } as RequestInit)).status;
      } catch {
        return 0;
      }
    };
    let stop = false;
    const seen: number[] = [];
    const prober = (async () => {
      for (let i = 0; i < 2000 && !stop; i++) seen.push(await healthz());
    })();
    // Another process trying to take the port during the reload never gets it.
    const port = Number(new URL(s.url).port);
    const grabs: string[] = [];
    const grabber = (async () => {
      for (let i = 0; i < 200 && !stop; i++) {
        try {
          Bun.listen({ hostname: "198.18.0.1", port, socket: { data() {} } }).stop(true);
          grabs.push("bound");
        } catch {
          grabs.push("refused");
        }
        await Bun.sleep(5);
      }
    })();
    const second = generateSelfSigned({ hosts: ["198.18.0.1"] });
    writeFileSync(certPath, second.certPem);
    writeFileSync(keyPath, second.keyPem, { mode: 0o600 });
    process.kill(s.server!.pid, "SIGHUP");
    const deadline = Date.now() + 10_000;
    while (!s.server!.stderr().includes("pin is now") && Date.now() < deadline) await Bun.sleep(50);
    await Bun.sleep(500);
    stop = true;
    await prober;
    await grabber;
    expect(s.server!.stderr()).toContain("pin is now");
    expect(seen.length).toBeGreaterThan(5);
    expect(grabs.length).toBeGreaterThan(5);
    expect(grabs.filter((g) => g !== "refused")).toEqual([]);
    // A connection still queued on the old socket at the instant it closes is
    // reset by the kernel (unless net.ipv4.tcp_migrate_req = 1 moves it to the
    // new listener); every other one is served. Clients retry such a reset.
    expect(seen.filter((c) => c !== 200).length).toBeLessThanOrEqual(1);
    // A broken certificate: the reload fails, says so, and the old listener keeps serving.
    writeFileSync(certPath, "not a certificate\n");
    process.kill(s.server!.pid, "SIGHUP");
    const until = Date.now() + 10_000;
    while (!s.server!.stderr().includes("reload failed") && Date.now() < until) await Bun.sleep(50);
    expect(s.server!.stderr()).toContain("reload failed, keeping the running configuration");
    expect(await healthz()).toBe(200);
  }, 90_000);
});
