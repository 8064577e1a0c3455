import { afterAll, afterEach, beforeEach, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ExitCode, RelayError } from "../../../src/lib/errors.ts";
import { Database } from "bun:sqlite";
import { SCHEMA_VERSION, StateStore, type ClientRow, type LeaseRow } from "../../../src/server/state.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";
import { NO_ALLOW, parseAllowList } from "../../../src/server/allow.ts";

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
  allow: NO_ALLOW,
  created_at: 1000,
  ipv6_prefix: null,
  ...over,
});
const lease = (client: string, family: number, ip: string, expires_at: number): LeaseRow => ({ client, family, ip, granted_at: 1, renewed_at: 2, expires_at, renewals: 0 });

describe("StateStore", () => {
  test("creates state_dir (0700) and state.db", () => {
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, "state.db")).isFile()).toBe(true);
  });

  test("clients round-trip, including the token hash bytes", () => {
    store.insertClient(clientRow("b", { ttl: 90, allow: parseAllowList('["192.0.2.0/24"]') }));
    store.insertClient(clientRow("a"));
    const b = store.getClient("b")!;
    expect(b.ttl).toBe(90);
    expect(b.allow.stored).toBe('["192.0.2.0/24"]');
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

  test("extendLease moves only a live lease that holds exactly that address", () => {
    store.insertClient(clientRow("a"));
    store.upsertLease({ ...lease("a", 4, "192.0.2.1", 100), renewals: 2 });
    const a = clientRow("a");
    expect(store.extendLease(a, 4, "192.0.2.2", 50, 500)).toBeNull();
    expect(store.extendLease(a, 6, "192.0.2.1", 50, 500)).toBeNull();
    expect(store.extendLease({ ...a, name: "b" }, 4, "192.0.2.1", 50, 500)).toBeNull();
    // Expired at now: a renewal then is a new grant, not an extension.
    expect(store.extendLease(a, 4, "192.0.2.1", 100, 500)).toBeNull();
    // The client's row changed since the renewal was checked (server edit): the full path decides.
    expect(store.extendLease({ ...a, allow: parseAllowList('["192.0.2.0/24"]') }, 4, "192.0.2.1", 50, 500)).toBeNull();
    expect(store.extendLease({ ...a, ttl: 60 }, 4, "192.0.2.1", 50, 500)).toBeNull();
    expect(store.extendLease({ ...a, ipv6_prefix: 64 }, 4, "192.0.2.1", 50, 500)).toBeNull();
    expect(store.leasesOf("a")[0]).toMatchObject({ expires_at: 100, renewals: 2 });
    expect(store.extendLease(a, 4, "192.0.2.1", 99, 500)).toEqual({ ...lease("a", 4, "192.0.2.1", 500), renewed_at: 99, renewals: 3 });
    expect(store.leasesOf("a")[0]).toMatchObject({ granted_at: 1, renewed_at: 99, expires_at: 500, renewals: 3 });
  });

  test("a lease needs an existing client, and deleting the client cascades", () => {
    expect(() => store.upsertLease(lease("ghost", 4, "192.0.2.1", 100))).toThrow();
    store.insertClient(clientRow("a"));
    store.upsertLease(lease("a", 4, "192.0.2.1", 100));
    expect(store.deleteClient("a")).toBe(true);
    expect(store.allLeases()).toEqual([]);
    expect(store.deleteClient("a")).toBe(false);
  });

  test("deleteExpired removes exactly the leases expired at now and returns them", () => {
    for (const n of ["a", "b", "c"]) store.insertClient(clientRow(n));
    store.upsertLease(lease("a", 4, "192.0.2.9", 100));
    store.upsertLease(lease("b", 4, "192.0.2.9", 200));
    store.upsertLease(lease("c", 4, "192.0.2.1", 100));
    expect(store.deleteExpired(99)).toEqual([]);
    expect(store.deleteExpired(100).map((l) => l.client).sort()).toEqual(["a", "c"]);
    expect(store.allLeases().map((l) => l.client)).toEqual(["b"]);
  });

  test("ipv6_prefix and renewals round-trip; an upsert replaces the renewal count", () => {
    store.insertClient(clientRow("a", { ipv6_prefix: 56 }));
    store.insertClient(clientRow("b", { token_id: "bbbbbbbbbbbbbbbb" }));
    expect(store.getClient("a")!.ipv6_prefix).toBe(56);
    expect(store.getClient("b")!.ipv6_prefix).toBeNull();
    store.upsertLease({ ...lease("a", 4, "192.0.2.1", 100), renewals: 3 });
    expect(store.leasesOf("a")[0]!.renewals).toBe(3);
    store.upsertLease({ ...lease("a", 4, "192.0.2.1", 200), renewals: 4 });
    expect(store.leasesOf("a")[0]).toMatchObject({ renewals: 4, expires_at: 200 });
  });

  test("setToken swaps the token of an existing client only", () => {
    store.insertClient(clientRow("a"));
    const hash = new Uint8Array(32).fill(9);
    expect(store.setToken("a", "0123456789abcdef", hash)).toBe(true);
    expect(store.getClientByTokenId("axxxxxxxxxxxxxxx")).toBeNull();
    const a = store.getClientByTokenId("0123456789abcdef")!;
    expect(a.name).toBe("a");
    expect(Array.from(a.token_hash)).toEqual(new Array(32).fill(9));
    expect(store.setToken("ghost", "fedcba9876543210", hash)).toBe(false);
  });

  test("audit rows count 1 by default; setAuditCount raises one row's count", () => {
    const id = store.audit({ ts: 1, event: "refuse", client: null, ip: null, source: "192.0.2.1", detail: "unauthorized: x" });
    const other = store.audit({ ts: 2, event: "refuse", client: null, ip: null, source: null, detail: "summary", count: 40 });
    expect(other).toBeGreaterThan(id);
    store.setAuditCount(id, 7);
    const rows = store.auditLog();
    expect(rows.map((r) => [r.id, r.count])).toEqual([
      [other, 40],
      [id, 7],
    ]);
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

/** The schema of the first release (user_version 0): no renewals, ipv6_prefix or count columns. */
const V0_SCHEMA = `
CREATE TABLE clients (
  name TEXT PRIMARY KEY,
  token_id TEXT NOT NULL UNIQUE,
  token_hash BLOB NOT NULL,
  ttl INTEGER,
  allow TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE leases (
  client TEXT NOT NULL REFERENCES clients(name) ON DELETE CASCADE,
  family INTEGER NOT NULL,
  ip TEXT NOT NULL,
  granted_at INTEGER NOT NULL,
  renewed_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (client, family)
) STRICT;
CREATE INDEX leases_expiry ON leases(expires_at);
CREATE TABLE audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts INTEGER NOT NULL,
  event TEXT NOT NULL,
  client TEXT,
  ip TEXT,
  source TEXT,
  detail TEXT
) STRICT;
CREATE INDEX audit_ts ON audit(ts);
`;

describe("schema migrations", () => {
  test("SCHEMA_VERSION is at least 1 and a new database is created at it", () => {
    expect(SCHEMA_VERSION).toBeGreaterThanOrEqual(1);
    expect((store.db.query("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(SCHEMA_VERSION);
  });

  test("a v0 database is migrated in place and keeps its rows", () => {
    const old = join(tempDir("relayctl-state-v0-"), "state");
    mkdirSync(old, { mode: 0o700 });
    const db = new Database(join(old, "state.db"), { create: true });
    db.exec(V0_SCHEMA);
    db.query("INSERT INTO clients (name, token_id, token_hash, ttl, allow, created_at) VALUES (?, ?, ?, ?, ?, ?)").run("office", "0123456789abcdef", new Uint8Array(32).fill(3), 600, '["192.0.2.0/24"]', 1000);
    db.query("INSERT INTO leases (client, family, ip, granted_at, renewed_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)").run("office", 4, "192.0.2.7", 10, 20, 30);
    db.query("INSERT INTO audit (ts, event, client, ip, source, detail) VALUES (?, ?, ?, ?, ?, ?)").run(5, "grant", "office", "192.0.2.7", "192.0.2.7", null);
    expect((db.query("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(0);
    db.close();

    const migrated = new StateStore(old);
    try {
      expect((migrated.db.query("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(SCHEMA_VERSION);
      const c = migrated.getClientByTokenId("0123456789abcdef")!;
      expect(c).toMatchObject({ name: "office", ttl: 600, allow: parseAllowList('["192.0.2.0/24"]'), created_at: 1000, ipv6_prefix: null });
      expect(Array.from(c.token_hash)).toEqual(new Array(32).fill(3));
      expect(migrated.allLeases()).toEqual([{ client: "office", family: 4, ip: "192.0.2.7", granted_at: 10, renewed_at: 20, expires_at: 30, renewals: 0 }]);
      const [a] = migrated.auditLog();
      expect(a).toMatchObject({ ts: 5, event: "grant", client: "office", ip: "192.0.2.7", count: 1 });
      // The new columns are writable.
      migrated.upsertLease({ client: "office", family: 4, ip: "192.0.2.7", granted_at: 10, renewed_at: 40, expires_at: 50, renewals: 1 });
      expect(migrated.leasesOf("office")[0]!.renewals).toBe(1);
    } finally {
      migrated.close();
    }
    // Opening again runs nothing twice.
    const again = new StateStore(old);
    try {
      expect(again.allLeases()).toHaveLength(1);
      expect((again.db.query("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(SCHEMA_VERSION);
    } finally {
      again.close();
    }
  });

  test("a database from a newer relayctl is refused, untouched", () => {
    const newer = join(tempDir("relayctl-state-new-"), "state");
    mkdirSync(newer, { mode: 0o700 });
    const db = new Database(join(newer, "state.db"), { create: true });
    db.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    let err: unknown;
    try {
      new StateStore(newer).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RelayError);
    expect((err as RelayError).exitCode).toBe(ExitCode.USAGE);
    expect((err as RelayError).message).toContain(`schema version ${SCHEMA_VERSION + 1}`);
  });
});

// Root runs admin commands on the service user's state_dir (uid 65534 stands in for it).
describe.skipIf(process.getuid?.() !== 0)("state opened by root in another user's state_dir", () => {
  test("files are that user's, and this connection keeps its locks: nobody else may take the database and drop its WAL", () => {
    const owned = tempDir("relayctl-state-owned-");
    chownSync(owned, 65534, 65534);
    chmodSync(owned, 0o700);
    const s = new StateStore(owned);
    try {
      s.listClients();
      for (const f of ["state.db", "state.db-wal", "state.db-shm"]) expect({ f, uid: statSync(join(owned, f)).uid }).toEqual({ f, uid: 65534 });
      // Handing files over after the open closed a descriptor of each, which dropped
      // this connection's locks: another process got EXCLUSIVE and, closing as the
      // last connection, deleted the WAL this one still wrote to.
      const probe = `import { Database } from "bun:sqlite"; const db = new Database(process.env.DB); try { db.exec("PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT"); console.log("taken"); } catch { console.log("busy"); }`;
      const r = Bun.spawnSync([process.execPath, "-e", probe], { env: { ...process.env, DB: join(owned, "state.db") }, timeout: 10_000 });
      expect(r.stdout.toString().trim()).toBe("busy");
      expect(statSync(join(owned, "state.db-wal")).isFile()).toBe(true);
    } finally {
      s.close();
    }
  });
});
