/**
 * Several relay hosts sharing leases through PostgreSQL, against the real
 * binary, a private PostgreSQL cluster (unix socket only) and real Postfix
 * instances: host A (map lookup, mynetworks) and host B (policy lookup),
 * each with its own relayctl server on the same database, plus a Postfix
 * that queries the database itself through the printed pgsql: file.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, requireE2E, startPostfix, swaks, type Host, type Postfix } from "./harness.ts";
import { addClient, onHost, policyHost, relayctl, stage, startServer, within, writeServerConfig, type PolicyHost, type ServerProc, type Stage } from "./relayctl.ts";
import { postgresBinDir, type PgCluster } from "../pgcluster.ts";

const enabled = requireE2E() && postgresBinDir() !== undefined;

describe.if(enabled)("several relay hosts on one PostgreSQL database", () => {
  let pg: PgCluster;
  let s: Stage;
  let b: PolicyHost;
  let configB: string;
  let urlB: string;
  let serverB: ServerProc | undefined;
  let postfixPg: Postfix;
  let smtpPg: string;

  beforeAll(async () => {
    s = await stage({
      prefix: "rpg",
      postgres: true,
      prepare: async (st) => {
        pg = st.pg!;
        st.writeConfig({ database: pg.url, renewals_per_minute: 0 });
        // Host B: its own Postfix asking its own relayctl over the policy socket, same database.
        b = await policyHost(st, { database: pg.url });
        configB = b.config;
        urlB = b.url;
      },
      ready: async (st) => {
        serverB = await startServer(configB, urlB);
        st.onCleanup(async () => serverB?.stop());
        await st.enroll(st.h1, "office");
        // A Postfix with no relayctl beside it: it asks PostgreSQL through the printed file.
        const out = await relayctl(["server", "postfix-pgsql", "--config", st.config]);
        if (out.code !== 0) throw new Error(`postfix-pgsql failed: ${out.stderr}`);
        const dirPg = join(st.tmp.path, "pgsql");
        mkdirSync(dirPg, { recursive: true });
        const cf = join(dirPg, "relayctl-pgsql.cf");
        writeFileSync(cf, out.stdout);
        chmodSync(cf, 0o644);
        smtpPg = `198.18.0.1:${freePort()}`;
        postfixPg = await startPostfix({ dir: join(dirPg, "postfix"), mapPath: cf, mapType: "pgsql", listen: smtpPg, hook: "check_client_access" });
        st.onCleanup(() => postfixPg.stop());
      },
    });
  }, 120_000);
  afterAll(() => s?.cleanup());

  const renew = (host: Host, name: string) => onHost(host, ["client", "--config", s.cfg(name)]);
  const viaA = (host: Host) => s.relays(host);
  const viaB = (host: Host) => b.relays(host);
  const viaPgsql = async (host: Host) => {
    const r = await swaks({ host, server: smtpPg });
    if (!r.accepted && !r.denied) throw new Error(`swaks via pgsql gave neither verdict:\n${r.output}`);
    return r.accepted;
  };

  test("a lease renewed through A relays through B's Postfix and the pgsql: Postfix; hostnames never break the lookup", async () => {
    expect(await viaB(s.h1)).toBe(false);
    const r = await renew(s.h1, "office");
    expect(r.code).toBe(0);
    expect(await viaA(s.h1)).toBe(true);
    expect(await within(1_000, () => viaB(s.h1), true)).not.toBeNull();
    expect(await viaPgsql(s.h1)).toBe(true);
    // h2 holds no lease anywhere.
    expect(await viaB(s.h2)).toBe(false);
    expect(await viaPgsql(s.h2)).toBe(false);
    const q = await pg.psql("SELECT count(*) FROM relayctl.leases WHERE net >>= relayctl.client_address('unknown')");
    expect(q.trim()).toBe("0");
  });

  test("revoke on B denies on A (map) within 1 s, and on the pgsql: Postfix at once", async () => {
    const line = await addClient(configB, "second");
    expect((await onHost(s.h2, [...line, "--config", s.cfg("second")])).code).toBe(0);
    expect((await renew(s.h2, "second")).code).toBe(0);
    expect(await within(1_000, () => viaA(s.h2), true)).not.toBeNull();
    const rv = await relayctl(["server", "revoke", "second", "--config", configB]);
    expect(rv.code).toBe(0);
    const took = await within(1_000, () => viaA(s.h2), false);
    expect(took).not.toBeNull();
    expect(await viaB(s.h2)).toBe(false);
    expect(await viaPgsql(s.h2)).toBe(false);
    // Admin commands see the same clients from either host.
    const listA = await relayctl(["server", "list", "--json", "--config", s.config]);
    const listB = await relayctl(["server", "list", "--json", "--config", configB]);
    expect(JSON.parse(listA.stdout)).toEqual(JSON.parse(listB.stdout));
    expect(JSON.parse(listA.stdout).clients.map((c: { name: string }) => c.name)).toEqual(["office"]);
    const log = await relayctl(["server", "log", "--client", "second", "--config", s.config]);
    expect(log.stdout).toContain("revoke");
  });

  test("expiry denies on both hosts and on the pgsql: Postfix within 1 s; one expire row in the audit log", async () => {
    const line = await addClient(s.config, "brief", ["--ttl", "10s"]);
    expect((await onHost(s.h2, [...line, "--config", s.cfg("brief")])).code).toBe(0);
    expect((await renew(s.h2, "brief")).code).toBe(0);
    const leasedAt = Date.now();
    expect(await within(1_000, () => viaB(s.h2), true)).not.toBeNull();
    expect(await viaA(s.h2)).toBe(true);
    await Bun.sleep(Math.max(0, leasedAt + 10_000 - Date.now()));
    expect(await within(1_000, () => viaA(s.h2), false)).not.toBeNull();
    expect(await within(1_000, () => viaB(s.h2), false)).not.toBeNull();
    expect(await viaPgsql(s.h2)).toBe(false);
    await Bun.sleep(500);
    expect((await pg.psql("SELECT count(*) FROM relayctl.audit WHERE event = 'expire' AND client = 'brief'")).trim()).toBe("1");
  }, 30_000);

  test("a short lease renewed only through A keeps relaying through B past every expiry B knew of", async () => {
    // A plain renewal is not in the change log, so B holds the old expiry;
    // when it passes, B must find the renewal in the database, not drop the
    // lease until the 5-minute reconcile.
    const line = await addClient(s.config, "steady", ["--ttl", "10s"]);
    expect((await onHost(s.h2, [...line, "--config", s.cfg("steady")])).code).toBe(0);
    expect((await renew(s.h2, "steady")).code).toBe(0);
    expect(await within(1_000, () => viaB(s.h2), true)).not.toBeNull();
    for (let i = 0; i < 6; i++) {
      await Bun.sleep(4_000);
      expect((await renew(s.h2, "steady")).code).toBe(0);
    }
    // 24 s on: B's first expiries for steady (10 s, 14 s, 18 s) have passed.
    expect(await within(1_000, () => viaB(s.h2), true)).not.toBeNull();
    expect(await viaA(s.h2)).toBe(true);
    expect((await relayctl(["server", "revoke", "steady", "--config", s.config])).code).toBe(0);
    expect(await within(1_000, () => viaB(s.h2), false)).not.toBeNull();
  }, 60_000);

  test("database down: renewals 503 (client exit 1), live leases keep relaying, expiry continues, health degraded; back: renewals work without a restart", async () => {
    const line = await addClient(s.config, "outage", ["--ttl", "10s"]);
    expect((await onHost(s.h2, [...line, "--config", s.cfg("outage")])).code).toBe(0);
    expect((await renew(s.h2, "outage")).code).toBe(0);
    const leasedAt = Date.now();
    expect((await renew(s.h1, "office")).code).toBe(0);
    expect(await within(1_000, () => viaB(s.h2), true)).not.toBeNull();
    await pg.stop();
    try {
      const r = await renew(s.h1, "office");
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("database");
      // The office lease (20 min) still relays through both hosts.
      expect(await viaA(s.h1)).toBe(true);
      expect(await viaB(s.h1)).toBe(true);
      // Health says degraded once a catch-up (every second) found the database gone.
      const health = async () => (await fetch(`${urlB}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit)).status === 503;
      expect(await within(7_000, health, true)).not.toBeNull();
      const status = await relayctl(["server", "status", "--config", configB]);
      expect(status.code).toBe(1);
      expect(status.stdout).toContain("cannot be read");
      const doctor = await relayctl(["doctor", "--config", configB]);
      expect(doctor.stdout + doctor.stderr).toContain("the shared database cannot be read");
      // The 10 s lease still expires on both hosts, from their own view.
      await Bun.sleep(Math.max(0, leasedAt + 10_000 - Date.now()));
      expect(await within(1_000, () => viaA(s.h2), false)).not.toBeNull();
      expect(await within(1_000, () => viaB(s.h2), false)).not.toBeNull();
      expect(await viaA(s.h1)).toBe(true);
    } finally {
      await pg.start();
    }
    const t0 = Date.now();
    let ok = false;
    while (!ok && Date.now() - t0 < 15_000) {
      ok = (await renew(s.h1, "office")).code === 0;
      if (!ok) await Bun.sleep(500);
    }
    expect(ok).toBe(true);
    const healthy = async () => (await fetch(`${s.url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit)).status === 200;
    expect(await within(7_000, healthy, true)).not.toBeNull();
    // The outage's expiry reached the database too once it was back.
    expect(await within(7_000, async () => (await pg.psql("SELECT count(*) FROM relayctl.leases WHERE client = 'outage'")).trim() === "0", true)).not.toBeNull();
  }, 60_000);

  test("a lease deleted by hand (psql, not relayctl) is logged and denied on both hosts within 1 s", async () => {
    expect((await renew(s.h1, "office")).code).toBe(0);
    expect(await within(1_000, () => viaB(s.h1), true)).not.toBeNull();
    await pg.psql("DELETE FROM relayctl.leases WHERE client = 'office'");
    expect(await within(1_000, () => viaB(s.h1), false)).not.toBeNull();
    expect(await within(1_000, () => viaA(s.h1), false)).not.toBeNull();
  }, 20_000);

  test("a server started while the database is down starts degraded and catches up without a restart", async () => {
    expect((await renew(s.h1, "office")).code).toBe(0);
    await serverB!.stop();
    await pg.stop();
    try {
      serverB = await startServer(configB, urlB);
      const status = await fetch(`${urlB}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit);
      expect(status.status).toBe(503);
      // It knows no lease yet: nothing relays through B.
      expect(await viaB(s.h1)).toBe(false);
    } finally {
      await pg.start();
    }
    expect(await within(7_000, () => viaB(s.h1), true)).not.toBeNull();
  }, 30_000);

  test("server migrate copies a populated SQLite state; twice does no harm", async () => {
    const dir = join(s.tmp.path, "old");
    mkdirSync(dir, { recursive: true });
    const old = writeServerConfig(dir, { listen: "198.18.0.1:9", public_url: "https://198.18.0.1:9", state_dir: join(dir, "state"), map: join(dir, "clients"), map_type: "hash" });
    await addClient(old, "legacy-a");
    await addClient(old, "legacy-b");
    await pg.psql("CREATE DATABASE moved", "postgres");
    const to = pg.url.replace("/relayctl?", "/moved?");
    const first = await relayctl(["server", "migrate", "--to", to, "--config", old]);
    expect(first.code).toBe(0);
    expect(first.stdout).toContain("copied 2 clients");
    expect(first.stdout).toContain(`database = ${JSON.stringify(to)}`);
    const second = await relayctl(["server", "migrate", "--to", to, "--config", old]);
    expect(second.code).toBe(0);
    expect(second.stdout).toContain("copied 0 clients");
    const moved = writeServerConfig(join(dir, "state"), { listen: "198.18.0.1:9", public_url: "https://198.18.0.1:9", state_dir: join(dir, "state2"), map: join(dir, "clients2"), map_type: "hash", database: to });
    const list = await relayctl(["server", "list", "--json", "--config", moved]);
    expect(JSON.parse(list.stdout).clients.map((c: { name: string }) => c.name)).toEqual(["legacy-a", "legacy-b"]);
  });
});
