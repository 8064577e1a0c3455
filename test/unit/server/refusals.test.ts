import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { parseIp, type Ip } from "../../../src/lib/ip.ts";
import { RefusalLog } from "../../../src/server/refusals.ts";
import { StateStore, type AuditRow } from "../../../src/server/state.ts";
import { FakeClock, removeTempDirs, silenceLogger, tempDir } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const ip = (s: string): Ip => parseIp(s)!;
const refusal = (source: string | null, code = "unauthorized", client: string | null = null) => ({ code, message: "m", client, source: source === null ? null : ip(source) });

let store: StateStore;
let clock: FakeClock;
let log: RefusalLog;

beforeEach(() => {
  store = new StateStore(tempDir("relayctl-refusals-"));
  clock = new FakeClock();
  // 3 rows a minute, bursts end after 10 s of quiet.
  log = new RefusalLog(store, clock, 3, 10_000);
});
afterEach(() => store.close());

/** Refuse rows, oldest first. */
const rows = (): AuditRow[] =>
  store
    .auditLog()
    .filter((r) => r.event === "refuse")
    .reverse();

describe("RefusalLog bursts", () => {
  test("one row per source and reason while the burst lasts; flush writes its count", () => {
    for (let i = 0; i < 5; i++) {
      log.record(refusal("198.51.100.7"));
      clock.advance(1000);
    }
    expect(rows().map((r) => r.count)).toEqual([1]); // not flushed yet
    log.flush();
    const [row] = rows();
    expect(rows()).toHaveLength(1);
    expect(row).toMatchObject({ event: "refuse", source: "198.51.100.7", client: null, detail: "unauthorized: m", count: 5 });
    // Later refusals of the same burst raise the count again at the next flush.
    log.record(refusal("198.51.100.7"));
    log.flush();
    expect(rows().map((r) => r.count)).toEqual([6]);
  });

  test("another reason, client or source is another row", () => {
    log.record(refusal("198.51.100.7"));
    log.record(refusal("198.51.100.7", "address_not_allowed", "office"));
    log.record(refusal("198.51.100.7", "address_not_allowed", "home"));
    log.record(refusal("198.51.100.8"));
    log.record(refusal("198.51.100.7"));
    log.flush();
    expect(rows().slice(0, 3).map((r) => [r.source, r.client, r.detail!.split(":")[0], r.count])).toEqual([
      ["198.51.100.7", null, "unauthorized", 2],
      ["198.51.100.7", "office", "address_not_allowed", 1],
      ["198.51.100.7", "home", "address_not_allowed", 1],
    ]);
    // The fourth distinct burst was over the cap of 3 rows this minute: only the summary row counts it.
    expect(rows().some((r) => r.source === "198.51.100.8")).toBe(false);
    expect(rows()[3]).toMatchObject({ source: null, count: 1 });
  });

  test("IPv6 sources in one /64 share a burst", () => {
    log.record(refusal("2001:db8:1:2::1"));
    log.record(refusal("2001:db8:1:2::2"));
    log.record(refusal("2001:db8:1:3::1"));
    log.flush();
    expect(rows().map((r) => [r.source, r.count])).toEqual([
      ["2001:db8:1:2::1", 2],
      ["2001:db8:1:3::1", 1],
    ]);
  });

  test("after a quiet gap the next refusal starts a new row", () => {
    log.record(refusal("198.51.100.7"));
    log.record(refusal("198.51.100.7"));
    clock.advance(10_000);
    log.flush(); // writes count 2, forgets the ended burst
    clock.advance(60_000);
    log.record(refusal("198.51.100.7"));
    log.flush();
    expect(rows().map((r) => r.count)).toEqual([2, 1]);
  });

  // SRC BUG (refusals.ts:48-61): when a burst has ended but no flush() ran
  // since its last refusal, record() replaces it with a new burst and the
  // unflushed count is lost (here: 2 refusals recorded as 1). The server
  // flushes every 5 s, well inside the 60 s gap, so it rarely shows there.
  test("an ended burst keeps its count even when no flush ran before the next burst", () => {
    log.record(refusal("198.51.100.7"));
    clock.advance(1000);
    log.record(refusal("198.51.100.7"));
    clock.advance(70_000);
    log.record(refusal("198.51.100.7"));
    log.flush();
    expect(rows().map((r) => r.count)).toEqual([2, 1]);
  });
});

describe("RefusalLog cap", () => {
  test("at most N new rows a minute, then one summary row with the count of the rest, kept current by flush", () => {
    for (let i = 1; i <= 10; i++) log.record(refusal(`192.0.2.${i}`));
    // A source already over the cap counts once per refusal, not per source.
    log.record(refusal("192.0.2.10"));
    // The summary row is there from the first refusal over the cap; its count follows at flush.
    expect(rows()).toHaveLength(4);
    expect(rows()[3]!.count).toBe(1);
    log.flush();
    expect(rows()[3]!.count).toBe(8);
    clock.advance(60_000);
    log.flush();
    const all = rows();
    expect(all).toHaveLength(4);
    expect(all.slice(0, 3).map((r) => r.source)).toEqual(["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    expect(all[3]).toMatchObject({ source: null, client: null, count: 8 });
    expect(all[3]!.detail).toContain("from 7 sources");
    // The next minute starts with a fresh allowance and no summary if nothing overflowed.
    log.record(refusal("192.0.2.50"));
    clock.advance(60_000);
    log.flush();
    expect(rows()).toHaveLength(5);
    expect(rows()[4]!.source).toBe("192.0.2.50");
  });

  test("a refusal without a source is recorded with source null", () => {
    log.record(refusal(null, "no_address"));
    log.record(refusal(null, "no_address"));
    log.flush();
    expect(rows().map((r) => [r.source, r.count])).toEqual([[null, 2]]);
  });

  test("an unwritable audit log never throws at the caller", () => {
    store.close();
    expect(() => log.record(refusal("192.0.2.1"))).not.toThrow();
    expect(() => log.flush()).not.toThrow();
    store = new StateStore(tempDir("relayctl-refusals-"));
  });
});
