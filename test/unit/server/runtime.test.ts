import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import { planReload } from "../../../src/server/runtime/reload.ts";
import { LeaseBook } from "../../../src/server/leases.ts";
import { Metrics } from "../../../src/server/metrics.ts";
import { ExpiryTimer, MAX_TIMER_MS } from "../../../src/server/runtime/expiry.ts";
import { Retrier } from "../../../src/server/runtime/retry.ts";
import { StateStore, type ClientRow } from "../../../src/server/state.ts";
import { FakeClock, FakeTimers, removeTempDirs, silenceLogger, tempDir } from "../helpers.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);


describe("Retrier", () => {
  let clock: FakeClock;
  let timers: FakeTimers;
  beforeEach(async () => {
    clock = new FakeClock();
    timers = new FakeTimers(clock);
  });

  test("a success schedules nothing", async () => {
    let calls = 0;
    const r = new Retrier(async () => void calls++, timers);
    await r.run();
    expect(calls).toBe(1);
    expect(r.pending).toBe(false);
    expect(timers.pending.size).toBe(0);
  });

  test("a failure rethrows and retries in the background, doubling from 1 s until it works", async () => {
    let calls = 0;
    let failUntil = 4;
    const r = new Retrier(async () => {
      calls++;
      if (calls < failUntil) throw new Error(`fail ${calls}`);
    }, timers);
    await expect(r.run()).rejects.toThrow("fail 1");
    expect(r.pending).toBe(true);
    expect(timers.delays()).toEqual([1000]);
    await timers.advance(999);
    expect(calls).toBe(1);
    await timers.advance(1);
    expect(calls).toBe(2);
    expect(timers.delays()).toEqual([2000]);
    await timers.advance(2000);
    expect(calls).toBe(3);
    expect(timers.delays()).toEqual([4000]);
    await timers.advance(4000);
    expect(calls).toBe(4); // worked
    expect(r.pending).toBe(false);
    expect(timers.pending.size).toBe(0);
    // The delay starts again at 1 s after a success.
    failUntil = 6;
    await expect(r.run()).rejects.toThrow("fail 5");
    expect(timers.delays()).toEqual([1000]);
    await timers.advance(1000);
    expect(calls).toBe(6);
    expect(r.pending).toBe(false);
  });

  /** A Retrier whose action always fails, after one failed run; `calls()` counts the runs. */
  async function alwaysFailing(): Promise<{ r: Retrier; calls: () => number }> {
    let n = 0;
    const r = new Retrier(async () => {
      n++;
      throw new Error("down");
    }, timers);
    await r.run().catch(() => undefined);
    return { r, calls: () => n };
  }

  test("the delay is capped at the maximum", async () => {
    const { r, calls } = await alwaysFailing();
    const seen: number[] = [];
    for (let i = 0; i < 8; i++) {
      seen.push(timers.delays()[0]!);
      await timers.advance(seen[i]!);
    }
    expect(seen).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    expect(calls()).toBe(9);
    r.stop();
  });

  test("a run while a retry waits does not schedule a second one", async () => {
    const { r } = await alwaysFailing();
    await r.run().catch(() => undefined);
    expect(timers.pending.size).toBe(1);
  });

  test("stop cancels the waiting retry and none is scheduled afterwards", async () => {
    const { r, calls } = await alwaysFailing();
    r.stop();
    expect(r.pending).toBe(false);
    expect(timers.pending.size).toBe(0);
    await expect(r.run()).rejects.toThrow("down");
    expect(timers.pending.size).toBe(0);
    await timers.advance(120_000);
    expect(calls()).toBe(2);
  });
});

