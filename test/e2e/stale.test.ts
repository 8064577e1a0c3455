/**
 * Fail closed on staleness (issue 21 item 5), against the real binary, a
 * private PostgreSQL cluster and real Postfix: host A (map lookup) runs as
 * the superuser, host B (policy lookup, its own Postfix) as the role
 * `relayhost` with the grants docs/several-relays.md lists, both with
 * stale_after = 6s. When B can no longer read the database (its grants
 * revoked; its role refused at login), a client revoked through A is denied
 * by B's Postfix within stale_after and a few seconds, every other lease too,
 * and B says degraded; once B reads again, a lease still live relays again.
 * With the cluster stopped, A's map is rebuilt empty the same way.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { requireE2E, type Host } from "./harness.ts";
import { onHost, policyHost, relayctl, stage, startServer, within, type PolicyHost, type ServerProc, type Stage } from "./relayctl.ts";
import { postgresBinDir, type PgCluster } from "../pgcluster.ts";

const enabled = requireE2E() && postgresBinDir() !== undefined;

const STALE_AFTER_S = 6;
/** What B may take beyond stale_after: the 1 s check, a publication, a swaks round trip. */
const SLACK_MS = 3_000;

/**
 * The relay host's grants exactly as docs/several-relays.md tells the reader
 * to type them, so a table the docs forget fails this test (the postfix role
 * exists too, NOLOGIN, since the block grants to both).
 */
const GRANTS = (() => {
  const doc = readFileSync(new URL("../../docs/several-relays.md", import.meta.url), "utf8");
  const lines = doc.split("\n").filter((l) => /^GRANT .* TO relayhost\b/.test(l));
  if (lines.length < 5) throw new Error("docs/several-relays.md: the GRANT block for relayhost is missing");
  return lines.join("\n");
})();

