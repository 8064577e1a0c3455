/**
 * Server under load: renewal throughput with wrk (vs a bare Bun.serve TLS
 * endpoint), 1,000 new addresses at once, and resident memory with
 * 0 / 10,000 / 100,000 leases. State is seeded straight into SQLite before
 * each server starts (the server rebuilds its map from state at start).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, run } from "../test/e2e/harness.ts";
import { benchAddress, BUN, median, memoryOf, mmm, postLease, ratio, scratch, seedState, startServer, stopPid, toolPath, track, writeServerConfig, type Row } from "./lib.ts";

interface WrkOut {
  requests: number;
  duration_us: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
  socket_errors: number;
  non2xx: number;
}

/** Runs wrk with bench/renew.lua against url; one parsed result. */
export async function wrk(url: string, seconds: number, conns: number, env: Record<string, string>): Promise<WrkOut & { rps: number }> {
  const lua = join(import.meta.dir, "renew.lua");
  // One wrk thread: on 2 cores it leaves one core to the server under test.
  const argv = [toolPath("wrk"), "-t1", `-c${conns}`, `-d${seconds}s`, "--timeout", "5s", "-s", lua, url];
  const r = await run(argv, { env, timeoutMs: (seconds + 30) * 1000 });
  const line = r.stdout.split("\n").find((l) => l.startsWith("BENCH_JSON "));
  if (r.code !== 0 || !line) throw new Error(`wrk failed (${r.code}): ${r.stderr}${r.stdout}`);
  const o = JSON.parse(line.slice("BENCH_JSON ".length)) as WrkOut;
  return { ...o, rps: o.requests / (o.duration_us / 1e6) };
}

async function startBare(certPath: string, keyPath: string): Promise<{ url: string; pid: number }> {
  const port = freePort();
  const p = Bun.spawn([BUN, join(import.meta.dir, "bare-server.ts"), certPath, keyPath, String(port)], { stdin: "ignore", stdout: "ignore", stderr: "inherit" });
  track(p.pid, "bare server");
  const url = `https://127.0.0.1:${port}`;
  for (let i = 0; i < 400; i++) {
    try {
      const r = await fetch(`${url}/v1/lease`, { tls: { rejectUnauthorized: false } } as RequestInit);
      await r.text();
      if (r.status === 200) return { url, pid: p.pid };
    } catch {
      // not yet
    }
    await Bun.sleep(25);
  }
  await stopPid(p.pid);
  throw new Error("bare server did not start");
}

export async function benchThroughput(o: { leases: number; conns: number; seconds: number; rounds: number }): Promise<{ rows: Row[]; details: string[]; rss10kAfterLoadMb: number }> {
  const dir = scratch("tput");
  const cfg = writeServerConfig(dir);
  // 10,000 clients with a live lease each; the first one is the renewing client.
  const seeded = seedState(cfg.stateDir, { clients: o.leases, leases: true, keepTokens: 1 });
  const s = await startServer(dir, cfg);
  const bare = await startBare(s.certPath, join(cfg.stateDir, "tls", "key.pem"));
  try {
    const ip = benchAddress(0);
    const env = { BENCH_TOKEN: seeded.tokens[0]!, BENCH_BODY: JSON.stringify({ ip }) };
    const check = await postLease(s, seeded.tokens[0]!, ip);
    if (check.status !== 200 || check.body.event !== "renew") throw new Error(`renewal check failed: HTTP ${check.status} ${JSON.stringify(check.body)}`);
    const mine: (WrkOut & { rps: number })[] = [];
    const base: (WrkOut & { rps: number })[] = [];
    await wrk(`${s.url}/v1/lease`, 1, o.conns, env); // warm-up
    await wrk(`${bare.url}/v1/lease`, 1, o.conns, env);
    for (let i = 0; i < o.rounds; i++) {
      mine.push(await wrk(`${s.url}/v1/lease`, o.seconds, o.conns, env));
      base.push(await wrk(`${bare.url}/v1/lease`, o.seconds, o.conns, env));
    }
    const rssAfter = memoryOf(s.pid).rssMb;
    const errs = mine.reduce((n, w) => n + w.socket_errors + w.non2xx, 0);
    const rps = mine.map((w) => w.rps);
    const brps = base.map((w) => w.rps);
    const p99 = mine.map((w) => w.p99_us / 1000);
    const r = median(rps) / median(brps);
    const ok = r >= 0.5 && median(p99) < 50 && errs === 0;
    return {
      rss10kAfterLoadMb: rssAfter,
      rows: [
        {
          figure: `renewal throughput, same address, ${o.leases.toLocaleString("en-US")} leases, ${o.conns} keep-alive connections`,
          relayctl: `${mmm(rps, "req/s", 0)}; p99 ${mmm(p99, "ms")}${errs ? `; ${errs} errors` : ""}`,
          baseline: `bare Bun.serve TLS ${mmm(brps, "req/s", 0)}; p99 ${mmm(base.map((w) => w.p99_us / 1000), "ms")}`,
          ratio: ratio(median(rps), median(brps)),
          target: "≥ 0.5×, p99 < 50 ms",
          verdict: ok ? "met" : "MISSED",
        },
      ],
      details: [
        `throughput: wrk -t1 -c${o.conns} -d${o.seconds}s with bench/renew.lua (POST /v1/lease, {"ip"} body, Bearer token, keep-alive), ${o.rounds} rounds alternating relayctl and the baseline (bench/bare-server.ts: Bun.serve with the same certificate answering 200), after a 1 s warm-up of each. State: ${o.leases.toLocaleString("en-US")} clients with one live lease each, written into state.db before the server started.`,
      ],
    };
  } finally {
    await stopPid(bare.pid);
    await s.stop();
  }
}