describe("ExpiryTimer", () => {
  let clock: FakeClock;
  let timers: FakeTimers;
  let store: StateStore;
  let leases: LeaseBook;
  let metrics: Metrics;
  let published: number;
  let expiry: ExpiryTimer;

  const client = (name: string, ttl: number): ClientRow => {
    store.insertClient({ name, token_id: name.padEnd(16, "0"), token_hash: new Uint8Array(32), ttl, allow: NO_ALLOW, created_at: 0, ipv6_prefix: null });
    return store.getClient(name)!;
  };

  beforeEach(async () => {
    clock = new FakeClock();
    timers = new FakeTimers(clock);
    store = new StateStore(tempDir("relayctl-expiry-"));
    leases = new LeaseBook(new SqliteStore(store, clock), () => 1200, clock);
    metrics = new Metrics();
    published = 0;
    expiry = new ExpiryTimer(leases, metrics, async () => void published++, timers);
  });
  afterEach(() => {
    expiry.stop();
    store.close();
  });

  test("with no lease, it sleeps at most MAX_TIMER_MS and publishes nothing", async () => {
    expiry.arm();
    expect(timers.delays()).toEqual([MAX_TIMER_MS]);
    await timers.advance(MAX_TIMER_MS);
    expect(published).toBe(0);
    expect(timers.delays()).toEqual([MAX_TIMER_MS]);
  });

  test("aims at the next expiry, expires the lease then, publishes once and re-arms", async () => {
    (await leases.renew(client("a", 10), parseCidr("192.0.2.1")!, "t"));
    (await leases.renew(client("b", 20), parseCidr("192.0.2.2")!, "t"));
    expiry.arm();
    expect(timers.delays()).toEqual([10_005]);
    await timers.advance(10_004);
    expect(store.allLeases()).toHaveLength(2);
    expect(published).toBe(0);
    await timers.advance(1);
    expect(store.allLeases().map((l) => l.client)).toEqual(["b"]);
    expect(leases.index.liveTexts(clock.now())).toEqual(["192.0.2.2"]);
    expect(published).toBe(1);
    expect(metrics.events.get("expire")).toBe(1);
    expect(store.auditLog()[0]).toMatchObject({ event: "expire", client: "a" });
    // Re-armed at b's expiry, 10 s later.
    expect(timers.delays()).toEqual([10_000]);
    await timers.advance(10_000);
    expect(store.allLeases()).toEqual([]);
    expect(published).toBe(2);
    expect(timers.delays()).toEqual([MAX_TIMER_MS]);
  });

  test("a far expiry is approached in MAX_TIMER_MS steps", async () => {
    (await leases.renew(client("a", 3600), parseCidr("192.0.2.1")!, "t"));
    expiry.arm();
    expect(timers.delays()).toEqual([MAX_TIMER_MS]);
    await timers.advance(MAX_TIMER_MS);
    expect(published).toBe(0);
    expect(store.allLeases()).toHaveLength(1);
    expect(timers.pending.size).toBe(1);
  });

  test("arm replaces the waiting timer; stop clears it for good", async () => {
    (await leases.renew(client("a", 100), parseCidr("192.0.2.1")!, "t"));
    expiry.arm();
    (await leases.renew(client("b", 10), parseCidr("192.0.2.2")!, "t"));
    expiry.arm();
    expect(timers.delays()).toEqual([10_005]);
    expiry.stop();
    expect(timers.pending.size).toBe(0);
    expiry.arm();
    expect(timers.pending.size).toBe(0);
  });

  test("a publication that fails does not stop the timer", async () => {
    expiry = new ExpiryTimer(leases, metrics, async () => {
      published++;
      throw new Error("postmap down");
    }, timers);
    (await leases.renew(client("a", 10), parseCidr("192.0.2.1")!, "t"));
    expiry.arm();
    await timers.advance(10_005);
    expect(published).toBe(1);
    expect(store.allLeases()).toEqual([]);
    expect(timers.pending.size).toBe(1);
  });

  test("store unreachable: the index drops the due lease and publishes on time, then retries the store every second", async () => {
    (await leases.renew(client("a", 10), parseCidr("192.0.2.1")!, "t"));
    const down = new SqliteStore(store, clock);
    down.tx = () => Promise.reject(new Error("connection refused"));
    const book = new LeaseBook(down, () => 1200, clock, leases.index);
    expiry = new ExpiryTimer(book, metrics, async () => void published++, timers);
    expiry.arm();
    await timers.advance(10_005);
    expect(published).toBe(1);
    expect(leases.index.liveTexts(clock.now())).toEqual([]);
    expect(leases.index.nextExpiry()).toBeNull();
    // The row is still in the store: the database catches up when it answers.
    expect(store.allLeases()).toHaveLength(1);
    expect(timers.delays()).toEqual([1_000]);
  });
});

