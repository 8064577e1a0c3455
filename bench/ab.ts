/**
 * A/B of server builds: `bun bench/ab.ts OLD_BINARY NEW_BINARY` starts each
 * over its own seeded state (10,000 leases) and runs the throughput figure's
 * wrk load (one token, same address, 50 keep-alive connections) against them
 * in turn, AB_ROUNDS times (first round is warm-up), AB_SECONDS each; prints
 * server CPU µs per renewal and req/s, medians. For trying a change on a
 * shared machine, where only interleaved runs compare fairly.
 */
import { join } from "node:path";
import { benchAddress, cpuMsOf, median, removeScratch, scratch, seedState, stopPid, toolPath, track, writeServerConfig } from "./lib.ts";
import { run } from "../test/e2e/harness.ts";

const bins = process.argv.slice(2);
const servers: { bin: string; url: string; pid: number; env: Record<string, string> }[] = [];
for (const bin of bins) {
  const dir = scratch("ab");
  const cfg = writeServerConfig(dir);
  const seeded = seedState(cfg.stateDir, { clients: 10_000, leases: true, keepTokens: 1 });
  const proc = Bun.spawn([bin, "server", "--config", cfg.config], { stdout: Bun.file(join(dir, "log")), stderr: Bun.file(join(dir, "log")) });
  track(proc.pid, `relayctl server (${bin})`);
  const url = `https://127.0.0.1:${cfg.port}`;
  for (let i = 0; i < 400; i++) {
    try {
      const r = await fetch(`${url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit);
      await r.text();
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    await Bun.sleep(25);
  }
  servers.push({ bin, url, pid: proc.pid, env: { BENCH_TOKEN: seeded.tokens[0]!, BENCH_BODY: JSON.stringify({ ip: benchAddress(0) }) } });
}
const res: Record<string, { cpu: number[]; rps: number[] }> = {};
const secs = Number(process.env.AB_SECONDS ?? 3);
for (let round = 0; round < Number(process.env.AB_ROUNDS ?? 4); round++) {
  for (const s of servers) {
    const c0 = cpuMsOf(s.pid);
    const r = await run([toolPath("wrk"), "-t1", "-c50", `-d${secs}s`, "--timeout", "5s", "-s", join(import.meta.dir, "renew.lua"), `${s.url}/v1/lease`], { env: s.env, timeoutMs: 60_000 });
    const c1 = cpuMsOf(s.pid);
    const o = JSON.parse(r.stdout.split("\n").find((l) => l.startsWith("BENCH_JSON "))!.slice(11));
    if (round === 0) continue;
    (res[s.bin] ??= { cpu: [], rps: [] }).cpu.push(((c1 - c0) * 1000) / o.requests);
    res[s.bin]!.rps.push(o.requests / (o.duration_us / 1e6));
    if (o.non2xx) console.log("non2xx", o.non2xx);
  }
}
for (const [b, v] of Object.entries(res)) console.log(b, "cpu µs/req", median(v.cpu).toFixed(1), v.cpu.map((x) => x.toFixed(1)).join(" "), "rps", median(v.rps).toFixed(0));
for (const s of servers) await stopPid(s.pid);
removeScratch();
