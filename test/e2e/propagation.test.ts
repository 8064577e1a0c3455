/**
 * Issue 21: grant, release and revoke on one relay host reach the lookups of
 * the other two within 1 s, 20 times each, none lost. Three real
 * `relayctl server` processes (dist/relayctl) on one private PostgreSQL
 * cluster (unix socket), each with the policy lookup; the test asks each
 * host's policy socket directly, as Postfix would. The servers listen on
 * loopback; 198.18.x.y addresses are lease data only (never routed).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { freePort, requireE2E, tmpDir, type TmpDir } from "./harness.ts";
import { addClient, apiCaller, askPolicy as ask, relayctl, startServer, tokenOf, writeServerConfig, type ServerProc } from "./relayctl.ts";
import { postgresBinDir, startCluster, type PgCluster } from "../pgcluster.ts";

const enabled = requireE2E() && postgresBinDir() !== undefined;
const ROUNDS = 20;
const HOSTS = 3;

describe.if(enabled)("propagation across three relay hosts on one PostgreSQL", () => {
  let pg: PgCluster;
  let tmp: TmpDir;
  const hosts: { config: string; url: string; socket: string; stateDir: string; proc?: ServerProc }[] = [];

  beforeAll(async () => {
    pg = await startCluster();
    tmp = tmpDir("rprop");
    for (let i = 0; i < HOSTS; i++) {
      const dir = join(tmp.path, `h${i}`);
      const port = freePort();
      const url = `https://127.0.0.1:${port}`;
      const socket = join(dir, "policy");
      const stateDir = join(dir, "state");
      mkdirSync(dir, { recursive: true });
      const config = writeServerConfig(dir, { listen: `127.0.0.1:${port}`, public_url: url, state_dir: stateDir, lookup: "policy", policy_socket: socket, database: pg.url, renewals_per_minute: 0 });
      hosts.push({ config, url, socket, stateDir });
    }
    for (const h of hosts) h.proc = await startServer(h.config, h.url);
  }, 60_000);
  afterAll(async () => {
    for (const h of hosts) await h.proc?.stop();
    await pg?.destroy();
    tmp?.remove();
  });

  /** Waits until every host but `from` answers `want` for address; returns the slowest time, or throws after 1 s. */
  const reachesOthers = async (from: number, address: string, want: string, t0: number): Promise<number> => {
    let slowest = 0;
    for (let i = 0; i < HOSTS; i++) {
      if (i === from) continue;
      for (;;) {
        const action = await ask(hosts[i]!.socket, address);
        const took = performance.now() - t0;
        if (action === want) {
          slowest = Math.max(slowest, took);
          break;
        }
        if (took > 1_000) throw new Error(`host ${i} still answers ${action} for ${address} ${took.toFixed(0)} ms after the change on host ${from}`);
        await Bun.sleep(10);
      }
    }
    return slowest;
  };

  test(`grant, release and revoke, ${ROUNDS} times each, reach the other hosts' policy answers within 1 s`, async () => {
    const times = { grant: [] as number[], release: [] as number[], revoke: [] as number[] };
    for (let r = 0; r < ROUNDS; r++) {
      const from = r % HOSTS;
      const h = hosts[from]!;
      const name = `prop${r}`;
      const token = tokenOf(await addClient(h.config, name, ["--allow", "198.18.0.0/15"]));
      const api = apiCaller(h.url, h.stateDir);
      const address = `198.18.${100 + r}.${10 + r}`;
      const post = (method: string) => api("/v1/lease", { method, token, headers: { "content-type": "application/json" }, body: method === "POST" ? JSON.stringify({ ip: address }) : undefined });
      // Each change is made through host `from` and asked of the others.
      let t0 = performance.now();
      expect((await post("POST")).status).toBe(200);
      expect(await ask(h.socket, address)).toBe("OK");
      times.grant.push(await reachesOthers(from, address, "OK", t0));
      t0 = performance.now();
      expect((await post("DELETE")).status).toBe(200);
      times.release.push(await reachesOthers(from, address, "DUNNO", t0));
      // Granted again (through the next host), then revoked through this one.
      const next = hosts[(from + 1) % HOSTS]!;
      expect((await apiCaller(next.url, next.stateDir)("/v1/lease", { method: "POST", token, headers: { "content-type": "application/json" }, body: JSON.stringify({ ip: address }) })).status).toBe(200);
      await reachesOthers((from + 1) % HOSTS, address, "OK", performance.now());
      t0 = performance.now();
      const rv = await relayctl(["server", "revoke", name, "--config", h.config]);
      expect(rv.code).toBe(0);
      times.revoke.push(await reachesOthers(from, address, "DUNNO", t0));
    }
    const show = (xs: number[]) => `max ${Math.max(...xs).toFixed(0)} ms, median ${[...xs].sort((a, b) => a - b)[xs.length >> 1]!.toFixed(0)} ms`;
    console.log(`propagation to 2 other hosts, ${ROUNDS} each: grant ${show(times.grant)}; release ${show(times.release)}; revoke ${show(times.revoke)} (revoke includes the admin command's own run)`);
    for (const xs of Object.values(times)) expect(xs.length).toBe(ROUNDS);
    // None lost, none slow: the log, not the 5-minute reconcile, carried every change.
    for (const h of hosts) expect(h.proc!.stderr()).not.toContain("cannot refresh");
  }, 110_000);
});
