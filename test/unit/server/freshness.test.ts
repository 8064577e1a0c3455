// Fail closed on staleness (issue 21 item 5): a host whose view of the shared
// database is older than stale_after tells its MTA that no lease is live.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { RelayError } from "../../../src/lib/errors.ts";
import { parseCidr, parseIp } from "../../../src/lib/ip.ts";
import { log } from "../../../src/lib/logging.ts";
import { LiveIndex } from "../../../src/server/live.ts";
import { policyHandler } from "../../../src/server/lookups/policy.ts";
import { FRESHNESS_CHECK_MS, Freshness, WithheldView } from "../../../src/server/runtime/freshness.ts";
import { StoreUnavailable, type Store } from "../../../src/server/stores/index.ts";
import type { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";
import { FakeClock, FakeTimers, fakeServer, removeTempDirs, settle, silenceLogger, tempDir, testService, type TestService } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const IP = "192.0.2.10";

/** Replaces log.error and log.info for the test, returning what they were given. */
function logged(): { error: string[]; info: string[]; restore(): void } {
  const saved = { error: log.error, info: log.info };
  const out = { error: [] as string[], info: [] as string[], restore: () => Object.assign(log, saved) };
  log.error = ((m: string) => void out.error.push(m)) as typeof log.error;
  log.info = ((m: string) => void out.info.push(m)) as typeof log.info;
  return out;
}

describe("Freshness", () => {
  function setup(opts: { applies?: boolean } = {}) {
    const clock = new FakeClock();
    const timers = new FakeTimers(clock);
    const index = new LiveIndex();
    index.load([{ client: "office", family: 4, ip: IP, expires_at: clock.now() + 86_400_000 }]);
    const view = new WithheldView(index);
    const s = { clock, timers, view, currentAt: clock.now() as number | null, staleAfter: 30, changes: [] as boolean[] };
    const f = new Freshness({
      applies: opts.applies ?? true,
      where: "postgres://db/relayctl",
      clock,
      timers,
      staleAfter: () => s.staleAfter,
      currentAt: () => s.currentAt,
      view,
      changed: (stale) => void s.changes.push(stale),
    });
    return { ...s, s, f };
  }
  const ip = parseIp(IP)!;

  test("past stale_after with no refresh at all, every lease is withheld, once; a refresh restores them at once", async () => {
    const { s, f, view, clock, timers } = setup();
    const logs = logged();
    try {
      f.start();
      await timers.advance(30_000);
      expect(view.covers(ip, clock.now())).toBe(true);
      expect(f.problems()).toEqual([]);
      // Noticed by the timer alone: nothing attempted a refresh.
      await timers.advance(FRESHNESS_CHECK_MS);
      expect(s.changes).toEqual([true]);
      expect(view.covers(ip, clock.now())).toBe(false);
      expect(view.liveTexts(clock.now())).toEqual([]);
      expect(view.liveCount(clock.now())).toBe(0);
      expect(f.problems()).toHaveLength(1);
      expect(f.problems()[0]).toContain("older than stale_after (30s");
      expect(f.gauges()).toEqual({ stale: true, ageSeconds: 31 });
      // Staying stale logs nothing more and tells nobody again.
      await timers.advance(60_000);
      expect(s.changes).toEqual([true]);
      expect(logs.error).toHaveLength(1);
      s.currentAt = clock.now();
      f.check();
      expect(s.changes).toEqual([true, false]);
      expect(view.covers(ip, clock.now())).toBe(true);
      expect(view.liveTexts(clock.now())).toEqual([IP]);
      expect(f.problems()).toEqual([]);
      expect(logs.info).toHaveLength(1);
    } finally {
      logs.restore();
      f.stop();
    }
  });

  test("never refreshed since start: the age counts from start", async () => {
    const { s, f, view, clock, timers } = setup();
    s.currentAt = null;
    f.start();
    await timers.advance(31_000);
    expect(view.covers(ip, clock.now())).toBe(false);
    expect(f.problems()[0]).toContain("never read since start");
    f.stop();
  });

  test("a SIGHUP reload reads stale_after again", async () => {
    const { s, f, view, clock, timers } = setup();
    f.start();
    await timers.advance(40_000);
    expect(view.covers(ip, clock.now())).toBe(false);
    s.staleAfter = 60;
    f.reload();
    expect(view.covers(ip, clock.now())).toBe(true);
    await timers.advance(21_000);
    expect(view.covers(ip, clock.now())).toBe(false);
    f.stop();
  });

  test("a store no other host writes (SQLite) is never stale", async () => {
    const { s, f, view, clock, timers } = setup({ applies: false });
    f.start();
    await timers.advance(3_600_000);
    expect(view.covers(ip, clock.now())).toBe(true);
    expect(s.changes).toEqual([]);
    expect(f.gauges()).toBeUndefined();
    f.stop();
  });

  test("the policy service answers DUNNO through a withheld view", () => {
    const { view, clock } = setup();
    const ask = policyHandler(view, clock);
    const attrs = new Map([["request", "smtpd_access_policy"], ["client_address", IP]]);
    expect(ask(attrs)).toBe("OK");
    view.withheld = true;
    expect(ask(attrs)).toBe("DUNNO");
  });
});

describe("a server on a shared store that cannot be read", () => {
  let t: TestService;
  afterEach(() => {
    t.skeleton.freshness.stop();
    t.skeleton.follower.stop();
  });

  /** The SQLite store dressed as a shared one whose reads fail with `failure` (or hang) while set. */
  function failing(inner: SqliteStore): { store: Store; fail(err: Error | "hang" | null): void } {
    let failure: Error | "hang" | null = null;
    const store = new Proxy(inner, {
      get(target, key) {
        if (key === "kind") return "postgres";
        if (key === "where") return "postgres://db/relayctl";
        if (key === "watch") return () => () => undefined;
        if (key === "allLeases" && failure !== null) {
          const f = failure;
          return () => (f === "hang" ? new Promise(() => undefined) : Promise.reject(f));
        }
        if (key === "leasePages" && failure !== null) {
          const f = failure;
          return async function* () {
            if (f === "hang") await new Promise(() => undefined);
            throw f;
          };
        }
        const v = Reflect.get(target, key);
        return typeof v === "function" ? v.bind(target) : v;
      },
    }) as unknown as Store;
    return { store, fail: (err) => void (failure = err) };
  }

  const mapText = (): string => readFileSync(t.mapPath, "utf8");
  const published = async (): Promise<void> => {
    await settle();
    await t.writer.settled();
    await settle();
  };

  // Each kind of failure a reload meets: the database gone, a revoked grant
  // or password, a program error, and a connection that never answers.
  const failures: [string, Error | "hang"][] = [
    ["unreachable", new StoreUnavailable("connection refused")],
    ["permission", new Error('permission denied for table leases')],
    ["auth", new RelayError("password authentication failed for user \"relayhost\"")],
    ["program error", new TypeError("cannot read properties of undefined")],
    ["hung", "hang"],
  ];
  for (const [name, err] of failures) {
    test(`${name}: within stale_after + ${FRESHNESS_CHECK_MS} ms the map is empty and /healthz degraded; a refresh publishes the real set at once`, async () => {
      const clock = new FakeClock();
      let ctl!: ReturnType<typeof failing>;
      t = await testService(tempDir(), clock, { store: (inner) => (ctl = failing(inner)).store });
      const { skeleton: s } = t;
      t.store.insertClient({ name: "office", token_id: "office", token_hash: new Uint8Array(32), ttl: 86_400, allow: NO_ALLOW, created_at: 0, ipv6_prefix: null });
      await t.leases.renew(t.store.getClient("office")!, parseCidr(IP)!, "test");
      s.freshness.start();
      await s.follower.notice();
      await published();
      expect(mapText()).toContain(IP);

      ctl.fail(err);
      // The reconcile timer keeps asking every 5 s; every attempt fails (or hangs).
      for (let i = 0; i < 6; i++) {
        void s.follower.notice();
        await t.timers.advance(5_000);
      }
      await t.timers.advance(1_000 + FRESHNESS_CHECK_MS);
      await published();
      expect(mapText()).not.toContain(IP);
      const health = await t.dispatch(new Request("https://127.0.0.1:8443/healthz"), fakeServer("127.0.0.1"));
      expect(health.status).toBe(503);
      expect(JSON.stringify(await health.json())).toContain("older than stale_after");
      const metrics = await (await t.dispatch(new Request("https://127.0.0.1:8443/metrics"), fakeServer("127.0.0.1"))).text();
      expect(metrics).toContain("relayctl_state_stale 1");
      expect(metrics).toContain("relayctl_degraded 1");
      expect(metrics).toContain("relayctl_leases_active 0");

      ctl.fail(null);
      if (err !== "hang") {
        await s.follower.notice();
        await published();
        expect(mapText()).toContain(IP);
        expect((await t.dispatch(new Request("https://127.0.0.1:8443/healthz"), fakeServer("127.0.0.1"))).status).toBe(200);
        expect(await (await t.dispatch(new Request("https://127.0.0.1:8443/metrics"), fakeServer("127.0.0.1"))).text()).toContain("relayctl_state_stale 0");
      }
    });
  }
});
