/**
 * One dyndns2 update (curl GET /nic/update, Basic auth) against one JSON API
 * renewal (curl POST /v1/lease, Bearer), each a whole request from process
 * start to answer, measured with hyperfine in the same run: what a router's
 * update costs the server compared with `relayctl client`'s own protocol.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { run } from "../test/e2e/harness.ts";
import { addClient, hyperfine, mmm, median, postLease, ratio, RELAYCTL, scratch, spkiPin, startServer, toolPath, writeServerConfig, type Row } from "./lib.ts";

/** Runs the dyndns2 section: `rounds` hyperfine rounds of `runsPerRound` runs of each command, interleaved. */
export async function benchDyndns(o: { rounds: number; runsPerRound: number }): Promise<{ rows: Row[]; details: string[] }> {
  const dir = scratch("dyndns");
  const cfg = writeServerConfig(dir);
  const s = await startServer(dir, cfg);
  try {
    const json = await addClient(s, "bench-json");
    const added = await run([RELAYCTL, "server", "add", "bench-dyn", "--dyndns", "--config", s.config, "--allow", "198.18.0.0/15"], { timeoutMs: 20_000 });
    const password = /^Password: (\S+)$/m.exec(added.stdout)?.[1];
    if (added.code !== 0 || !password) throw new Error(`server add --dyndns failed: ${added.stderr}`);
    // -G -d: a GET with the query built by curl (hyperfine's argv guard refuses ? and &).
    // Grant both once so every measured request is a plain renewal of the same address.
    const g = await postLease(s, json.token, "198.18.8.5");
    if (g.status !== 200) throw new Error(`grant failed: ${g.status}`);

    // Credentials in header files, as bench/client.ts does, so no secret is on a command line.
    const basicHeaders = join(dir, "basic-headers");
    writeFileSync(basicHeaders, `Authorization: Basic ${Buffer.from(`bench-dyn:${password}`).toString("base64")}\n`, { mode: 0o600 });
    const bearerHeaders = join(dir, "bearer-headers");
    writeFileSync(bearerHeaders, `Authorization: Bearer ${json.token}\nContent-Type: application/json\n`, { mode: 0o600 });
    const body = join(dir, "body.json");
    writeFileSync(body, JSON.stringify({ ip: "198.18.8.5" }));
    const tls = ["--cacert", s.certPath, "--pinnedpubkey", spkiPin(s.certPem)];
    const curl = toolPath("curl");
    const dyndns = [curl, "-sS", "--fail", "-o", "/dev/null", ...tls, "-H", `@${basicHeaders}`, "-G", "-d", "hostname=bench.example", "-d", "myip=198.18.8.6", `${s.url}/nic/update`];
    const api = [curl, "-sS", "--fail", "-o", "/dev/null", ...tls, "-X", "POST", "-H", `@${bearerHeaders}`, "--data-binary", `@${body}`, `${s.url}/v1/lease`];
    for (const argv of [dyndns, api]) {
      const r = await run(argv, { timeoutMs: 20_000 });
      if (r.code !== 0) throw new Error(`${argv.join(" ")} failed: ${r.stderr}`);
    }

    const wall = { dyndns: [] as number[], api: [] as number[] };
    for (let i = 0; i < o.rounds; i++) {
      const [d, a] = await hyperfine([dyndns, api], o.runsPerRound, 3, dir);
      wall.dyndns.push(d!.median * 1000);
      wall.api.push(a!.median * 1000);
    }
    const rows: Row[] = [
      {
        figure: "dyndns2 update (`GET /nic/update`, Basic), whole curl request",
        relayctl: mmm(wall.dyndns, "ms"),
        baseline: `JSON API renewal (\`POST /v1/lease\`, Bearer) ${mmm(wall.api, "ms")}`,
        ratio: ratio(median(wall.dyndns), median(wall.api)),
        target: "report",
        verdict: "report",
      },
    ];
    const details = [
      `dyndns2: ${o.rounds} hyperfine rounds × ${o.runsPerRound} runs (3 warm-up) of each curl command, interleaved per round, per-round median wall; both renew an existing lease (nochg / renew), trust only the server's certificate and pin its key, and send credentials from a header file.`,
    ];
    return { rows, details };
  } finally {
    await s.stop();
  }
}
