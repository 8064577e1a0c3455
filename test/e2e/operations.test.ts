/**
 * Operating a live server: status, metrics, SIGHUP reload (ttl, logging,
 * certificate), JSON logs, and the client's --watch loop and run lock,
 * driven through dist/relayctl with a real Postfix behind it.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { requireE2E, run } from "./harness.ts";
import { addClient, BIN, enrollmentArgv, onHost, relayctl, stage, type Stage } from "./relayctl.ts";

setDefaultTimeout(60_000);
const enabled = requireE2E();

describe.skipIf(!enabled)("operations", () => {
  let s: Stage;
  const status = async (): Promise<Record<string, any>> => JSON.parse((await relayctl(["server", "status", "--json", "--config", s.config])).stdout);
  const leaseOf = async (name: string): Promise<{ ip: string; renewed_at: string; expires_at: string }> =>
    JSON.parse((await relayctl(["server", "list", "--json", "--config", s.config])).stdout).clients.find((c: { name: string }) => c.name === name).leases[0];
  const writeConfig = (ttl: string, certName: string): void =>
    s.writeConfig({ ttl, tls_cert: join(s.tmp.path, `${certName}.pem`), tls_key: join(s.tmp.path, `${certName}.key`), log_format: "json", metrics_allow: ["198.18.0.1/32"] });
  const makeCert = async (name: string): Promise<void> => {
    const r = await run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/CN=198.18.0.1",
      "-addext", "subjectAltName=IP:198.18.0.1", "-keyout", join(s.tmp.path, `${name}.key`), "-out", join(s.tmp.path, `${name}.pem`)]);
    expect(r.code).toBe(0);
  };

  beforeAll(async () => {
    s = await stage({
      prefix: "rco",
      prepare: async (st) => {
        s = st;
        await makeCert("cert1");
        await makeCert("cert2");
        writeConfig("20m", "cert1");
        expect((await status()).running).toBe(false);
      },
      ready: async (st) => {
        await st.enroll(st.h1, "h1");
        await st.enroll(st.h2, "h2");
        expect((await onHost(st.h1, ["client", "--config", st.cfg("h1")])).code).toBe(0);
      },
    });
  }, 180_000);

  afterAll(() => s?.cleanup());

  test("server status reports listener, certificate, map and health", async () => {
    const st = await status();
    expect(st.running).toBe(true);
    expect(st.status.listen).toBe(new URL(s.url).host);
    expect(st.cert.pin).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(st.cert.days_left).toBeGreaterThanOrEqual(29);
    expect(st.map).toEqual({ path: join(s.tmp.path, "map", "clients"), type: "hash", entries: 1, frozen: { entries: 0, since: null } });
    expect(st.status.map.rebuilds).toBeGreaterThanOrEqual(1);
    expect(st.status.degraded).toEqual([]);
    const text = (await relayctl(["server", "status", "--config", s.config])).stdout;
    expect(text).toContain("server: running");
    expect(text).toContain("degraded: no");
  });

  test("GET /metrics is Prometheus text for metrics_allow addresses and 404 for others", async () => {
    // This s.server uses configured certificate files: trust cert1 itself.
    const ca = readFileSync(join(s.tmp.path, "cert1.pem"), "utf8");
    const res = await fetch(`${s.url}/metrics`, { tls: { ca } } as RequestInit);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('relayctl_lease_events_total{event="grant"} 1');
    expect(text).toContain("relayctl_leases_active 1");
    expect(text).toMatch(/relayctl_map_rebuild_duration_seconds_count \d+/);
    // The same allowed peer forwarding for someone (a proxy not in trusted_proxies): who asks cannot be told, so 404.
    const forwarded = await fetch(`${s.url}/metrics`, { tls: { ca }, headers: { "x-forwarded-for": "198.18.0.3" } } as RequestInit);
    expect(forwarded.status).toBe(404);
    const other = await s.h2.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", join(s.tmp.path, "cert1.pem"), `${s.url}/metrics`]);
    expect(other.stdout).toBe("404");
  });

  test("logs are one JSON object per line with log_format = json, and carry no token", async () => {
    const lines = s.server!.stderr().trim().split("\n");
    for (const l of lines) expect(() => JSON.parse(l)).not.toThrow();
    expect(lines.some((l) => JSON.parse(l).msg.startsWith("grant: h1"))).toBe(true);
    const token = readFileSync(s.cfg("h1"), "utf8").match(/token = "[0-9a-f]{16}\.([^"]+)"/)![1]!;
    expect(s.server!.stderr()).not.toContain(token);
  });

  test("rotate: the old token is refused at once, the lease stays, the new line enrolls", async () => {
    expect((await onHost(s.h2, ["client", "--config", s.cfg("h2")])).code).toBe(0);
    const r = await relayctl(["server", "rotate", "h2", "--config", s.config]);
    expect(r.code).toBe(0);
    const line = enrollmentArgv(r.stdout);
    expect(line[line.indexOf("--name") + 1]).toBe("h2");
    expect((await onHost(s.h2, ["client", "--config", s.cfg("h2")])).code).toBe(3);
    expect(await s.relays(s.h2)).toBe(true);
    expect((await onHost(s.h2, [...line, "--config", s.cfg("h2"), "--force"])).code).toBe(0);
    expect((await onHost(s.h2, ["client", "--config", s.cfg("h2")])).code).toBe(0);
    expect((await relayctl(["server", "rotate", "nobody", "--config", s.config])).code).toBe(2);
  });

  test("SIGHUP reloads ttl and certificate without a restart; status says the pin changed", async () => {
    const before = await status();
    writeConfig("5m", "cert2");
    process.kill(s.server!.pid, "SIGHUP");
    const deadline = Date.now() + 5000;
    while ((await status()).status.pin === before.status.pin && Date.now() < deadline) await Bun.sleep(100);
    const after = await status();
    expect(after.status.pin).not.toBe(before.status.pin);
    expect(after.status.pin_changed_at).not.toBeNull();
    expect(after.status.pid).toBe(before.status.pid);
    expect((await relayctl(["server", "status", "--config", s.config])).stdout).toContain("clients enrolled with --pin must re-enroll");
    // The old pin is refused (exit 3); a new enrollment line carries the new one.
    expect((await onHost(s.h1, ["client", "--config", s.cfg("h1")])).code).toBe(3);
    const line = await addClient(s.config, "h1b");
    expect(line.join(" ")).toContain(after.status.pin);
    expect((await onHost(s.h1, [...line, "--config", s.cfg("h1b")])).code).toBe(0);
    expect((await onHost(s.h1, ["client", "--config", s.cfg("h1b")])).code).toBe(0);
    const l = await leaseOf("h1b");
    expect(Date.parse(l.expires_at) - Date.parse(l.renewed_at)).toBe(300_000);
    expect(await s.relays(s.h1)).toBe(true);
  });

  test("client --watch renews every interval and exits 0 on SIGTERM", async () => {
    const first = (await leaseOf("h1b")).renewed_at;
    const proc = Bun.spawn(["ip", "netns", "exec", s.h1.ns, BIN, "client", "--watch", "--interval", "1s", "--config", s.cfg("h1b")], { stdout: "pipe", stderr: "pipe" });
    try {
      const deadline = Date.now() + 10_000;
      const renewals = new Set<string>();
      while (renewals.size < 2 && Date.now() < deadline) {
        const r = (await leaseOf("h1b")).renewed_at;
        if (r !== first) renewals.add(r);
        await Bun.sleep(200);
      }
      expect(renewals.size).toBeGreaterThanOrEqual(2);
      const t0 = Date.now();
      process.kill(proc.pid, "SIGTERM");
      expect(await proc.exited).toBe(0);
      expect(Date.now() - t0).toBeLessThan(3000);
      expect(await new Response(proc.stdout).text()).toBe("");
    } finally {
      if (proc.exitCode === null) process.kill(proc.pid, "SIGKILL");
    }
  });

  test("overlapping client runs take turns and all succeed", async () => {
    const runs = await Promise.all(Array.from({ length: 4 }, () => onHost(s.h1, ["client", "--config", s.cfg("h1b")])));
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0, 0]);
    expect(await s.relays(s.h1)).toBe(true);
  });
});