/** 1,000 clients (seeded, no lease yet) each lease a new address at the same moment. */
export async function benchBurst(o: { clients: number; rounds: number }): Promise<{ rows: Row[]; details: string[] }> {
  const dir = scratch("burst");
  const cfg = writeServerConfig(dir);
  const seeded = seedState(cfg.stateDir, { clients: o.clients, leases: false, keepTokens: o.clients });
  const s = await startServer(dir, cfg, { verbose: true });
  try {
    const rebuildsSoFar = () => (readFileSync(s.logPath, "utf8").match(/rebuilt with \d+ entries/g) ?? []).length;
    const times: number[] = [];
    const rebuilds: number[] = [];
    const failures: string[] = [];
    for (let round = 0; round < o.rounds; round++) {
      const before = rebuildsSoFar();
      // Round r moves every client to a new block of addresses: 1,000 addresses new to the map each time.
      const ipOf = (i: number) => benchAddress(o.clients * (round + 1) + i);
      const t0 = performance.now();
      const answers = await Promise.all(seeded.tokens.map((t, i) => postLease(s, t, ipOf(i)).catch((e: Error) => ({ status: 0, body: { event: e.message } }))));
      const elapsed = performance.now() - t0;
      const bad = answers.filter((a) => a.status !== 200);
      // Every answer came after the map held its address; check the installed map says so too.
      const mapText = readFileSync(s.mapPath, "utf8");
      const missing = seeded.tokens.map((_, i) => ipOf(i)).filter((ip) => !mapText.includes(`\n${ip} OK\n`));
      const q = await run([toolPath("postmap"), "-q", ipOf(o.clients - 1), `hash:${s.mapPath}`], { timeoutMs: 5_000 });
      if (bad.length || missing.length || q.stdout.trim() !== "OK") failures.push(`round ${round}: ${bad.length} not 200, ${missing.length} not in map`);
      times.push(elapsed);
      await Bun.sleep(300); // let the last rebuild's log line land
      rebuilds.push(rebuildsSoFar() - before);
    }
    const worst = Math.max(...times);
    return {
      rows: [
        {
          figure: `${o.clients.toLocaleString("en-US")} new addresses at once`,
          relayctl: `all live in ${mmm(times, "ms", 0)}; ${mmm(rebuilds, "rebuilds", 0)}`,
          baseline: "-",
          ratio: "-",
          target: "all live < 2 s; rebuilds reported",
          verdict: failures.length === 0 && worst < 2000 ? "met" : "MISSED",
          note: failures.length ? failures.join("; ") : undefined,
        },
      ],
      details: [
        `burst: ${o.clients} seeded clients, ${o.rounds} rounds; in each, all ${o.clients} POST /v1/lease with a new {"ip"} are started at once from one Bun process (fetch; Bun opens at most 256 connections at a time), time = until the last 200 (the server answers only once the map holds the address); then the installed map source and \`postmap -q\` confirm. Rebuilds counted from the server's --verbose log.`,
      ],
    };
  } finally {
    await s.stop();
  }
}

/** Resident memory of an idle server after start-up and a few requests. */
export async function benchRss(o: { sizes: number[]; limitMbAt10k: number; rss10kAfterLoadMb?: number }): Promise<{ rows: Row[]; details: string[] }> {
  const rows: Row[] = [];
  const parts: string[] = [];
  let at10k = NaN;
  for (const n of o.sizes) {
    const dir = scratch(`rss${n}`);
    const cfg = writeServerConfig(dir);
    const seeded = seedState(cfg.stateDir, { clients: Math.max(n, 1), leases: n > 0, keepTokens: 1 });
    const s = await startServer(dir, cfg);
    try {
      for (let i = 0; i < 20; i++) {
        const r = await postLease(s, seeded.tokens[0]!, benchAddress(0));
        if (r.status !== 200) throw new Error(`renewal failed: ${r.status}`);
      }
      await Bun.sleep(200);
      const m = memoryOf(s.pid);
      if (n === 10_000) at10k = m.rssMb;
      parts.push(`${n.toLocaleString("en-US")}: ${m.rssMb.toFixed(0)} MB (peak ${m.hwmMb.toFixed(0)}, ready in ${(s.readyMs / 1000).toFixed(2)} s)`);
    } finally {
      await s.stop();
    }
  }
  const after = o.rss10kAfterLoadMb;
  rows.push({
    figure: `server RSS with ${o.sizes.map((n) => n.toLocaleString("en-US")).join(" / ")} leases`,
    relayctl: parts.join("; ") + (after ? `; 10,000 after the wrk runs: ${after.toFixed(0)} MB` : ""),
    baseline: "-",
    ratio: "-",
    target: `report; ≤ ${o.limitMbAt10k} MB at 10,000`,
    verdict: at10k <= o.limitMbAt10k && (after === undefined || after <= o.limitMbAt10k) ? "met" : "MISSED",
  });
  return { rows, details: ["RSS: VmRSS (and VmHWM, the peak) from /proc/PID/status of a freshly started server after 20 renewals; state seeded into state.db before start; \"ready\" = spawn to first healthy /healthz, including the map build from state."] };
}
