/**
 * Server under load: renewal throughput with wrk (vs a bare Bun.serve TLS
 * endpoint), 1,000 new addresses at once, and resident memory with
 * 0 / 10,000 / 100,000 leases. State is seeded straight into SQLite before
 * each server starts (the server rebuilds its map from state at start).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, run } from "../test/e2e/harness.ts";
import { benchAddress, BUN, cpuMsOf, dirBytes, median, memoryOf, mmm, postLease, ratio, scratch, seedState, startServer, stopPid, toolPath, track, untrack, writeServerConfig, type Row } from "./lib.ts";

interface WrkOut {
  requests: number;
  duration_us: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
  socket_errors: number;
  non2xx: number;
}

type WrkRun = WrkOut & { rps: number; /** server user+sys CPU per request, µs (when a pid was given) */ cpuUs: number };

/**
 * Runs wrk with a script (bench/renew.lua by default) against url; with a pid,
 * also the server CPU per request. With `stop`, wrk runs until that settles
 * (SIGINT: wrk stops and still reports), `seconds` being only an upper bound.
 */
export async function wrk(url: string, seconds: number, conns: number, env: Record<string, string>, o: { script?: string; pid?: number; stop?: Promise<unknown> } = {}): Promise<WrkRun> {
  const lua = join(import.meta.dir, o.script ?? "renew.lua");
  const cpu0 = o.pid ? cpuMsOf(o.pid) : 0;
  // One wrk thread: on 2 cores it leaves one core to the server under test.
  const argv = [toolPath("wrk"), "-t1", `-c${conns}`, `-d${seconds}s`, "--timeout", "5s", "-s", lua, url];
  const proc = Bun.spawn(argv, { env: { ...process.env, ...env }, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  track(proc.pid, "wrk");
  const limit = setTimeout(() => proc.kill("SIGKILL"), (seconds + 30) * 1000);
  void o.stop?.finally(() => proc.kill("SIGINT"));
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(limit);
  untrack(proc.pid);
  const line = stdout.split("\n").find((l) => l.startsWith("BENCH_JSON "));
  if (code !== 0 || !line) throw new Error(`wrk failed (${code}): ${stderr}${stdout}`);
  const w = JSON.parse(line.slice("BENCH_JSON ".length)) as WrkOut;
  const cpuUs = o.pid ? ((cpuMsOf(o.pid) - cpu0) * 1000) / w.requests : NaN;
  return { ...w, rps: w.requests / (w.duration_us / 1e6), cpuUs };
}

export async function startBare(certPath: string, keyPath: string, o: { flags?: string[] } = {}): Promise<{ url: string; pid: number }> {
  const port = freePort();
  const p = Bun.spawn([BUN, join(import.meta.dir, "bare-server.ts"), certPath, keyPath, String(port), ...(o.flags?.length ? [o.flags.join(",")] : [])], { stdin: "ignore", stdout: "ignore", stderr: "inherit" });
  track(p.pid, "bare server");
  const url = `${o.flags?.includes("plain") ? "http" : "https"}://127.0.0.1:${port}`;
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

async function metricsText(url: string, certPem: string): Promise<string> {
  const r = await fetch(`${url}/metrics`, { tls: { ca: [certPem] } } as RequestInit);
  return r.text();
}
async function rebuildCount(url: string, certPem: string): Promise<number> {
  return Number(/^relayctl_map_rebuild_duration_seconds_count (\d+)/m.exec(await metricsText(url, certPem))?.[1] ?? NaN);
}
async function eventCount(url: string, certPem: string, event: string): Promise<number> {
  return Number(new RegExp(`^relayctl_lease_events_total\\{event="${event}"\\} (\\d+)`, "m").exec(await metricsText(url, certPem))?.[1] ?? NaN);
}

export async function benchThroughput(o: { leases: number; conns: number; seconds: number; rounds: number; mixClients: number }): Promise<{ rows: Row[]; details: string[]; rss10kAfterLoadMb: number; cpu: { relayctl: number; bareTls: number } }> {
  const dir = scratch("tput");
  const cfg = writeServerConfig(dir);
  // 10,000 clients with a live lease each; the first mixClients renew (the first one alone in the same-address figure).
  const seeded = seedState(cfg.stateDir, { clients: o.leases, leases: true, keepTokens: o.mixClients });
  const s = await startServer(dir, cfg);
  const bare = await startBare(s.certPath, join(cfg.stateDir, "tls", "key.pem"));
  try {
    const ip = benchAddress(0);
    const env = { BENCH_TOKEN: seeded.tokens[0]!, BENCH_BODY: JSON.stringify({ ip }) };
    const check = await postLease(s, seeded.tokens[0]!, ip);
    if (check.status !== 200 || check.body.event !== "renew") throw new Error(`renewal check failed: HTTP ${check.status} ${JSON.stringify(check.body)}`);
    const mine: WrkRun[] = [];
    const base: WrkRun[] = [];
    await wrk(`${s.url}/v1/lease`, 1, o.conns, env); // warm-up
    await wrk(`${bare.url}/v1/lease`, 1, o.conns, env);
    for (let i = 0; i < o.rounds; i++) {
      mine.push(await wrk(`${s.url}/v1/lease`, o.seconds, o.conns, env, { pid: s.pid }));
      base.push(await wrk(`${bare.url}/v1/lease`, o.seconds, o.conns, env, { pid: bare.pid }));
    }
    const rssAfter = memoryOf(s.pid).rssMb;
    const errs = mine.reduce((n, w) => n + w.socket_errors + w.non2xx, 0);
    const rps = mine.map((w) => w.rps);
    const brps = base.map((w) => w.rps);
    const p99 = mine.map((w) => w.p99_us / 1000);
    const r = median(rps) / median(brps);
    const ok = r >= 0.5 && median(p99) < 20 && errs === 0;

    // The same load with 10 % address changes from mixClients clients, alternating each client between two addresses.
    const clientsFile = join(dir, "mix-clients");
    writeFileSync(clientsFile, seeded.tokens.map((t, i) => `${t} ${benchAddress(i)} ${benchAddress(o.leases + i)}`).join("\n") + "\n", { mode: 0o600 });
    const mixEnv = { BENCH_CLIENTS: clientsFile, BENCH_CHANGE: "0.1" };
    await wrk(`${s.url}/v1/lease`, 1, o.conns, mixEnv, { script: "renew-mix.lua" }); // warm-up
    const rebuildsBefore = await rebuildCount(s.url, s.certPem);
    const replacesBefore = await eventCount(s.url, s.certPem, "replace");
    const mix: WrkRun[] = [];
    const mixBase: WrkRun[] = [];
    for (let i = 0; i < o.rounds; i++) {
      mix.push(await wrk(`${s.url}/v1/lease`, o.seconds, o.conns, mixEnv, { script: "renew-mix.lua", pid: s.pid }));
      mixBase.push(await wrk(`${bare.url}/v1/lease`, o.seconds, o.conns, mixEnv, { script: "renew-mix.lua", pid: bare.pid }));
    }
    const rebuilds = (await rebuildCount(s.url, s.certPem)) - rebuildsBefore;
    const changes = (await eventCount(s.url, s.certPem, "replace")) - replacesBefore;
    const mixErrs = mix.reduce((n, w) => n + w.socket_errors + w.non2xx, 0);
    const mrps = mix.map((w) => w.rps);
    const mp99 = mix.map((w) => w.p99_us / 1000);
    const cpu = { relayctl: median(mine.map((w) => w.cpuUs)), bareTls: median(base.map((w) => w.cpuUs)) };
    return {
      rss10kAfterLoadMb: rssAfter,
      cpu,
      rows: [
        {
          figure: `renewal throughput, same address, ${o.leases.toLocaleString("en-US")} leases, ${o.conns} keep-alive connections`,
          relayctl: `${mmm(rps, "req/s", 0)}; p99 ${mmm(p99, "ms")}; server CPU ${cpu.relayctl.toFixed(0)} µs/req${errs ? `; ${errs} errors` : ""}`,
          baseline: `bare Bun.serve TLS ${mmm(brps, "req/s", 0)}; p99 ${mmm(base.map((w) => w.p99_us / 1000), "ms")}; server CPU ${cpu.bareTls.toFixed(0)} µs/req`,
          ratio: ratio(median(rps), median(brps)),
          target: "≥ 0.5×, p99 < 20 ms",
          verdict: ok ? "met" : "MISSED",
        },
        {
          figure: `renewal throughput, 10 % address changes (map lookup), ${o.mixClients.toLocaleString("en-US")} clients of ${o.leases.toLocaleString("en-US")}, ${o.conns} connections`,
          relayctl: `${mmm(mrps, "req/s", 0)}; p99 ${mmm(mp99, "ms")}; server CPU ${median(mix.map((w) => w.cpuUs)).toFixed(0)} µs/req; ${rebuilds.toLocaleString("en-US")} map rebuilds for ${changes.toLocaleString("en-US")} address changes${mixErrs ? `; ${mixErrs} errors` : ""}`,
          baseline: `bare Bun.serve TLS ${mmm(mixBase.map((w) => w.rps), "req/s", 0)}`,
          ratio: ratio(median(mrps), median(mixBase.map((w) => w.rps))),
          target: "report; p99 < 100 ms",
          verdict: median(mp99) < 100 && mixErrs === 0 ? "met" : "MISSED",
        },
      ],
      details: [
        `throughput: wrk -t1 -c${o.conns} -d${o.seconds}s with bench/renew.lua (POST /v1/lease, {"ip"} body, Bearer token, keep-alive), ${o.rounds} rounds alternating relayctl and the baseline (bench/bare-server.ts: Bun.serve with the same certificate answering 200), after a 1 s warm-up of each. State: ${o.leases.toLocaleString("en-US")} clients with one live lease each, written into state.db before the server started. Server CPU = user+sys of the server process from /proc over the run, per request.`,
        `10 % address changes: as above with bench/renew-mix.lua: ${o.mixClients} clients taken in turn, each request with probability 0.1 moves its client to its other address (a replace: the map is rebuilt before the 200), otherwise renews the current one; default lookup = "map" (hash); rebuilds and address changes counted from the server's /metrics (relayctl_map_rebuild_duration_seconds_count, relayctl_lease_events_total{event="replace"}) over the measured rounds.`,
      ],
    };
  } finally {
    await stopPid(bare.pid);
    await s.stop();
  }
}

/** state_dir size before and after `renewals` plain renewals by `clients` clients (`conc` at a time), right after and once the server's quiet checkpoint ran. */
export async function benchStateGrowth(o: { leases: number; renewals: number; clients: number; conc: number }): Promise<{ rows: Row[]; details: string[] }> {
  const dir = scratch("growth");
  const cfg = writeServerConfig(dir);
  const seeded = seedState(cfg.stateDir, { clients: o.leases, leases: true, keepTokens: o.clients });
  const s = await startServer(dir, cfg);
  try {
    // Let the start-up writes settle and the first quiet checkpoint run (CHECKPOINT_MS = 10 s).
    await Bun.sleep(10_500);
    const before = dirBytes(cfg.stateDir);
    let next = 0;
    let bad = 0;
    let peak = before;
    const t0 = performance.now();
    const deadline = Date.now() + 120_000;
    await Promise.all(
      Array.from({ length: o.conc }, async () => {
        while (next < o.renewals && Date.now() < deadline) {
          const i = next++;
          const c = i % o.clients;
          const r = await postLease(s, seeded.tokens[c]!, benchAddress(c));
          if (r.status !== 200 || r.body.event !== "renew") bad++;
          if (i % 1000 === 0) peak = Math.max(peak, dirBytes(cfg.stateDir));
        }
      }),
    );
    const secs = (performance.now() - t0) / 1000;
    const done = Math.min(next, o.renewals);
    const right = dirBytes(cfg.stateDir);
    peak = Math.max(peak, right);
    // The server folds and truncates the WAL within 10 s of the last write (plus one period if it was mid-run).
    let after = right;
    for (let i = 0; i < 44; i++) {
      await Bun.sleep(500);
      after = dirBytes(cfg.stateDir);
      if (after < right - 4096) break;
    }
    await Bun.sleep(200);
    after = dirBytes(cfg.stateDir);
    const kb = (b: number) => `${(b / 1024).toFixed(0)} KB`;
    const growth = after - before;
    return {
      rows: [
        {
          figure: `state_dir growth over ${o.renewals.toLocaleString("en-US")} plain renewals (${o.leases.toLocaleString("en-US")} leases)`,
          relayctl: `${(growth / 1024).toFixed(1)} KB once quiet (${kb(before)} → ${kb(after)}); right after the last renewal +${kb(right - before)}, peak +${kb(peak - before)} (WAL); ${done.toLocaleString("en-US")} renewals in ${secs.toFixed(1)} s${bad ? `; ${bad} not 200/renew` : ""}`,
          baseline: "-",
          ratio: "-",
          target: "< 100 KB",
          verdict: growth < 100 * 1024 && bad === 0 && done === o.renewals ? "met" : "MISSED",
        },
      ],
      details: [
        `state_dir growth: ${o.leases.toLocaleString("en-US")} seeded leases; after the server's first quiet checkpoint, ${o.renewals.toLocaleString("en-US")} POST /v1/lease of the current address from this process (${o.clients} clients in turn, ${o.conc} at a time, Bun fetch keep-alive); size = sum of the regular files under state_dir (state.db, -wal, -shm, tls/, status) before, at each 1,000th renewal (peak), right after, and once the server's checkpoint (every 10 s when something was written) folded and truncated the WAL.`,
      ],
    };
  } finally {
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
export async function benchRss(o: { sizes: number[]; limitMbAt10k: number; limitMbAt100k: number; rss10kAfterLoadMb?: number }): Promise<{ rows: Row[]; details: string[] }> {
  const rows: Row[] = [];
  const parts: string[] = [];
  let at10k = NaN;
  let at100k = NaN;
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
      if (n === 100_000) at100k = m.rssMb;
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
    target: `≤ ${o.limitMbAt100k} MB at 100,000; ≤ ${o.limitMbAt10k} MB at 10,000`,
    verdict: at100k <= o.limitMbAt100k && at10k <= o.limitMbAt10k && (after === undefined || after <= o.limitMbAt10k) ? "met" : "MISSED",
  });
  return { rows, details: ["RSS: VmRSS (and VmHWM, the peak) from /proc/PID/status of a freshly started server after 20 renewals; state seeded into state.db before start; \"ready\" = spawn to first healthy /healthz, including the map build from state."] };
}
