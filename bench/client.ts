/**
 * `relayctl client` renewal as a whole process vs curl doing the same POST
 * with the same certificate, and start-up (`relayctl --version` vs
 * `bun --version`), both measured with hyperfine in the same run.
 */
import { X509Certificate, createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { run } from "../test/e2e/harness.ts";
import { addClient, BUN, enrollClient, fileSizeMb, mmm, median, plainArgv, postLease, ratio, RELAYCTL, scratch, startServer, toolPath, writeServerConfig, type Row } from "./lib.ts";

interface HfResult {
  command: string;
  median: number;
  mean: number;
  user: number;
  system: number;
  times: number[];
}

/** Runs hyperfine (no shell: -N) over commands; returns per-command results in order. */
async function hyperfine(cmds: string[][], runs: number, warmup: number, dir: string): Promise<HfResult[]> {
  const out = join(dir, `hf-${Math.random().toString(16).slice(2)}.json`);
  const argv = [toolPath("hyperfine"), "-N", "--style", "none", "--warmup", String(warmup), "--runs", String(runs), "--export-json", out, ...cmds.map(plainArgv)];
  const r = await run(argv, { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`hyperfine failed: ${r.stderr}${r.stdout}`);
  return (JSON.parse(readFileSync(out, "utf8")) as { results: HfResult[] }).results;
}

/** SPKI sha256 in curl's --pinnedpubkey form. */
function spkiPin(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: "spki", format: "der" });
  return `sha256//${createHash("sha256").update(spki).digest("base64")}`;
}

export async function benchClient(o: { rounds: number; runsPerRound: number }): Promise<{ rows: Row[]; details: string[] }> {
  const dir = scratch("client");
  const cfg = writeServerConfig(dir);
  const s = await startServer(dir, cfg);
  try {
    const c = await addClient(s, "bench");
    const clientToml = await enrollClient(s, dir, "bench", c.token, c.pin);
    const ip = "198.18.8.5";
    // Grant once so every measured run is a plain renewal of the same address.
    const g = await postLease(s, c.token, ip);
    if (g.status !== 200) throw new Error(`grant failed: ${g.status}`);

    const headers = join(dir, "curl-headers");
    writeFileSync(headers, `Authorization: Bearer ${c.token}\nContent-Type: application/json\n`, { mode: 0o600 });
    const body = join(dir, "body.json");
    writeFileSync(body, JSON.stringify({ ip }));
    // curl trusts exactly the server's self-signed certificate (--cacert, name 127.0.0.1 in its SAN) and
    // additionally pins its public key: it accepts the same single certificate the relayctl pin accepts.
    const curl = [toolPath("curl"), "-sS", "--fail", "-o", "/dev/null", "--cacert", s.certPath, "--pinnedpubkey", spkiPin(s.certPem), "-X", "POST", "-H", `@${headers}`, "--data-binary", `@${body}`, `${s.url}/v1/lease`];
    const relay = [RELAYCTL, "client", "--config", clientToml, "--ip", ip];
    // Sanity: both must succeed before they are timed.
    for (const argv of [curl, relay]) {
      const r = await run(argv, { timeoutMs: 20_000 });
      if (r.code !== 0) throw new Error(`${argv[0]} failed: ${r.stderr}`);
    }

    const wall = { relay: [] as number[], curl: [] as number[] };
    const cpu = { relay: [] as number[], curl: [] as number[] };
    const start = { relay: [] as number[], bun: [] as number[] };
    const startCpu = { relay: [] as number[], bun: [] as number[] };
    for (let i = 0; i < o.rounds; i++) {
      const [r, k, v, b] = await hyperfine([relay, curl, [RELAYCTL, "--version"], [BUN, "--version"]], o.runsPerRound, 3, dir);
      wall.relay.push(r!.median * 1000);
      wall.curl.push(k!.median * 1000);
      cpu.relay.push((r!.user + r!.system) * 1000);
      cpu.curl.push((k!.user + k!.system) * 1000);
      start.relay.push(v!.median * 1000);
      start.bun.push(b!.median * 1000);
      startCpu.relay.push((v!.user + v!.system) * 1000);
      startCpu.bun.push((b!.user + b!.system) * 1000);
    }
    const wr = median(wall.relay) / median(wall.curl);
    const cr = median(cpu.relay) / median(cpu.curl);
    const rows: Row[] = [
      {
        figure: "`relayctl client` renewal, whole process: wall",
        relayctl: mmm(wall.relay, "ms"),
        baseline: `curl ${mmm(wall.curl, "ms")}`,
        ratio: ratio(median(wall.relay), median(wall.curl)),
        target: "≤ 1.5×",
        verdict: wr <= 1.5 ? "met" : "MISSED",
      },
      {
        figure: "`relayctl client` renewal, whole process: CPU (user+sys)",
        relayctl: mmm(cpu.relay, "ms"),
        baseline: `curl ${mmm(cpu.curl, "ms")}`,
        ratio: ratio(median(cpu.relay), median(cpu.curl)),
        target: "≤ 1.7×",
        verdict: cr <= 1.7 ? "met" : "MISSED",
      },
      {
        figure: "start-up `relayctl --version` (wall; CPU)",
        relayctl: `${mmm(start.relay, "ms")}; CPU ${median(startCpu.relay).toFixed(1)} ms`,
        baseline: `\`bun --version\` ${mmm(start.bun, "ms")}; CPU ${median(startCpu.bun).toFixed(1)} ms`,
        ratio: ratio(median(start.relay), median(start.bun)),
        target: "report",
        verdict: "report",
      },
      {
        figure: "binary size dist/relayctl",
        relayctl: `${fileSizeMb(RELAYCTL).toFixed(1)} MB`,
        baseline: `bun ${fileSizeMb(BUN).toFixed(1)} MB`,
        ratio: ratio(fileSizeMb(RELAYCTL), fileSizeMb(BUN)),
        target: "report",
        verdict: "report",
      },
    ];
    const details = [
      `client renewal: ${o.rounds} hyperfine rounds × ${o.runsPerRound} runs (3 warm-up) of each command, interleaved per round; per-round median wall and mean user+sys CPU; the table shows the median round (min–max of rounds).`,
      "curl baseline: `curl --cacert STATE/tls/cert.pem --pinnedpubkey sha256//SPKI -X POST -H @headers --data-binary @body https://127.0.0.1:PORT/v1/lease` — it trusts only the server's self-signed certificate (whose SAN is 127.0.0.1) and pins its key, so it accepts exactly the certificate the relayctl `--pin sha256:` accepts; both send the same body {\"ip\":…} renewing the same lease.",
    ];
    return { rows, details };
  } finally {
    await s.stop();
  }
}
