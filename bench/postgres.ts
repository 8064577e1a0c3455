/**
 * Shared state (issue 13): renewal throughput and latency with the state in
 * PostgreSQL against SQLite in the same run (same seeded clients, same
 * server binary), and the time from a renewal answered by host A until
 * host B's lookup (its map) holds the new address.
 */
import { appendFileSync, mkdirSync, readFileSync } from "node:fs";
import { run } from "../test/e2e/harness.ts";
import { startCluster } from "../test/pgcluster.ts";
import { benchAddress, median, mmm, percentile, postLease, RELAYCTL, scratch, seedState, startServer, writeServerConfig, type BenchServer, type Row } from "./lib.ts";
import { wrk } from "./load.ts";

/** PostgreSQL against SQLite renewal throughput (one client and many), and host A to host B propagation, in one run. */
export async function benchPostgres(o: { leases: number; conns: number; seconds: number; rounds: number; samples: number }): Promise<{ rows: Row[]; details: string[] }> {
  const pg = await startCluster();
  try {
    const dirA = scratch("pga");
    const cfgA = writeServerConfig(dirA);
    const seeded = seedState(cfgA.stateDir, { clients: o.leases, leases: true, keepTokens: o.samples + 1 });
    const ip = benchAddress(0);
    const env = { BENCH_TOKEN: seeded.tokens[0]!, BENCH_BODY: JSON.stringify({ ip }) };
    // Many clients, each renewing its own address: what a real relay sees; one row lock per client.
    const many = async (srv: BenchServer): Promise<number> => {
      const tokens = seeded.tokens.slice(1);
      let done = 0;
      let failed = 0;
      const end = performance.now() + o.seconds * 1000;
      await Promise.all(
        Array.from({ length: o.conns }, async (_, w) => {
          for (let i = w; performance.now() < end; i += o.conns) {
            const k = i % tokens.length;
            const r = await postLease(srv, tokens[k]!, benchAddress(k + 1));
            if (r.status === 200) done++;
            else failed++;
          }
        }),
      );
      if (failed) throw new Error(`${failed} renewals failed`);
      return done / o.seconds;
    };
    const measure = async (url: string) => {
      await wrk(url, 1, o.conns, env); // warm-up
      const out = [];
      for (let i = 0; i < o.rounds; i++) out.push(await wrk(url, o.seconds, o.conns, env));
      return out;
    };

    // SQLite first, then the same state migrated into PostgreSQL.
    let s = await startServer(dirA, cfgA);
    const liteMany: number[] = [];
    const lite = await measure(`${s.url}/v1/lease`)
      .then(async (w) => {
        for (let i = 0; i < o.rounds; i++) liteMany.push(await many(s));
        return w;
      })
      .finally(() => s.stop());
    const mig = await run([RELAYCTL, "server", "migrate", "--to", pg.url, "--config", cfgA.config], { timeoutMs: 120_000 });
    if (mig.code !== 0) throw new Error(`migrate failed: ${mig.stderr}`);
    appendFileSync(cfgA.config, `database = ${JSON.stringify(pg.url)}\n`);
    s = await startServer(dirA, cfgA);
    const dirB = scratch("pgb");
    mkdirSync(dirB, { recursive: true });
    const cfgB = writeServerConfig(dirB);
    appendFileSync(cfgB.config, `database = ${JSON.stringify(pg.url)}\n`);
    const b = await startServer(dirB, cfgB);
    try {
      const shared = await measure(`${s.url}/v1/lease`);
      const sharedMany: number[] = [];
      for (let i = 0; i < o.rounds; i++) sharedMany.push(await many(s));
      // Propagation: each sample moves one client to an address no lease held, on A; B's map must follow.
      const lag: number[] = [];
      const answered: number[] = [];
      for (let i = 1; i <= o.samples; i++) {
        const addr = benchAddress(o.leases + i);
        // From the request to A: B learns of the commit while A still rebuilds its own map, so A's 200 is often later.
        const t0 = performance.now();
        const r = await postLease(s, seeded.tokens[i]!, addr);
        if (r.status !== 200) throw new Error(`renewal on A failed: HTTP ${r.status}`);
        answered.push(performance.now() - t0);
        for (;;) {
          if (readFileSync(b.mapPath, "utf8").includes(`\n${addr} OK\n`)) break;
          if (performance.now() - t0 > 10_000) throw new Error(`B's map never held ${addr}`);
          await Bun.sleep(1);
        }
        lag.push(performance.now() - t0);
      }
      const rps = (ws: { rps: number }[]) => ws.map((w) => w.rps);
      const p99 = (ws: { p99_us: number }[]) => ws.map((w) => w.p99_us / 1000);
      const errs = shared.reduce((n, w) => n + w.socket_errors + w.non2xx, 0);
      const r = median(rps(shared)) / median(rps(lite));
      return {
        rows: [
          {
            figure: `renewal throughput, state in PostgreSQL (unix socket) vs SQLite, ${o.leases.toLocaleString("en-US")} leases, ${o.conns} connections`,
            relayctl: `${mmm(rps(shared), "req/s", 0)}; p99 ${mmm(p99(shared), "ms")}${errs ? `; ${errs} errors` : ""}`,
            baseline: `SQLite ${mmm(rps(lite), "req/s", 0)}; p99 ${mmm(p99(lite), "ms")}`,
            ratio: `${r.toFixed(2)}×`,
            target: "report",
            verdict: "report",
          },
          {
            figure: `renewal throughput, ${seeded.tokens.length - 1} clients each renewing its own address, ${o.conns} concurrent requests, PostgreSQL vs SQLite`,
            relayctl: mmm(sharedMany, "req/s", 0),
            baseline: `SQLite ${mmm(liteMany, "req/s", 0)}`,
            ratio: `${(median(sharedMany) / median(liteMany)).toFixed(2)}×`,
            target: "report",
            verdict: "report",
          },
          {
            figure: "a new address renewed through host A until host B's lookup (map) holds it",
            relayctl: `p50 ${percentile(lag, 50).toFixed(0)} ms, p99 ${percentile(lag, 99).toFixed(0)} ms (max ${Math.max(...lag).toFixed(0)} ms, ${lag.length} samples)`,
            baseline: `A's own answer (its map holds it): p50 ${percentile(answered, 50).toFixed(0)} ms, p99 ${percentile(answered, 99).toFixed(0)} ms`,
            ratio: "-",
            target: "< 1 s",
            verdict: percentile(lag, 99) < 1000 ? "met" : "MISSED",
          },
        ],
        details: [
          `postgres: a private PostgreSQL cluster (initdb in a temp dir, unix socket only, fsync off), ${o.leases.toLocaleString("en-US")} seeded clients with a lease each in SQLite, wrk as for the throughput figure (${o.rounds} rounds of ${o.seconds} s after a warm-up) against that server; then \`relayctl server migrate --to\` and the same server restarted with \`database\`, wrk again. Propagation: a second server (host B, hash map) on the same database; ${o.samples} clients each move to a new address through host A, time from sending the request to A until B's map source holds the address (polled every ms; B rebuilds with postmap on a change notice), beside the time until A's own 200 (sent once A's map holds it). wrk renews one client, so under PostgreSQL every renewal waits for that client's row lock (two hosts renewing one client must not both grant): the figure is a one-client worst case. The many-client figure: ${o.conns} concurrent POST /v1/lease from this Bun process (fetch, certificate verified), each of ${o.samples} clients renewing its own seeded address, ${o.rounds} rounds of ${o.seconds} s per store.`,
        ],
      };
    } finally {
      await b.stop();
      await s.stop();
    }
  } finally {
    await pg.destroy();
  }
}
