import { afterAll, afterEach, beforeEach, describe, expect, test } from "bun:test";
import { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import type { LeaseRow } from "../../../src/server/state.ts";
import { FakeClock, removeTempDirs, tempDir } from "../helpers.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";

afterAll(removeTempDirs);

let store: SqliteStore;
let commits: number;
beforeEach(() => {
  store = SqliteStore.open(tempDir("relayctl-sqlitestore-"), new FakeClock());
  for (let i = 0; i < 5; i++) {
    store.state.insertClient({ name: `c${i}`, token_id: `${i}`.repeat(16), token_hash: new Uint8Array(32), ttl: null, allow: NO_ALLOW, created_at: 0, ipv6_prefix: null });
  }
  // Counts the COMMITs the store runs.
  commits = 0;
  const exec = store.state.db.exec.bind(store.state.db);
  store.state.db.exec = ((sql: string) => {
    if (/^COMMIT/.test(sql)) commits++;
    return exec(sql);
  }) as typeof store.state.db.exec;
});
afterEach(() => store.close());

const lease = (client: string, ip: string): LeaseRow => ({ client, family: 4, ip, granted_at: 0, renewed_at: 0, expires_at: 1000, renewals: 0 });

describe("SqliteStore group commit", () => {
  test("transactions that arrive together share one COMMIT; each resolves after it", async () => {
    const done = await Promise.all([0, 1, 2, 3, 4].map((i) => store.tx(async (t) => {
      await t.upsertLease(lease(`c${i}`, `192.0.2.${i + 1}`));
      return i;
    })));
    expect(done).toEqual([0, 1, 2, 3, 4]);
    expect(commits).toBe(1);
    expect(store.state.allLeases().map((l) => l.ip)).toEqual(["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"]);
  });

  test("a transaction that throws rolls back its own writes only; the others commit", async () => {
    const results = await Promise.allSettled([
      store.tx(async (t) => t.upsertLease(lease("c0", "192.0.2.1"))),
      store.tx(async (t) => {
        await t.upsertLease(lease("c1", "192.0.2.2"));
        throw new Error("refused half-way");
      }),
      store.tx(async (t) => t.upsertLease(lease("c2", "192.0.2.3"))),
    ]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect(store.state.allLeases().map((l) => l.client)).toEqual(["c0", "c2"]);
  });

  test("transactions that arrive later get a batch of their own, in order", async () => {
    const order: number[] = [];
    await store.tx(async () => void order.push(1));
    await store.tx(async () => void order.push(2));
    expect(order).toEqual([1, 2]);
    expect(commits).toBe(2);
  });
});