describe("planReload", () => {
  test("applies what can change in place, keeps what needs a restart and warns for each", () => {
    const dir = tempDir("relayctl-reload-");
    const write = (name: string, text: string): string => {
      const p = join(dir, name);
      writeFileSync(p, text);
      return p;
    };
    const running = loadServerConfig(write("a.toml", `listen = "127.0.0.1:8443"\nttl = "20m"\nstate_dir = "${dir}/s"\n`));
    const next = loadServerConfig(write("b.toml", `listen = "127.0.0.1:9443"\nttl = "1h"\nstate_dir = "${dir}/s"\nlookup = "policy"\nlog_level = "debug"\nstale_after = "1m"\n`));
    const plan = planReload(running, next);
    expect(plan.config.ttl).toBe(3600);
    expect(plan.config.staleAfter).toBe(60);
    expect(plan.config.logLevel).toBe("debug");
    expect(plan.config.listen).toEqual(running.listen);
    expect(plan.config.lookup).toBe("map");
    expect(plan.warnings).toEqual([
      "reload: listen changed; restart the server for it to take effect",
      "reload: lookup changed; restart the server for it to take effect",
    ]);
    expect(planReload(running, running).warnings).toEqual([]);
  });

  test("the line files, smtpctl and smtpctl_socket of exim and opensmtpd need a restart too", () => {
    const dir = tempDir("relayctl-reload-");
    const p = (name: string, text: string) => {
      writeFileSync(join(dir, name), text);
      return join(dir, name);
    };
    const running = loadServerConfig(p("a.toml", `lookup = "opensmtpd"
state_dir = "${dir}/s"
`));
    const next = loadServerConfig(p("b.toml", `lookup = "opensmtpd"
state_dir = "${dir}/s"
exim_hosts = "/x/hosts"
smtpd_table = "/x/clients"
smtpctl = "/x/smtpctl"
smtpctl_socket = "/x/smtpctl.sock"
`));
    const plan = planReload(running, next);
    expect([plan.config.eximHosts, plan.config.smtpdTable, plan.config.smtpctl, plan.config.smtpctlSocket]).toEqual([running.eximHosts, running.smtpdTable, undefined, undefined]);
    expect(plan.warnings).toEqual(["exim_hosts", "smtpd_table", "smtpctl", "smtpctl_socket"].map((k) => `reload: ${k} changed; restart the server for it to take effect`));
  });

  test("the export files are opened at start: a changed export waits for a restart", () => {
    const dir = tempDir("relayctl-reload-");
    const p = (name: string, text: string) => {
      writeFileSync(join(dir, name), `state_dir = "${dir}/s"\n${text}`);
      return join(dir, name);
    };
    const running = loadServerConfig(p("a.toml", 'export = [{ path = "/x/hosts" }]\n'));
    const next = loadServerConfig(p("b.toml", 'export = [{ path = "/x/hosts", static = ["127.0.0.1"] }]\n'));
    const plan = planReload(running, next);
    expect(plan.config.exports).toBe(running.exports);
    expect(plan.warnings).toEqual(["reload: export changed; restart the server for it to take effect"]);
    expect(planReload(running, loadServerConfig(p("c.toml", 'export = [{ path = "/x/hosts" }]\n'))).warnings).toEqual([]);
  });
});
