// The runtime parts the skeleton starts, reloads and stops, each on its own with a fake clock and timers.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseCidr } from "../../../src/lib/ip.ts";
import { generateSelfSigned } from "../../../src/lib/tls.ts";
import type { ServerConfig } from "../../../src/lib/config.ts";
import type { RefusalLog } from "../../../src/server/refusals.ts";
import type { Store } from "../../../src/server/stores/index.ts";
import { LeaseBook } from "../../../src/server/leases.ts";
import type { Lookup, LookupStatus } from "../../../src/server/lookups/index.ts";
import { mapLookupType } from "../../../src/server/lookups/map.ts";
import { Metrics } from "../../../src/server/metrics.ts";
import { Exports } from "../../../src/server/exports.ts";
import { Follower, RECONCILE_MS } from "../../../src/server/runtime/follower.ts";
import { AUDIT_PRUNE_MS, CHECKPOINT_MS, Housekeeping, LOOKUP_CHECK_MS, REFUSAL_FLUSH_MS, serverChores, type Chore } from "../../../src/server/runtime/housekeeping.ts";
import { Listener } from "../../../src/server/runtime/listener.ts";
import { Publisher, STATUS_DELAY_MS } from "../../../src/server/runtime/publisher.ts";
import { statusPath, type ServerStatus } from "../../../src/server/runtime/status.ts";
import { StateStore, type ClientRow } from "../../../src/server/state.ts";
import { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";
import type { Watchdog } from "../../../src/server/runtime/watchdog.ts";
import { FakeClock, FakeTimers, removeTempDirs, settle, silenceLogger, tempDir, testService } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const client = (name: string): ClientRow => ({ name, token_id: name, token_hash: new Uint8Array(32), ttl: 20, allow: NO_ALLOW, ipv6_prefix: null, created_at: 0 });

/** A lookup that counts publications and fails while told to. */
class CountingLookup implements Lookup {
  readonly type = mapLookupType;
  published = 0;
  failing = false;
  async publish(): Promise<void> {
    this.published++;
    if (this.failing) throw new Error("postmap failed");
  }
  async check(): Promise<void> {}
  problems(): string[] {
    return [];
  }
  status(): LookupStatus {
    return { lookup: "map", target: "/m.db", entries: this.published };
  }
  async close(): Promise<void> {}
}

describe("Publisher", () => {
  let clock: FakeClock;
  let timers: FakeTimers;
  let leases: LeaseBook;
  let lookup: CountingLookup;
  let stateDir: string;
  let publisher: Publisher;
  let store: SqliteStore;
  let written: number;
  beforeEach(async () => {
    clock = new FakeClock();
    timers = new FakeTimers(clock);
    stateDir = tempDir();
    store = new SqliteStore(new StateStore(join(stateDir, "state")), clock);
    leases = new LeaseBook(store, () => 60, clock);
    await store.tx(async (t) => t.insertClient(client("office")));
    lookup = new CountingLookup();
    written = 0;
    publisher = new Publisher({ leases, lookup, exports: new Exports([]), metrics: new Metrics(), timers, stateDir, status: () => (written++, { pin: "p" }) as unknown as ServerStatus });
  });

  test("writes no status before start; after it, many changes make one write STATUS_DELAY_MS later", async () => {
    await publisher.publish();
    publisher.statusSoon();
    expect(existsSync(statusPath(stateDir))).toBe(false);
    await publisher.start();
    expect(written).toBe(0);
    for (let i = 0; i < 5; i++) await publisher.leaseChanged();
    expect(written).toBe(0);
    await timers.advance(STATUS_DELAY_MS);
    expect(written).toBe(1);
    expect(existsSync(statusPath(stateDir))).toBe(true);
    publisher.stop();
    publisher.statusSoon();
    await timers.advance(STATUS_DELAY_MS);
    expect(written).toBe(1);
  });

  test("a failed publication is retried in the background; a lease change re-arms expiry at the lease's end", async () => {
    await publisher.start();
    await leases.renew((await store.getClient("office"))!, parseCidr("192.0.2.7")!, "t");
    lookup.failing = true;
    await expect(publisher.leaseChanged()).rejects.toThrow("postmap failed");
    lookup.failing = false;
    const before = lookup.published;
    await timers.advance(1000);
    expect(lookup.published).toBe(before + 1);
    await publisher.leaseChanged();
    // 20 s lease, 1 s of it spent retrying: the timer aims just past its end.
    expect(timers.delays()).toContain(19_005);
    await timers.advance(19_005);
    expect(leases.index.liveCount(clock.now())).toBe(0);
    expect(lookup.published).toBeGreaterThan(before + 2);
    publisher.stop();
  });
});

describe("Follower", () => {
  test("notices during a catch-up fold into one more catch-up; each successful one counts clients and calls back", async () => {
    const clock = new FakeClock();
    const store = new SqliteStore(new StateStore(join(tempDir(), "state")), clock);
    const leases = new LeaseBook(store, () => 60, clock);
    let catchUps = 0;
    const catchUp = leases.catchUp.bind(leases);
    leases.catchUp = async (full) => {
      catchUps++;
      await settle();
      return catchUp(full);
    };
    let refreshed = 0;
    const f = new Follower({ store, leases, timers: new FakeTimers(clock), onRefreshed: (changed) => (refreshed += changed ? 1 : 100) });
    await f.start();
    await store.tx(async (t) => t.insertClient(client("a")));
    const first = f.notice();
    f.notice();
    f.notice();
    await first;
    expect(catchUps).toBe(2);
    expect(refreshed).toBe(2);
    expect(f.clients).toBe(1);
    f.stop();
    await store.close();
  });

  test("assembled: a catch-up that names no client publishes nothing; one that names a client publishes", async () => {
    const clock = new FakeClock();
    let named: string[] = [];
    // The log as a shared store would answer it: nobody, or the clients named.
    const t = await testService(tempDir(), clock, {
      store: (inner) =>
        new Proxy(inner, {
          get(target, key) {
            if (key === "changes") return async () => ({ clients: named, enrolled: false, next: null });
            const v = Reflect.get(target, key);
            return typeof v === "function" ? v.bind(target) : v;
          },
        }) as unknown as Store,
    });
    let publishes = 0;
    const publish = t.lookup.publish.bind(t.lookup);
    t.lookup.publish = async () => {
      publishes++;
      return publish();
    };
    for (let i = 0; i < 3; i++) await t.skeleton.follower.notice();
    await settle();
    expect(publishes).toBe(0);
    named = ["office"];
    await t.skeleton.follower.notice();
    await settle();
    expect(publishes).toBe(1);
    await t.store.close();
  });

  test("currentAt is when the last successful reload began; a failed one leaves it", async () => {
    const clock = new FakeClock();
    const store = new SqliteStore(new StateStore(join(tempDir(), "state")), clock);
    const leases = new LeaseBook(store, () => 60, clock);
    const f = new Follower({ store, leases, clock, onRefreshed: () => undefined });
    expect(f.currentAt).toBeNull();
    const began = clock.now();
    const catchUp = leases.catchUp.bind(leases);
    leases.catchUp = async (full) => {
      clock.advance(3_000);
      return catchUp(full);
    };
    await f.notice();
    expect(f.currentAt).toBe(began);
    leases.catchUp = async () => {
      throw new Error("permission denied for table leases");
    };
    clock.advance(10_000);
    await f.notice();
    expect(f.currentAt).toBe(began);
  });

  test("a failed catch-up is no refresh; the reconcile runs every RECONCILE_MS beside the catch-ups, and a failed one is tried again as a full catch-up", async () => {
    const clock = new FakeClock();
    const timers = new FakeTimers(clock);
    const store = new SqliteStore(new StateStore(join(tempDir(), "state")), clock);
    const leases = new LeaseBook(store, () => 60, clock);
    const asked: string[] = [];
    let fail = false;
    const catchUp = leases.catchUp.bind(leases);
    leases.catchUp = async (full) => {
      asked.push(full ? "full" : "catch-up");
      if (fail) throw new Error("down");
      return catchUp(full);
    };
    const reconcile = leases.reconcile.bind(leases);
    leases.reconcile = async () => {
      asked.push("reconcile");
      if (fail) throw new Error("down");
      return reconcile();
    };
    let refreshed = 0;
    const f = new Follower({ store, leases, timers, onRefreshed: () => refreshed++ });
    await f.start();
    fail = true;
    await f.notice();
    expect(refreshed).toBe(0);
    await timers.advance(RECONCILE_MS * 1.2);
    await settle();
    expect(asked).toEqual(["catch-up", "reconcile", "full"]);
    expect(refreshed).toBe(0);
    fail = false;
    await f.notice();
    expect(asked).toEqual(["catch-up", "reconcile", "full", "full"]);
    expect(refreshed).toBe(1);
    await timers.advance(RECONCILE_MS * 1.2);
    await settle();
    expect(asked.slice(4)).toEqual(["reconcile"]);
    expect(refreshed).toBe(2);
    f.stop();
    await store.close();
  });

  test("a catch-up runs while a slow reconcile is still reading, and the reconcile's older rows do not undo it", async () => {
    const clock = new FakeClock();
    const store = new SqliteStore(new StateStore(join(tempDir(), "state")), clock);
    const leases = new LeaseBook(store, () => 600, clock);
    store.state.insertClient({ ...client("office"), ttl: null });
    await leases.renew(store.state.getClient("office")!, parseCidr("192.0.2.10")!, "t");
    const f = new Follower({ store, leases, clock, onRefreshed: () => undefined });
    await f.notice();
    // A reconcile whose first page was read before the revoke and arrives after it.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const pages = store.leasePages.bind(store);
    store.leasePages = async function* (size: number) {
      const read = [];
      for await (const p of pages(size)) read.push(p);
      await gate;
      yield* read;
    };
    const reconciling = f.reconcile();
    await settle();
    // Revoked through another host; this one hears of it from the change log (faked: SQLite's names nobody).
    await new LeaseBook(store, () => 600, clock).revoke("office", "t");
    store.changes = async () => ({ clients: ["office"], enrolled: false, next: null as never });
    const tx = Date.now();
    await f.notice();
    expect(Date.now() - tx).toBeLessThan(1_000);
    expect(leases.index.liveTexts(clock.now())).toEqual([]);
    release();
    await reconciling;
    expect(leases.index.liveTexts(clock.now())).toEqual([]);
    await store.close();
  });
});

describe("Housekeeping", () => {
  test("each chore runs every everyMs from the end of its last run, until stopped", async () => {
    const clock = new FakeClock();
    const timers = new FakeTimers(clock);
    const runs: string[] = [];
    const chores: Chore[] = [
      { name: "fast", everyMs: 2_000, run: () => void runs.push("fast") },
      { name: "slow", everyMs: 5_000, run: () => void runs.push("slow") },
    ];
    const h = new Housekeeping(chores, timers);
    h.start();
    await timers.advance(10_000);
    expect(runs.filter((r) => r === "fast").length).toBe(5);
    expect(runs.filter((r) => r === "slow").length).toBe(2);
    h.stop();
    await timers.advance(10_000);
    expect(runs.length).toBe(7);
  });

  test("the server's table: prune hourly, flush refusals, checkpoint, check the lookup and then update status, check for overdue clients", async () => {
    const timers = new FakeTimers(new FakeClock());
    const n = { pruned: 0, flushed: 0, maintained: 0, checked: 0, overdue: 0 };
    const store = { maintain: () => void n.maintained++, pruneAudit: async () => (n.pruned++, 0) } as unknown as Store;
    const refusals = { flush: () => void n.flushed++ } as unknown as RefusalLog;
    const chores = serverChores({ store, lookup: new CountingLookup(), exports: new Exports([]), refusals, config: () => ({ auditRetention: 86400, overdueCheck: 4 }) as ServerConfig, checked: () => void n.checked++, watchdog: { check: async () => (n.overdue++, []) } as unknown as Watchdog });
    expect(chores.map((c) => [c.name, c.everyMs])).toEqual([
      ["audit prune", AUDIT_PRUNE_MS],
      ["refusal flush", REFUSAL_FLUSH_MS],
      ["checkpoint", CHECKPOINT_MS],
      ["lookup check", LOOKUP_CHECK_MS],
      ["overdue check", 4_000],
      ["export check", LOOKUP_CHECK_MS],
    ]);
    const h = new Housekeeping(chores, timers);
    h.start();
    await timers.advance(10_000);
    expect(n).toEqual({ pruned: 0, flushed: 2, maintained: 1, checked: 5, overdue: 2 });
    h.stop();
  });
});

describe("Listener", () => {
  test("a new certificate is bound beside the old one and the pin follows; the same one changes nothing", async () => {
    const pair = (): { certPem: string; keyPem: string; certPath: string } => ({ ...generateSelfSigned({ hosts: ["127.0.0.1"] }), certPath: "/c.pem" });
    const first = pair();
    const l = new Listener({ host: "127.0.0.1", port: 0 }, first as never, { "/x": () => new Response("x") });
    l.start();
    try {
      const pin = l.pin;
      expect(l.reload(first as never)).toBe(true);
      expect(l.pinChangedAt).toBeNull();
      expect(l.reload(pair() as never)).toBe(true);
      expect(l.pin).not.toBe(pin);
      expect(l.pinChangedAt).not.toBeNull();
      const res = await fetch(`https://127.0.0.1:${l.port}/x`, { tls: { rejectUnauthorized: false } } as RequestInit);
      expect(await res.text()).toBe("x");
    } finally {
      await l.stop();
    }
  });
});