describe.if(enabled)("a relay host that cannot read the shared database fails closed after stale_after", () => {
  let pg: PgCluster;
  let s: Stage;
  let b: PolicyHost;
  let serverB: ServerProc | undefined;

  beforeAll(async () => {
    s = await stage({
      prefix: "rst",
      postgres: true,
      prepare: async (st) => {
        pg = st.pg!;
        st.writeConfig({ database: pg.url, renewals_per_minute: 0, stale_after: `${STALE_AFTER_S}s` });
        b = await policyHost(st, {
          database: pg.url.replace("postgres://postgres@", "postgres://relayhost@"), stale_after: `${STALE_AFTER_S}s`, metrics_allow: ["198.18.0.1"],
        });
      },
      ready: async (st) => {
        // A created the schema as the superuser; B reads and writes rows only.
        await pg.psql(`CREATE ROLE relayhost LOGIN; CREATE ROLE postfix NOLOGIN; ${GRANTS}`);
        serverB = await startServer(b.config, b.url);
        st.onCleanup(async () => serverB?.stop());
        await st.enroll(st.h1, "office");
        await st.enroll(st.h2, "home");
      },
    });
  }, 120_000);
  afterAll(() => s?.cleanup());

  const renew = (host: Host, name: string) => onHost(host, ["client", "--config", s.cfg(name)]);
  const viaB = (host: Host) => b.relays(host);
  const get = (path: string) => fetch(`${b.url}${path}`, { tls: { rejectUnauthorized: false } } as RequestInit);
  const staleLines = () => serverB!.stderr().split("\n").filter((l) => l.includes("older than stale_after")).length;

  test("grants revoked: a revoke through A is denied by B within stale_after + 3 s, B is degraded everywhere; grants back: a live lease relays again", async () => {
    expect((await renew(s.h1, "office")).code).toBe(0);
    expect((await renew(s.h2, "home")).code).toBe(0);
    expect(await within(2_000, () => viaB(s.h1), true)).not.toBeNull();
    expect(await within(2_000, () => viaB(s.h2), true)).not.toBeNull();
    expect((await get("/healthz")).status).toBe(200);

    // B's reloads now fail with "permission denied"; A still reads and writes.
    await pg.psql("REVOKE ALL ON ALL TABLES IN SCHEMA relayctl FROM relayhost");
    const cut = Date.now();
    expect((await relayctl(["server", "revoke", "office", "--config", s.config])).code).toBe(0);
    expect(await within(2_000, () => s.relays(s.h1), false)).not.toBeNull();
    // B never hears of the revoke; it stops relaying because its view is too old.
    const took = await within(STALE_AFTER_S * 1000 + SLACK_MS - (Date.now() - cut), () => viaB(s.h1), false);
    expect(took).not.toBeNull();
    // Every lease is withheld, not only the revoked one: B cannot know which still hold.
    expect(await viaB(s.h2)).toBe(false);

    const health = await get("/healthz");
    expect(health.status).toBe(503);
    expect(JSON.stringify(await health.json())).toContain("older than stale_after (6s");
    const metrics = await (await get("/metrics")).text();
    expect(metrics).toContain("relayctl_state_stale 1");
    expect(metrics).toContain("relayctl_degraded 1");
    const status = await relayctl(["server", "status", "--config", b.config]);
    expect(status.code).toBe(1);
    expect(status.stdout).toContain("older than stale_after");
    const doctor = await relayctl(["doctor", "--config", b.config]);
    expect(doctor.stdout + doctor.stderr).toContain("older than stale_after");
    expect(doctor.stdout + doctor.stderr).toContain("check that this host can read the shared database");
    // Once, however many reloads fail.
    await Bun.sleep(2_000);
    expect(staleLines()).toBe(1);

    await pg.psql(GRANTS);
    // The next catch-up (every second) succeeds: home's lease, still live, relays again; office stays revoked.
    expect(await within(8_000, () => viaB(s.h2), true)).not.toBeNull();
    expect(await viaB(s.h1)).toBe(false);
    expect((await get("/healthz")).status).toBe(200);
    expect(await (await get("/metrics")).text()).toContain("relayctl_state_stale 0");
    expect(serverB!.stderr()).toContain("again; the MTA relays for the live leases again");
  }, 60_000);

  test("role refused at login, its connections cut: B denies within stale_after + 3 s; login back: it relays again", async () => {
    expect((await renew(s.h2, "home")).code).toBe(0);
    expect(await within(2_000, () => viaB(s.h2), true)).not.toBeNull();
    await pg.psql("ALTER ROLE relayhost NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'relayhost'");
    expect(await within(STALE_AFTER_S * 1000 + SLACK_MS, () => viaB(s.h2), false)).not.toBeNull();
    expect((await get("/healthz")).status).toBe(503);
    await pg.psql("ALTER ROLE relayhost LOGIN");
    expect(await within(10_000, () => viaB(s.h2), true)).not.toBeNull();
    expect((await get("/healthz")).status).toBe(200);
  }, 60_000);
  test("cluster stopped: both hosts fail closed, A's map is rebuilt empty; cluster back: both relay again", async () => {
    expect((await renew(s.h2, "home")).code).toBe(0);
    expect(await within(2_000, () => s.relays(s.h2))).not.toBeNull();
    expect(await within(2_000, () => viaB(s.h2))).not.toBeNull();
    await pg.stop();
    const cut = Date.now();
    const left = () => STALE_AFTER_S * 1000 + SLACK_MS - (Date.now() - cut);
    try {
      // Each host counts from its own last reload: both within stale_after + 3 s of the stop.
      expect(await within(left(), () => s.relays(s.h2), false)).not.toBeNull();
      expect(s.mapEntries()).toEqual([]);
      expect(await within(left(), () => viaB(s.h2), false)).not.toBeNull();
    } finally {
      await pg.start();
    }
    expect(await within(10_000, () => s.relays(s.h2))).not.toBeNull();
    expect(await within(10_000, () => viaB(s.h2))).not.toBeNull();
    expect((await fetch(`${s.url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit)).status).toBe(200);
  }, 60_000);
});
