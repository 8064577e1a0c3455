/**
 * relayctl benchmarks (issue 6): every figure as a ratio against a baseline
 * measured in the same run, on loopback and bench-created namespaces only.
 * Run with `npm run bench` (builds dist/relayctl first). Not part of npm test.
 *
 * Prints a Markdown table and writes it to bench/results.md.
 * BENCH_QUICK=1 (npm run bench:quick) shortens every section (for trying the bench, not for numbers);
 * BENCH_ONLY=policy,profile,... runs only the named sections.
 * Sections: client, postfix, map, throughput (incl. 10 % address changes), policy,
 * post2ok, burst, growth (state_dir over 20,000 renewals), profile (µs per stage), rss.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { benchClient } from "./client.ts";
import { benchDyndns } from "./dyndns.ts";
import { ensureTools, killAllTrackedSync, removeScratch, RELAYCTL, type Row } from "./lib.ts";
import { benchBurst, benchRss, benchStateGrowth, benchThroughput } from "./load.ts";
import { benchMap } from "./map.ts";
import { benchPostfix } from "./postfix.ts";
import { benchPgFollow, benchPgScale, benchPostgres } from "./postgres.ts";
import { benchPolicy, benchPostToOk } from "./policy.ts";
import { benchProfile } from "./profile.ts";
import { existsSync } from "node:fs";

const quick = process.env.BENCH_QUICK === "1";
const only = (process.env.BENCH_ONLY ?? "").split(",").filter(Boolean);
const t0 = performance.now();
const say = (s: string) => process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(1)}s] ${s}\n`);

process.on("exit", () => {
  killAllTrackedSync();
  removeScratch();
});
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    killAllTrackedSync();
    removeScratch();
    process.exit(130);
  });
}

function machine(): string {
  let model = cpus()[0]?.model ?? "unknown";
  try {
    model = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? model;
  } catch {
    // not Linux
  }
  return `${cpus().length} cores (nproc), ${model}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB`;
}

/** The 1-minute load average: other work on the machine skews every figure, so each run records it. */
function loadavg(): string {
  try {
    return readFileSync("/proc/loadavg", "utf8").split(" ")[0]!;
  } catch {
    return "?";
  }
}
const loadAtStart = loadavg();

async function main(): Promise<void> {
  if (!existsSync(RELAYCTL)) throw new Error(`${RELAYCTL} missing: run npm run build (npm run bench does)`);
  await ensureTools(say);
  const rows: Row[] = [];
  const details: string[] = [];
  const sections: string[] = [];
  const want = (name: string) => only.length === 0 || only.includes(name);
  const section = async (name: string, fn: () => Promise<{ rows: Row[]; details: string[]; sections?: string[] }>) => {
    if (!want(name)) return;
    const s0 = performance.now();
    say(`${name}...`);
    const r = await fn();
    rows.push(...r.rows);
    details.push(...r.details);
    sections.push(...(r.sections ?? []));
    say(`${name} done in ${((performance.now() - s0) / 1000).toFixed(1)} s`);
  };

  await section("client", () => benchClient({ rounds: quick ? 2 : 5, runsPerRound: quick ? 5 : 20 }));
  await section("dyndns", () => benchDyndns({ rounds: quick ? 2 : 5, runsPerRound: quick ? 5 : 20 }));
  await section("postfix", () => benchPostfix({ trials: quick ? 3 : 10, expiring: quick ? 1 : 3 }));
  await section("map", () => benchMap({ sizes: [10_000, 100_000], types: ["hash", "lmdb"], runs: quick ? 2 : 5 }));
  let rss10kAfterLoadMb: number | undefined;
  await section("throughput", async () => {
    const r = await benchThroughput({ leases: 10_000, conns: 50, seconds: quick ? 2 : 5, rounds: quick ? 1 : 3, mixClients: 1000 });
    rss10kAfterLoadMb = r.rss10kAfterLoadMb;
    return r;
  });
  await section("policy", () => benchPolicy({ leases: 10_000, conns: [1, 50], seconds: quick ? 1 : 3, rounds: quick ? 1 : 3, maxAnswers: 2_000_000 }));
  await section("post2ok", () => benchPostToOk({ leases: 10_000, runs: quick ? 20 : 200 }));
  await section("burst", () => benchBurst({ clients: 1000, rounds: quick ? 1 : 3 }));
  await section("growth", () => benchStateGrowth({ leases: 10_000, renewals: quick ? 2_000 : 20_000, clients: 100, conc: 50 }));
  await section("profile", () => benchProfile({ leases: 10_000, seconds: quick ? 1 : 3, n: quick ? 2_000 : 5_000, reps: quick ? 3 : 5 }));
  await section("postgres", () => benchPostgres({ leases: 10_000, conns: 50, seconds: quick ? 2 : 5, rounds: quick ? 1 : 3, samples: quick ? 20 : 100 }));
  await section("pgscale", () => benchPgScale({ sizes: quick ? [10_000, 100_000] : [10_000, 1_000_000], conns: 50, seconds: quick ? 2 : 5, rounds: quick ? 1 : 3, clients: 1000 }));
  await section("pgfollow", () => benchPgFollow({ leases: Number(process.env.BENCH_PGFOLLOW_LEASES ?? (quick ? 10_000 : 1_000_000)), hosts: 5, samples: quick ? 20 : 200, conns: 20, idleSeconds: quick ? 5 : 35 }));
  await section("rss", () => benchRss({ sizes: [0, 10_000, 100_000], limitMbAt10k: 100, limitMbAt100k: 120, rss10kAfterLoadMb }));

  const total = (performance.now() - t0) / 1000;
  const version = readFileSync(join(import.meta.dir, "..", "package.json"), "utf8");
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  const lines = [
    `relayctl ${JSON.parse(version).version} benchmark, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
    "",
    `Machine: ${machine()}; Bun ${Bun.version}; Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}; 1-minute load average ${loadAtStart} at start, ${loadavg()} at the end (anything above ~0.3 at start means other work shared the cores).`,
    `Figures are medians of several runs with min–max in parentheses; every baseline was measured in the same run. Bench runtime: ${total.toFixed(0)} s${quick ? " (BENCH_QUICK=1: short runs, indicative only)" : ""}.`,
    "",
    "| figure | relayctl | baseline | ratio | target | verdict |",
    "|---|---|---|---|---|---|",
    ...rows.map((r) => `| ${[r.figure, r.relayctl, r.baseline, r.ratio, r.target, r.verdict].map(esc).join(" | ")} |`),
    "",
    ...rows.filter((r) => r.note).map((r) => `- ${r.figure}: ${r.note}`),
    "",
    ...sections,
    "How each figure was measured:",
    "",
    ...details.map((d) => `- ${d}`),
    "",
  ];
  const md = lines.join("\n");
  console.log(md);
  writeFileSync(join(import.meta.dir, "results.md"), md);
  say(`wrote bench/results.md; total ${total.toFixed(1)} s`);
}

try {
  await main();
  process.exit(0);
} catch (err) {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
}
