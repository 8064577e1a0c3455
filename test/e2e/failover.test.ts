/**
 * A real PostgreSQL failover under a running relayctl server: a primary and
 * a synchronous streaming-replication standby (private clusters on unix
 * sockets), `database` listing both. The standby is promoted and the old
 * primary stopped; within 10 s the server renews and grants through the new
 * primary, every committed lease is there, and a revoke on the new primary
 * is honoured by the real Postfix (swaks: Relay access denied).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { requireE2E } from "./harness.ts";
import { onHost, relayctl, stage, type Stage } from "./relayctl.ts";
import { postgresBinDir, startCluster, startStandby, type PgCluster } from "../pgcluster.ts";

const enabled = requireE2E() && postgresBinDir() !== undefined;

/** Polls probe until it returns true, for at most ms; returns how long it took, or null when it never did. */
async function within(ms: number, probe: () => Promise<boolean>): Promise<number | null> {
  const t0 = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - t0;
    if (Date.now() - t0 > ms) return null;
    await Bun.sleep(100);
  }
}

describe.if(enabled)("failover to a promoted standby", () => {
  let primary: PgCluster;
  let standby: PgCluster;
  let s: Stage;

  beforeAll(async () => {
    primary = await startCluster();
    try {
      standby = await startStandby(primary);
      // Both hosts, as libpq writes them: the primary first, the standby second.
      const database = `postgres://postgres@localhost:${primary.port},localhost:${standby.port}/relayctl?host=${primary.socketDir},${standby.socketDir}&target_session_attrs=read-write`;
      s = await stage({
        prefix: "rfo",
        prepare: async (st) => st.writeConfig({ database, renewals_per_minute: 0 }),
        ready: async (st) => {
          await st.enroll(st.h1, "office");
          await st.enroll(st.h2, "home");
        },
      });
    } catch (err) {
      await s?.cleanup();
      await standby?.destroy();
      await primary.destroy();
      throw err;
    }
  }, 120_000);
  afterAll(async () => {
    await s?.cleanup();
    await standby?.destroy();
    await primary?.destroy();
  });

  const renew = (name: string) => onHost(name === "office" ? s.h1 : s.h2, ["client", "--config", s.cfg(name)]);

  test("promote the standby, stop the primary: renewals resume within 10 s, no committed lease is lost, a revoke there is honoured", async () => {
    expect((await renew("office")).code).toBe(0);
    expect((await renew("home")).code).toBe(0);
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.relays(s.h2)).toBe(true);
    // Acknowledged means applied on the standby (remote_apply): this is what must survive.
    const committed = (await primary.psql("SELECT string_agg(client || ' ' || host(net), ', ' ORDER BY client) FROM relayctl.leases")).trim();
    expect(committed).toBe(`home ${s.h2.ip}, office ${s.h1.ip}`);

    const t0 = Date.now();
    await standby.psql("SELECT pg_promote(true, 30)", "postgres");
    await primary.stop();
    const took = await within(10_000, async () => (await renew("office")).code === 0);
    console.log(`failover: a renewal succeeded ${took} ms after the promotion (${Date.now() - t0} ms in all)`);
    expect(took).not.toBeNull();
    expect((await standby.psql("SELECT string_agg(client || ' ' || host(net), ', ' ORDER BY client) FROM relayctl.leases")).trim()).toBe(committed);
    // The server wrote there: the renewal moved office's expiry on the new primary.
    expect(Number((await standby.psql("SELECT renewals FROM relayctl.leases WHERE client = 'office'")).trim())).toBeGreaterThan(0);
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.relays(s.h2)).toBe(true);

    // An admin command finds the new primary through the same host list, and the server honours its revoke.
    const rv = await relayctl(["server", "revoke", "home", "--config", s.config]);
    expect(rv.code).toBe(0);
    expect(await within(2_000, async () => !s.mapEntries().some((e) => e.startsWith(`${s.h2.ip} `)))).not.toBeNull();
    expect(await s.relays(s.h2)).toBe(false);
    expect(await s.relays(s.h1)).toBe(true);
    // A grant after the failover goes to the new primary too.
    const add = await relayctl(["server", "add", "late", "--config", s.config]);
    expect(add.code).toBe(0);
    expect((await standby.psql("SELECT count(*) FROM relayctl.clients WHERE name = 'late'")).trim()).toBe("1");
  }, 120_000);
});
