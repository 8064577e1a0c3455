/**
 * `relayctl client` renewal as a whole process vs curl doing the same POST
 * with the same certificate, and start-up (`relayctl --version` vs
 * `bun --version`), both measured with hyperfine in the same run.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { run } from "../test/e2e/harness.ts";
import { addClient, BUN, enrollClient, fileSizeMb, hyperfine, mmm, median, postLease, ratio, RELAYCTL, scratch, spkiPin, startServer, toolPath, writeServerConfig, type Row } from "./lib.ts";

/** Compiles a bench entry point (bench/NAME.ts) with the options build.ts uses for dist/relayctl. */
async function buildLikeRelayctl(dir: string, name: string): Promise<string> {
  const outfile = join(dir, name);
  const result = await Bun.build({
    entrypoints: [join(import.meta.dir, `${name}.ts`)],
    minify: true,
    bytecode: true,
    splitting: true,
    format: "esm",
    sourcemap: "none",
    define: { RELAYCTL_VERSION: JSON.stringify("bench"), RELAYCTL_COMMIT: JSON.stringify("bench"), RELAYCTL_TARGET: JSON.stringify(`linux-${process.arch}`) },
    compile: { outfile, autoloadDotenv: false, autoloadBunfig: false, autoloadTsconfig: false, autoloadPackageJson: false },
  } as Parameters<typeof Bun.build>[0]);
  if (!result.success) throw new Error(`${name} build failed: ${result.logs.join("\n")}`);
  return outfile;
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
    // Both again under cron's environment: this shell's NODE_EXTRA_CA_CERTS and SSL_CERT_FILE make Bun
    // load and parse the system CA bundle at the first handshake (twice), which curl --cacert never does.
    const cronEnv = [toolPath("env"), "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"];
    const relayCron = [...cronEnv, ...relay];
    const curlCron = [...cronEnv, ...curl];
    // Bun's own floor: an empty compiled program, and one compiled fetch doing the same POST.
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, c.token, { mode: 0o600 });
    const hello = [await buildLikeRelayctl(dir, "hello")];
    const floor = [await buildLikeRelayctl(dir, "fetch-floor"), `${s.url}/v1/lease`, s.certPath, tokenFile, body];
    // Sanity: both must succeed before they are timed.
    for (const argv of [curl, relay, relayCron, curlCron, floor, hello]) {
      const r = await run(argv, { timeoutMs: 20_000 });
      if (r.code !== 0) throw new Error(`${argv[0]} failed: ${r.stderr}`);
    }

    const wall = { relay: [] as number[], curl: [] as number[] };
    const cpu = { relay: [] as number[], curl: [] as number[] };
    const start = { relay: [] as number[], bun: [] as number[] };
    const startCpu = { relay: [] as number[], bun: [] as number[] };
    const cronWall = { relay: [] as number[], curl: [] as number[] };
    const cronCpu = { relay: [] as number[], curl: [] as number[] };
    const floorWall: number[] = [];
    const floorCpu: number[] = [];
    const helloWall: number[] = [];
    const helloCpu: number[] = [];
    for (let i = 0; i < o.rounds; i++) {
      const [r, k, v, b, rc, kc, fl, he] = await hyperfine([relay, curl, [RELAYCTL, "--version"], [BUN, "--version"], relayCron, curlCron, floor, hello], o.runsPerRound, 3, dir);
      floorWall.push(fl!.median * 1000);
      floorCpu.push((fl!.user + fl!.system) * 1000);
      helloWall.push(he!.median * 1000);
      helloCpu.push((he!.user + he!.system) * 1000);
      cronWall.relay.push(rc!.median * 1000);
      cronWall.curl.push(kc!.median * 1000);
      cronCpu.relay.push((rc!.user + rc!.system) * 1000);
      cronCpu.curl.push((kc!.user + kc!.system) * 1000);
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
        figure: "the same renewal under cron's environment (`env -i PATH=…`, no CA variables): wall; CPU",
        relayctl: `${mmm(cronWall.relay, "ms")}; CPU ${mmm(cronCpu.relay, "ms")}`,
        baseline: `curl ${median(cronWall.curl).toFixed(1)} ms; CPU ${median(cronCpu.curl).toFixed(1)} ms`,
        ratio: `${ratio(median(cronWall.relay), median(cronWall.curl))} / ${ratio(median(cronCpu.relay), median(cronCpu.curl))}`,
        target: "report (what a cron or systemd run sees)",
        verdict: "report",
      },
      {
        figure: "Bun floor: one compiled fetch POST with the same trust (bench/fetch-floor.ts): wall; CPU",
        relayctl: `${mmm(floorWall, "ms")}; CPU ${mmm(floorCpu, "ms")}`,
        baseline: `curl ${median(wall.curl).toFixed(1)} ms; CPU ${median(cpu.curl).toFixed(1)} ms`,
        ratio: `${ratio(median(floorWall), median(wall.curl))} / ${ratio(median(floorCpu), median(cpu.curl))}`,
        target: "report (the best a Bun client can do)",
        verdict: "report",
      },
      {
        figure: "Bun floor: empty compiled program (bench/hello.ts): wall; CPU",
        relayctl: `${mmm(helloWall, "ms")}; CPU ${mmm(helloCpu, "ms")}`,
        baseline: "-",
        ratio: "-",
        target: "report",
        verdict: "report",
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
      "Bun floors: bench/hello.ts (exits at once) and bench/fetch-floor.ts (one fetch POST of the same body with the same token, TLS trusting only the server's certificate, then exit), compiled the same way, timed in the same rounds.",
      "cron's environment: both commands again through `env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin`, timed in the same rounds. The bench's own environment may set NODE_EXTRA_CA_CERTS and SSL_CERT_FILE; Bun honours both at its first TLS handshake, reading and parsing that CA bundle even for a pinned connection, while curl with --cacert reads neither. Cron and systemd start relayctl without them.",
      "curl baseline: `curl --cacert STATE/tls/cert.pem --pinnedpubkey sha256//SPKI -X POST -H @headers --data-binary @body https://127.0.0.1:PORT/v1/lease` — it trusts only the server's self-signed certificate (whose SAN is 127.0.0.1) and pins its key, so it accepts exactly the certificate the relayctl `--pin sha256:` accepts; both send the same body {\"ip\":…} renewing the same lease.",
    ];
    return { rows, details };
  } finally {
    await s.stop();
  }
}
