import { afterAll, afterEach, beforeEach, describe, expect, test } from "bun:test";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ExitCode, RelayError } from "../../../src/lib/errors.ts";
import { StateStore, type ClientRow, type LeaseRow } from "../../../src/server/state.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

let dir: string;
let store: StateStore;
beforeEach(() => {
  dir = join(tempDir("relayctl-state-"), "state");
  store = new StateStore(dir);
});
afterEach(() => store.close());

const clientRow = (name: string, over: Partial<ClientRow> = {}): ClientRow => ({
  name,
  token_id: name.padEnd(16, "x"),
  token_hash: new Uint8Array(32).fill(7),
  ttl: null,
  allow: "[]",
  created_at: 1000,
  ...over,
});
const lease = (client: string, family: number, ip: string, expires_at: number): LeaseRow => ({ client, family, ip, granted_at: 1, renewed_at: 2, expires_at });

describe("StateStore", () => {
  test("creates state_dir (0700) and state.db", () => {
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, "state.db")).isFile()).toBe(true);
  });

  test("clients round-trip, including the token hash bytes", () => {
    store.insertClient(clientRow("b", { ttl: 90, allow: '["192.0.2.0/24"]' }));
    store.insertClient(clientRow("a"));
    const b = store.getClient("b")!;
    expect(b.ttl).toBe(90);
    expect(b.allow).toBe('["192.0.2.0/24"]');
    expect(Array.from(b.token_hash)).toEqual(new Array(32).fill(7));
    expect(store.getClientByTokenId("bxxxxxxxxxxxxxxx")?.name).toBe("b");
    expect(store.getClientByTokenId("nope")).toBeNull();
    expect(store.listClients().map((c) => c.name)).toEqual(["a", "b"]);
    expect(() => store.insertClient(clientRow("a", { token_id: "other" }))).toThrow();
    expect(() => store.insertClient(clientRow("c", { token_id: "axxxxxxxxxxxxxxx" }))).toThrow();
  });

  test("one lease per client and family; upsert replaces", () => {
    store.insertClient(clientRow("a"));
    store.upsertLease(lease("a", 4, "192.0.2.1", 100));
    store.upsertLease(lease("a", 6, "2001:db8::1", 100));
    store.upsertLease(lease("a", 4, "192.0.2.2", 200));
    expect(store.leasesOf("a").map((l) => [l.family, l.ip, l.expires_at])).toEqual([
      [4, "192.0.2.2", 200],
      [6, "2001:db8::1", 100],
    ]);
  });

  test("a lease needs an existing client, and deleting the client cascades", () => {
    expect(() => store.upsertLease(lease("ghost", 4, "192.0.2.1", 100))).toThrow();
    store.insertClient(clientRow("a"));
    store.upsertLease(lease("a", 4, "192.0.2.1", 100));
    expect(store.deleteClient("a")).toBe(true);
    expect(store.allLeases()).toEqual([]);
    expect(store.deleteClient("a")).toBe(false);
  });

  test("liveAddresses is distinct, sorted and strictly before expiry; deleteExpired is the complement", () => {
    for (const n of ["a", "b", "c"]) store.insertClient(clientRow(n));
    store.upsertLease(lease("a", 4, "192.0.2.9", 100));
    store.upsertLease(lease("b", 4, "192.0.2.9", 200));
    store.upsertLease(lease("c", 4, "192.0.2.1", 100));
    expect(store.liveAddresses(99)).toEqual(["192.0.2.1", "192.0.2.9"]);
    expect(store.liveAddresses(100)).toEqual(["192.0.2.9"]);
    expect(store.liveAddresses(200)).toEqual([]);
    expect(store.nextExpiry()).toBe(100);
    expect(store.deleteExpired(99)).toEqual([]);
    expect(store.deleteExpired(100).map((l) => l.client).sort()).toEqual(["a", "c"]);
    expect(store.nextExpiry()).toBe(200);
  });

  test("tx rolls back everything when fn throws", () => {
    expect(() =>
      store.tx(() => {
        store.insertClient(clientRow("a"));
        throw new Error("abort");
      }),
    ).toThrow("abort");
    expect(store.getClient("a")).toBeNull();
    expect(store.tx(() => 42)).toBe(42);
  });

  test("auditLog filters by client and time, newest first, with a limit", () => {
    for (let i = 0; i < 5; i++) store.audit({ ts: i * 10, event: "grant", client: i % 2 ? "odd" : "even", ip: `192.0.2.${i}`, source: null, detail: null });
    expect(store.auditLog().map((e) => e.ts)).toEqual([40, 30, 20, 10, 0]);
    expect(store.auditLog({ client: "odd" }).map((e) => e.ip)).toEqual(["192.0.2.3", "192.0.2.1"]);
    expect(store.auditLog({ since: 20 }).map((e) => e.ts)).toEqual([40, 30, 20]);
    expect(store.auditLog({ limit: 2 }).map((e) => e.ts)).toEqual([40, 30]);
  });

  test("dataVersion changes when another connection commits, not for our own writes", () => {
    const other = new StateStore(dir);
    try {
      const v0 = store.dataVersion();
      store.insertClient(clientRow("mine"));
      expect(store.dataVersion()).toBe(v0);
      other.insertClient(clientRow("theirs"));
      expect(store.dataVersion()).not.toBe(v0);
      expect(store.getClient("theirs")).not.toBeNull();
    } finally {
      other.close();
    }
  });

  test("an unusable state_dir is a usage error with a hint", () => {
    const file = join(tempDir(), "not-a-dir");
    writeFileSync(file, "");
    let err: unknown;
    try {
      new StateStore(file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RelayError);
    expect((err as RelayError).exitCode).toBe(ExitCode.USAGE);
    expect((err as RelayError).message).toContain(`cannot open state in ${file}`);
  });
});

describe("audit retention", () => {
  test("pruneAudit removes only entries older than the cut-off", () => {
    for (const ts of [1000, 2000, 3000]) store.audit({ ts, event: "renew", client: null, ip: null, source: null, detail: null });
    expect(store.pruneAudit(2500)).toBe(2);
    expect(store.auditLog().map((r) => r.ts)).toEqual([3000]);
  });
});

describe("counts", () => {
  test("counts clients and leases without loading them", () => {
    expect(store.counts()).toEqual({ clients: 0, leases: 0 });
    store.insertClient(clientRow("a"));
    store.insertClient(clientRow("b", { token_id: "bbbbbbbbbbbbbbbb" }));
    store.upsertLease(lease("a", 4, "192.0.2.1", 10));
    expect(store.counts()).toEqual({ clients: 2, leases: 1 });
  });
});
