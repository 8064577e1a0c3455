/**
 * Against a real private Postfix (the e2e harness): is a leased address
 * relayable on the very first SMTP try after `relayctl client` exits, and how
 * soon after expires_at is an expired lease denied.
 *
 * Traffic: the client talks to the server on 127.0.0.1; swaks runs inside a
 * namespace with 198.18.0.x addresses and talks to Postfix on 198.18.0.1.
 */
import { join } from "node:path";
import { cleanupStale, createNetwork, e2eSupport, freePort, run, startPostfix, swaks, tmpDir, type Net, type Postfix } from "../test/e2e/harness.ts";
import { addClient, enrollClient, median, mmm, postLease, RELAYCTL, scratch, startServer, toolPath, writeServerConfig, type BenchServer, type Row } from "./lib.ts";

const PREFIX = "rlbn";

export async function benchPostfix(o: { trials: number; expiring: number }): Promise<{ rows: Row[]; details: string[] }> {
  // The bench reports a section it cannot run as skipped; only tests fail for it.
  const support = e2eSupport();
  if (!support.ok) {
    const why = `needs root, Postfix, swaks and network namespaces: ${support.reason}`;
    return {
      rows: [
        { figure: "leased address usable by Postfix", relayctl: "-", baseline: "-", ratio: "-", target: "0 ms", verdict: "skipped", note: why },
        { figure: "expiry precision", relayctl: "-", baseline: "-", ratio: "-", target: "≤ 1 s", verdict: "skipped", note: why },
      ],
      details: [],
    };
  }
  await cleanupStale(PREFIX);
  const dir = scratch("postfix");
  const pfDir = tmpDir(`${PREFIX}-pf-`);
  let net: Net | undefined;
  let pf: Postfix | undefined;
  let s: BenchServer | undefined;
  try {
    const cfg = writeServerConfig(dir, { mapType: "hash", mapPath: join(pfDir.path, "relay_clients") });
    s = await startServer(dir, cfg);
    net = await createNetwork(PREFIX);
    const host = await net.addHost("h2", "198.18.0.2");
    const smtp = `198.18.0.1:${freePort()}`;
    pf = await startPostfix({ dir: pfDir.path, mapPath: cfg.mapPath, mapType: "hash", listen: smtp, hook: "mynetworks" });

    // Expiring leases first (ttl 30 s, the minimum), so their wait overlaps the usable trials.
    const expiring: { ip: string; expiresAt: number }[] = [];
    for (let i = 0; i < o.expiring; i++) {
      const ip = `198.18.0.${60 + i}`;
      await host.addIp(ip);
      const c = await addClient(s, `exp${i}`, ["--ttl", "30s"]);
      const r = await postLease(s, c.token, ip);
      if (r.status !== 200 || !r.body.expires_at) throw new Error(`expiring lease ${ip}: HTTP ${r.status}`);
      expiring.push({ ip, expiresAt: Date.parse(r.body.expires_at) });
      await Bun.sleep(400); // spread the expiries so each is watched on its own
    }

    // Control: an address without a lease is denied, so an accept below means the lease did it.
    const control = await swaks({ host, server: smtp, bind: "198.18.0.2" });
    if (!control.denied) throw new Error(`control probe was not denied:\n${control.output}`);

    // Leased address usable: grant with `relayctl client`, then swaks at once after it exits.
    const use = await addClient(s, "use");
    const useToml = await enrollClient(s, dir, "use", use.token, use.pin);
    let firstTry = 0;
    const clientMs: number[] = [];
    const failures: string[] = [];
    for (let i = 0; i < o.trials; i++) {
      const ip = `198.18.0.${20 + i}`;
      await host.addIp(ip);
      const t0 = performance.now();
      const c = await run([RELAYCTL, "client", "--config", useToml, "--ip", ip], { timeoutMs: 20_000 });
      const tExit = performance.now();
      if (c.code !== 0) throw new Error(`relayctl client failed: ${c.stderr}`);
      const probe = await swaks({ host, server: smtp, bind: ip });
      clientMs.push(tExit - t0);
      if (probe.accepted) firstTry++;
      else failures.push(`${ip}: ${probe.output.split("\n").filter((l) => /<~?\*?\*?-?\s+\d{3}/.test(l)).join(" | ")}`);
    }

    // Expiry precision: watch the map with postmap -q, then confirm with swaks that Postfix denies.
    const mapLag: number[] = [];
    const deniedLag: number[] = [];
    const postmap = toolPath("postmap");
    for (const e of expiring) {
      const wait = e.expiresAt - 300 - Date.now();
      if (wait > 0) await Bun.sleep(wait);
      let gone = NaN;
      for (let i = 0; i < 1000 && Date.now() < e.expiresAt + 10_000; i++) {
        const q = await run([postmap, "-q", e.ip, `hash:${cfg.mapPath}`], { timeoutMs: 5_000 });
        if (q.code !== 0) {
          gone = Date.now();
          break;
        }
        await Bun.sleep(5);
      }
      const probe = await swaks({ host, server: smtp, bind: e.ip });
      const deniedAt = Date.now();
      mapLag.push(gone - e.expiresAt);
      deniedLag.push(probe.denied ? deniedAt - e.expiresAt : NaN);
    }
    const allDenied = deniedLag.every(Number.isFinite);
    const worst = Math.max(...deniedLag);
    return {
      rows: [
        {
          figure: "leased address usable by Postfix",
          relayctl: `${firstTry}/${o.trials} relayed on the first SMTP try after client exit (0 ms wait)`,
          baseline: "client exit",
          ratio: "-",
          target: "0 ms: accepted on first try",
          verdict: firstTry === o.trials ? "met" : "MISSED",
          note: failures.length ? `not accepted: ${failures.join("; ")}` : undefined,
        },
        {
          figure: "expiry precision (denied after expires_at)",
          relayctl: `map entry gone ${mmm(mapLag, "ms", 0)}; swaks denied by ${mmm(deniedLag, "ms", 0)}`,
          baseline: "lease expires_at",
          ratio: "-",
          target: "denied ≤ 1 s",
          verdict: allDenied && worst <= 1000 ? "met" : "MISSED",
        },
      ],
      details: [
        `usable: ${o.trials} trials; each leases a fresh namespace address with \`relayctl client --ip\` (whole process ${mmm(clientMs, "ms")}), then swaks from that address to Postfix (mynetworks = hash:map) starts as soon as the client exits; a control probe from an unleased address is denied.`,
        `expiry: ${o.expiring} leases with ttl 30 s (the minimum); \`postmap -q\` polls the map from 300 ms before expires_at, then swaks from the address confirms Postfix denies relaying (\"denied by\" = when swaks saw 554 Relay access denied, median ${median(deniedLag).toFixed(0)} ms after expires_at).`,
      ],
    };
  } finally {
    await pf?.stop().catch(() => undefined);
    await net?.destroy().catch(() => undefined);
    await s?.stop();
    pfDir.remove();
  }
}
