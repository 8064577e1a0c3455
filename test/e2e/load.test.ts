/**
 * Load: 1,000 enrolled clients renewing at once, and a server holding 10,000
 * leases. Clients are written into state.db before the server starts (enrolling
 * them one process at a time would take minutes); every request timed goes
 * through the compiled server's HTTPS API, and Postfix judges the result.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { StateStore } from "../../src/server/state.ts";
import { newToken } from "../../src/server/tokens.ts";
import { requireE2E } from "./harness.ts";
import { onHost, stage, type Stage } from "./relayctl.ts";
import { parseAllowList } from "../../src/server/allow.ts";

setDefaultTimeout(120_000);
const enabled = requireE2E();

/** 198.19.x.y: inside 198.18.0.0/15, never routed anywhere, only written into the map. */
const addressOf = (i: number): string => `198.19.${i >> 8}.${i & 255}`;

/** Adds clients (each allowed 198.18.0.0/15) straight into state, optionally with a live lease; returns their tokens. */
function seed(stateDir: string, from: number, count: number, withLease: boolean): string[] {
  const store = new StateStore(stateDir);
  const tokens: string[] = [];
  const now = Date.now();
  store.tx(() => {
    for (let i = from; i < from + count; i++) {
      const t = newToken();
      tokens.push(t.token);
      const name = `load${i}`;
      store.insertClient({ name, token_id: t.tokenId, token_hash: t.hash, ttl: null, allow: parseAllowList(JSON.stringify(["198.18.0.0/15"])), created_at: now, ipv6_prefix: null });
      if (withLease) store.upsertLease({ client: name, family: 4, ip: addressOf(i), granted_at: now, renewed_at: now, expires_at: now + 3_600_000, renewals: 0 });
    }
  });
  store.close();
  return tokens;
}

const percentile = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

describe.skipIf(!enabled)("load", () => {
  let s: Stage;
  let tokens: string[] = [];
  let ca: string;
  const post = (token: string, ip: string): Promise<Response> =>
    fetch(`${s.url}/v1/lease`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ ip }),
      tls: { ca, checkServerIdentity: () => undefined },
    } as RequestInit);
  const metric = async (name: string): Promise<number> => {
    const text = await (await fetch(`${s.url}/metrics`, { tls: { ca } } as RequestInit)).text();
    return Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
  };
  const rssMb = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${s.server!.pid}/status`, "utf8"))![1]) / 1024;

  beforeAll(async () => {
    s = await stage({
      prefix: "rcl",
      prepare: async (st) => {
        st.writeConfig({ metrics_allow: ["198.18.0.1/32"] });
        tokens = seed(st.stateDir, 0, 1000, false);
      },
    });
    ca = readFileSync(join(s.stateDir, "tls", "cert.pem"), "utf8");
  }, 180_000);

  afterAll(() => s?.cleanup());

  test("1,000 clients renewing at once: all answered, exactly 1,000 entries, few rebuilds", async () => {
    const before = await metric("relayctl_map_rebuild_duration_seconds_count");
    const t0 = performance.now();
    const latencies = await Promise.all(
      tokens.map(async (token, i) => {
        const start = performance.now();
        const r = await post(token, addressOf(i));
        expect(r.status).toBe(200);
        await r.arrayBuffer();
        return performance.now() - start;
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const rebuilds = (await metric("relayctl_map_rebuild_duration_seconds_count")) - before;
    latencies.sort((a, b) => a - b);
    console.log(
      `load: 1000 concurrent grants in ${seconds.toFixed(2)} s = ${(1000 / seconds).toFixed(0)} req/s; p50 ${percentile(latencies, 50).toFixed(0)} ms, p99 ${percentile(latencies, 99).toFixed(0)} ms; ${rebuilds} map rebuilds`,
    );
    const entries = s.mapEntries();
    expect(entries).toHaveLength(1000);
    expect(new Set(entries)).toEqual(new Set(tokens.map((_, i) => `${addressOf(i)} OK`)));
    expect(rebuilds).toBeLessThan(100);
    // The map was widened by exactly these; the test hosts still may not relay.
    expect(await s.relays(s.h1)).toBe(false);
  });

  test("10,000 leases: one renewal answers well under a second, memory stays bounded", async () => {
    await s.server!.stop();
    s.server = undefined;
    seed(s.stateDir, 1000, 9000, true);
    await s.start();
    expect(s.mapEntries()).toHaveLength(10_000);
    const t0 = performance.now();
    const r = await post(tokens[0]!, addressOf(0));
    const ms = performance.now() - t0;
    expect(r.status).toBe(200);
    expect(((await r.json()) as { event: string }).event).toBe("renew");
    console.log(`load: one renewal with 10,000 leases in ${ms.toFixed(1)} ms; server RSS ${rssMb().toFixed(0)} MB`);
    expect(ms).toBeLessThan(500);
    expect(rssMb()).toBeLessThan(200);
    const line = await s.enroll(s.h1, "h1");
    expect(line[0]).toBe("client");
    expect((await onHost(s.h1, ["client", "--config", s.cfg("h1")])).code).toBe(0);
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.relays(s.h2)).toBe(false);
  });
});
