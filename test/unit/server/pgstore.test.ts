// The PostgreSQL store against a real, private PostgreSQL cluster (unix
// socket only). Skipped where PostgreSQL is not installed; CI installs it.
import { SQL } from "bun";
import { afterAll, beforeAll, describe, expect, setSystemTime, test } from "bun:test";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseCidr } from "../../../src/lib/ip.ts";
import { systemClock } from "../../../src/lib/clock.ts";
import { LeaseBook } from "../../../src/server/leases.ts";
import type { ClientRow } from "../../../src/server/state.ts";
import { StoreUnavailable } from "../../../src/server/stores/index.ts";
import { CHANNEL, PG_SCHEMA_VERSION, PgStore, pgTarget, readPasswordFile } from "../../../src/server/stores/postgres.ts";
import { postgresBinDir, SCHEMA_V1, startCluster, type PgCluster } from "../../pgcluster.ts";
import { fakePostmap, relayError, removeTempDirs, silenceLogger, tempDir, writeServerConfig } from "../helpers.ts";
import { editClient } from "../../../src/server/admin.ts";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { StateStore } from "../../../src/server/state.ts";
import { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import { EXACT_REGEXP, migrateToPostgres, PGSQL_QUERY, postfixPgsqlFile } from "../../../src/server/stores/tools.ts";
import { allowListFromFlags, NO_ALLOW, parseAllowList } from "../../../src/server/allow.ts";
import type { ServerConfig } from "../../../src/lib/config.ts";
import { Alerter } from "../../../src/server/alerts.ts";
import { Watchdog } from "../../../src/server/runtime/watchdog.ts";

const HAVE_PG = postgresBinDir() !== undefined;
let pg: PgCluster;

beforeAll(async () => {
  silenceLogger();
  if (HAVE_PG) pg = await startCluster();
}, 60_000);
afterAll(async () => {
  await pg?.destroy();
  removeTempDirs();
});

const open = (): PgStore => new PgStore(pgTarget(pg.url), systemClock);
const client = (name: string, ttl: number | null = null): ClientRow => ({ name, token_id: name.padEnd(16, "0").slice(0, 16), token_hash: new Uint8Array(32).fill(7), ttl, allow: NO_ALLOW, created_at: Date.now(), ipv6_prefix: null });

describe("pgTarget and the password file", () => {
  test("a unix socket URL is taken apart; the shown form has no password", () => {
    const t = pgTarget("postgres://relayctl:s3cret@localhost:5433/relay?host=/var/run/postgresql");
    expect(t).toMatchObject({ hostname: "localhost", port: 5433, username: "relayctl", password: "s3cret", database: "relay", socketDir: "/var/run/postgresql" });
    expect(t.shown).not.toContain("s3cret");
  });

  test("unknown URL parameters and relative socket dirs are refused", async () => {
    expect((await relayError(() => pgTarget("postgres://x@h/db?foo=1"))).message).toContain('unknown URL parameter "foo"');
    expect((await relayError(() => pgTarget("postgres://x@h/db?host=run/pg"))).message).toContain("absolute");
  });

  test("a password file others can read is refused; 0600 is read without its newline", async () => {
    const f = join(tempDir(), "pw");
    writeFileSync(f, "hunter2\n");
    chmodSync(f, 0o644);
    const err = await relayError(() => readPasswordFile(f, "server.toml:3: database_password_file"));
    expect(err.message).toContain("server.toml:3: database_password_file");
    expect(err.message).toContain("0644");
    expect(err.message).not.toContain("hunter2");
    chmodSync(f, 0o600);
    expect(readPasswordFile(f, "x")).toBe("hunter2");
  });
});

describe.skipIf(!HAVE_PG)("PgStore on a real PostgreSQL", () => {
  test("overdue: of two relay hosts, one records each change; a pruned lease leaves its last renewal on the client", async () => {
    const [a, b] = [open(), open()];
    const config = () => ({ clientMetrics: false, alerts: { command: [], mail: [] } }) as unknown as ServerConfig;
    const dogs = [a, b].map((store, i) => new Watchdog({ store, clock: systemClock, alerter: new Alerter(() => config().alerts), config, host: `relay${i}`, clients: () => 1 }));
    const book = new LeaseBook(a, () => 600, systemClock);
    try {
      await a.tx(async (t) => {
        await t.insertClient(client("quiet"));
        await t.setExpect("quiet", 1);
      });
      await book.renew((await a.getClient("quiet"))!, parseCidr("198.51.100.9")!, "198.51.100.9");
      expect((await a.watched(false, Date.now())).map((w) => w.name)).toEqual([]);
      await Bun.sleep(2_100);
      const runs = await Promise.all(dogs.map((d) => d.check()));
      expect(runs.flat().map((e) => [e.event, e.client, e.last_address])).toEqual([["late", "quiet", "198.51.100.9"]]);
      expect((await pg.psql("SELECT overdue_state FROM relayctl.clients WHERE name = 'quiet'")).trim()).toBe("late");
      await pg.psql("UPDATE relayctl.leases SET expires_at = now() - interval '1 second' WHERE client = 'quiet'");
      await book.expireDue();
      expect((await pg.psql("SELECT last_ip FROM relayctl.clients WHERE name = 'quiet'")).trim()).toBe("198.51.100.9");
      expect((await Promise.all(dogs.map((d) => d.check()))).flat().map((e) => e.event)).toEqual(["silent"]);
      await book.renew((await a.getClient("quiet"))!, parseCidr("198.51.100.10")!, "198.51.100.10");
      expect((await Promise.all(dogs.map((d) => d.check()))).flat().map((e) => [e.event, e.last_address])).toEqual([["back", "198.51.100.10"]]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  test("two stores creating the schema at once agree on one version", async () => {
    const a = open();
    const b = open();
    await Promise.all([a.ready(), b.ready()]);
    expect((await pg.psql("SELECT version FROM relayctl.relayctl_schema")).trim()).toBe(String(PG_SCHEMA_VERSION));
    await Promise.all([a.close(), b.close()]);
  });

  test("leases are cidr with timestamptz; the Postfix query matches by prefix and ignores hostnames", async () => {
    const s = open();
    const book = new LeaseBook(s, () => 600, systemClock);
    try {
      await s.tx(async (t) => t.insertClient(client("office")));
      await s.tx(async (t) => t.insertClient({ ...client("lan"), ipv6_prefix: 64 }));
      const r = await book.renew((await s.getClient("office"))!, parseCidr("198.51.100.7")!, "198.51.100.7");
      expect(r.event).toBe("grant");
      const again = await book.renew((await s.getClient("office"))!, parseCidr("198.51.100.7")!, "x");
      expect(again.event).toBe("renew");
      expect(again.lease).toMatchObject({ ip: "198.51.100.7", granted_at: r.lease.granted_at, renewals: 1 });
      expect(again.lease.expires_at).toBeGreaterThanOrEqual(r.lease.expires_at);
      expect(await s.leasesOfClients(["office"])).toEqual([again.lease]);
      await book.renew((await s.getClient("lan"))!, parseCidr("2001:db8:1:2::/64")!, "x");
      expect((await pg.psql("SELECT pg_typeof(net) || ' ' || pg_typeof(expires_at) FROM relayctl.leases LIMIT 1")).trim()).toBe("cidr timestamp with time zone");
      const q = async (k: string) => (await pg.psql(PGSQL_QUERY.replace("%s", k))).trim();
      expect(await q("198.51.100.7")).toBe("OK");
      expect(await q("2001:db8:1:2:aaaa:bbbb:cccc:1")).toBe("OK");
      expect(await q("2001:db8:1:3:aaaa:bbbb:cccc:1")).toBe("");
      expect(await q("unknown")).toBe("");
      expect(await q("mail.example.org")).toBe("");
      // Marked whole by the regexp stage, an inner "::" is an address like any other.
      expect(await q("exact:2001:db8:1:2:aaaa::1")).toBe("OK");
      expect(await q("exact:198.51.100.7")).toBe("OK");
      expect(await q("exact:2001:db8:1:3::1")).toBe("");
      expect(await q("exact:unknown")).toBe("");
      expect(await q("exact:2001:db8:1:2::/64")).toBe("");
      // The schema refuses a lease wider than relayctl ever grants, whoever writes it.
      await expect(pg.psql("UPDATE relayctl.leases SET net = '0.0.0.0/0' WHERE client = 'office'")).rejects.toThrow("check constraint");
      await expect(pg.psql("UPDATE relayctl.leases SET net = '2001:db8::/32' WHERE client = 'lan'")).rejects.toThrow("check constraint");
      // Read back in our own spelling, so a renewal of the same /64 is a renewal.
      expect((await s.leasesOfClients(["lan"]))[0]!.ip).toBe("2001:db8:1:2::/64");
      expect((await book.renew((await s.getClient("lan"))!, parseCidr("2001:db8:1:2::/64")!, "x")).event).toBe("renew");
    } finally {
      await s.close();
    }
  });

  test("every lease change is announced, naming no client, to a role that may only connect", async () => {
    const watcher = open();
    const writer = open();
    await pg.psql("CREATE ROLE snoop LOGIN");
    const snoop = new SQL({ adapter: "postgres", hostname: "localhost", port: pg.port, path: pg.socketDir, username: "snoop", database: "relayctl", max: 1 });
    const heard: string[] = [];
    const seen: string[] = [];
    const stop = watcher.watch(() => seen.push("reload all"));
    try {
      await snoop.listen(CHANNEL, (payload) => heard.push(payload));
      await Bun.sleep(300);
      const before = seen.length;
      await writer.tx(async (t) => t.insertClient(client("notified")));
      await new LeaseBook(writer, () => 600, systemClock).renew((await writer.getClient("notified"))!, parseCidr("192.0.2.44")!, "x");
      const deadline = Date.now() + 2_000;
      while ((heard.length === 0 || seen.length === before) && Date.now() < deadline) await Bun.sleep(20);
      expect(heard.length).toBeGreaterThan(0);
      expect(heard.every((p) => p === "")).toBe(true);
      // The server reloads everything on a notice, since the notice cannot say what changed.
      expect(seen.slice(before)).toContain("reload all");
    } finally {
      stop();
      await snoop.close();
      await watcher.close();
      await writer.close();
    }
  });

  test("expiry by two hosts at once deletes each lease once, with one audit row", async () => {
    const a = open();
    const b = open();
    try {
      await a.tx(async (t) => t.insertClient(client("short", 1)));
      await pg.psql(`INSERT INTO relayctl.leases (client, family, net, granted_at, renewed_at, expires_at) VALUES ('short', 4, '192.0.2.99', now(), now(), now() - interval '1 second')`);
      const [x, y] = await Promise.all([new LeaseBook(a, () => 600).expireDue(), new LeaseBook(b, () => 600).expireDue()]);
      expect(x.length + y.length).toBe(1);
      expect((await pg.psql("SELECT count(*) FROM relayctl.audit WHERE event = 'expire' AND client = 'short'")).trim()).toBe("1");
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("a renewal checked before a server edit waits for the edit's transaction and follows it", async () => {
    const editor = open();
    const host = open();
    const book = new LeaseBook(host, () => 600, systemClock);
    const net = parseCidr("198.51.100.20")!;
    try {
      await editor.tx(async (t) => t.insertClient({ ...client("racer", 3600), allow: parseAllowList('["198.51.100.0/24"]') }));
      const checked = (await host.getClient("racer"))!;
      await book.renew(checked, net, "x");
      const leaseOf = async () => (await host.leasesOfClients(["racer"]))[0]!;
      // The edit holds the client's row between its UPDATE and COMMIT, leaving the lease row alone (ttl cut to 60 s, lease already shorter).
      for (const [over, expect60] of [[{ ttl: 60 }, true], [{ allow: parseAllowList('["198.51.100.128/25"]') }, false]] as const) {
        let commit!: () => void;
        let updated!: () => void;
        const held = new Promise<void>((r) => (commit = r));
        const didUpdate = new Promise<void>((r) => (updated = r));
        const editing = editor.tx(async (t) => {
          const c = (await t.getClient("racer"))!;
          await t.updateClient("racer", "ttl" in over ? over.ttl : c.ttl, "allow" in over ? over.allow : c.allow, c.ipv6_prefix);
          updated();
          await held;
        });
        await didUpdate;
        const renewing = book.renew(checked, net, "x", (now) => {
          if (!now || !JSON.parse(now.allow.stored).includes("198.51.100.0/24")) throw new Error("refused by the row in the transaction");
          return net;
        }).then((r) => r, (e: Error) => e);
        await Bun.sleep(300);
        const before = await leaseOf();
        commit();
        await editing;
        const r = await renewing;
        // Nothing was extended by the row as it was before the edit, while the edit was open.
        expect(before.renewed_at).toBeLessThan(Date.now() - 250);
        if (expect60) {
          expect(r).not.toBeInstanceOf(Error);
          const l = await leaseOf();
          expect(l.expires_at - l.renewed_at).toBeGreaterThan(59_000);
          expect(l.expires_at - l.renewed_at).toBeLessThan(61_000);
        } else {
          expect((r as Error).message).toBe("refused by the row in the transaction");
        }
      }
    } finally {
      await editor.close();
      await host.close();
    }
  });

  test("two hosts granting one client's two families at once both succeed: the renewal's row lock never deadlocks", async () => {
    const a = open();
    const b = open();
    try {
      for (let i = 0; i < 10; i++) {
        await a.tx(async (t) => t.insertClient(client(`both${i}`)));
        const c = (await a.getClient(`both${i}`))!;
        const r = await Promise.allSettled([new LeaseBook(a, () => 600).renew(c, parseCidr("198.51.100.1")!, "x"), new LeaseBook(b, () => 600).renew(c, parseCidr("2001:db8::1")!, "x")]);
        expect(r.map((x) => (x.status === "fulfilled" ? x.value.event : (x.reason as Error).message))).toEqual(["grant", "grant"]);
      }
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("a host whose clock is an hour behind learns the database's lead and expires by it", async () => {
    const behind = { now: () => Date.now() - 3_600_000 };
    const s = new PgStore(pgTarget(pg.url), behind);
    try {
      await s.allLeases();
      expect(Math.abs(s.skew() - 3_600_000)).toBeLessThan(1_000);
    } finally {
      await s.close();
    }
  });

  test("database down: calls fail as StoreUnavailable and the store says degraded; back: it answers again", async () => {
    const s = open();
    try {
      await s.ready();
      await pg.stop();
      const err = await s.getClient("office").catch((e) => e);
      expect(err).toBeInstanceOf(StoreUnavailable);
      expect(s.problems()[0]).toContain("cannot be reached");
      await pg.start();
      const deadline = Date.now() + 10_000;
      let back = false;
      while (!back && Date.now() < deadline) {
        back = await s.getClient("office").then(() => true, () => false);
        if (!back) await Bun.sleep(200);
      }
      expect(back).toBe(true);
      expect(s.problems()).toEqual([]);
    } finally {
      await s.close();
    }
  }, 30_000);
});

describe("server.toml database keys and the Postfix file", () => {
  test("database must be a postgres:// URL naming a database; the password file needs database", async () => {
    const dir = tempDir();
    const cfg = (extra: string) => loadServerConfig(writeServerConfig(dir, { postmap: "/bin/true", extra }));
    expect((await relayError(() => cfg('database = "mysql://x@h/db"'))).message).toMatch(/server\.toml:\d+: database: must be a postgres:\/\/ URL/);
    expect((await relayError(() => cfg('database = "postgres://x@h"'))).message).toContain("names no database");
    expect((await relayError(() => cfg('database_password_file = "/etc/pw"'))).message).toContain("is only used with database");
    expect(cfg('database = "postgres://relayctl@localhost/relay?host=/var/run/postgresql"').database).toBe("postgres://relayctl@localhost/relay?host=/var/run/postgresql");
  });

  test("the pgsql: file: URI hosts with the socket dir encoded, a dbname line (Postfix 3.7 needs it), the safe query", () => {
    const dir = tempDir();
    const config = loadServerConfig(writeServerConfig(dir, { postmap: "/bin/true", extra: 'database = "postgres://relayctl:pw@localhost:5433/relay?host=/var/run/postgresql"' }));
    const text = postfixPgsqlFile(config, { user: "postfix" });
    expect(text).toContain("\nhosts = postgresql://postfix@%2Fvar%2Frun%2Fpostgresql:5433/relay\n");
    expect(text).toContain("\ndbname = relay\n");
    expect(text).toContain(`\nquery = ${PGSQL_QUERY}\n`);
    expect(PGSQL_QUERY).toBe(
      "SELECT 'OK' FROM relayctl.leases WHERE net OPERATOR(pg_catalog.>>=) relayctl.client_address('%s') AND expires_at OPERATOR(pg_catalog.>) pg_catalog.now() LIMIT 1",
    );
    expect(text).toContain(`\n#   ${EXACT_REGEXP}\n`);
    expect(text).toContain("check_client_access pipemap:{regexp:/etc/postfix/relayctl-exact.regexp, proxy:pgsql:/etc/postfix/relayctl-pgsql.cf}, reject_unauth_destination");
    expect(text).toContain("\n#   GRANT SELECT ON relayctl.leases TO postfix;\n");
    expect(text).not.toContain("pw");
  });
});

describe.skipIf(!HAVE_PG)("server edit on the shared database", () => {
  test("--ttl cuts a lease by the database's clock, whatever the admin host's clock says", async () => {
    const dir = tempDir();
    await pg.psql("CREATE DATABASE edited", "postgres");
    const db = `postgres://postgres@localhost:${pg.port}/edited?host=${pg.socketDir}`;
    const configPath = writeServerConfig(dir, { postmap: fakePostmap(dir).path, extra: `database = ${JSON.stringify(db)}` });
    const s = new PgStore(pgTarget(db), systemClock);
    try {
      await s.tx(async (t) => t.insertClient(client("skewed")));
      await new LeaseBook(s, () => 3600, systemClock).renew((await s.getClient("skewed"))!, parseCidr("198.51.100.30")!, "x");
    } finally {
      await s.close();
    }
    // The admin host's clock is an hour behind the database's.
    setSystemTime(new Date(Date.now() - 3_600_000));
    let r;
    try {
      r = await editClient({ configPath, name: "skewed", ttl: 300 });
    } finally {
      setSystemTime();
    }
    expect(r.shortened.map((x) => x.ip)).toEqual(["198.51.100.30"]);
    const left = Number((await pg.psql("SELECT extract(epoch FROM expires_at - now()) FROM relayctl.leases WHERE client = 'skewed'", "edited")).trim());
    expect(left).toBeGreaterThan(290);
    expect(left).toBeLessThanOrEqual(300);
    expect(Math.abs(Date.parse(r.shortened[0]!.expires_at) - (Date.now() + left * 1000))).toBeLessThan(2_000);
  });
});

describe.skipIf(!HAVE_PG)("server migrate", () => {
  test("copies clients with hashed tokens, live leases and the audit log; a second run copies nothing", async () => {
    const dir = tempDir();
    const configPath = writeServerConfig(dir, { postmap: "/bin/true" });
    const config = loadServerConfig(configPath);
    const state = new StateStore(config.stateDir);
    const book = new LeaseBook(new SqliteStore(state, systemClock), () => 600, systemClock);
    state.insertClient({ ...client("m-one"), token_hash: new Uint8Array(32).fill(9) });
    state.insertClient({ ...client("m-two"), allow: allowListFromFlags(["198.18.0.0/15"]) });
    await book.renew(state.getClient("m-one")!, parseCidr("203.0.113.9")!, "x");
    state.upsertLease({ client: "m-two", family: 4, ip: "203.0.113.10", granted_at: 1, renewed_at: 1, expires_at: 2, renewals: 0 });
    state.audit({ ts: 5, event: "add", client: "m-one", ip: null, source: null, detail: null });
    state.close();
    const db = `postgres://postgres@localhost:${pg.port}/migrated?host=${pg.socketDir}`;
    await pg.psql("CREATE DATABASE migrated", "postgres");
    const r = await migrateToPostgres(config, db);
    expect(r).toMatchObject({ clients: 2, leases: 1, audit: 2 });
    expect(r.configLine).toBe(`database = ${JSON.stringify(db)}`);
    expect((await pg.psql("SELECT encode(token_hash, 'hex') FROM relayctl.clients WHERE name = 'm-one'", "migrated")).trim()).toBe("09".repeat(32));
    expect((await pg.psql("SELECT host(net) FROM relayctl.leases", "migrated")).trim()).toBe("203.0.113.9");
    // Allow lists arrive as the column text, readable: a broken one would admit nobody.
    expect((await pg.psql("SELECT string_agg(allow, ' ' ORDER BY name) FROM relayctl.clients", "migrated")).trim()).toBe('[] ["198.18.0.0/15"]');
    const again = await migrateToPostgres(config, db);
    expect(again).toMatchObject({ clients: 0, leases: 0, audit: 0, skipped: { clients: 2, leases: 1, audit: 2 } });
    expect((await pg.psql("SELECT count(*) FROM relayctl.audit", "migrated")).trim()).toBe("3");
  });
});

describe.skipIf(!HAVE_PG)("the relayctl schema: upgrades and roles", () => {
  const at = (db: string, user = "postgres") => pgTarget(`postgres://${user}@localhost:${pg.port}/${db}?host=${pg.socketDir}`);

  test("a version 1 database moves into the relayctl schema with its rows; old hosts and old Postfix queries are shut out", async () => {
    await pg.psql("CREATE DATABASE v1", "postgres");
    await pg.psql(SCHEMA_V1, "v1");
    await pg.psql(
      `INSERT INTO clients (name, token_id, token_hash, created_at) VALUES ('old', 'old0000000000000', '\\x07', now());
       INSERT INTO leases (client, family, net, granted_at, renewed_at, expires_at) VALUES ('old', 6, '2001:db8:5::9', now(), now(), now() + interval '1 hour');
       INSERT INTO audit (ts, event, client) VALUES (now(), 'grant', 'old')`,
      "v1",
    );
    const s = new PgStore(at("v1"), systemClock);
    try {
      await s.ready();
      expect((await s.allLeases()).map((l) => `${l.client} ${l.ip}`)).toEqual(["old 2001:db8:5::9"]);
      expect((await s.auditLog()).map((a) => a.event)).toEqual(["grant"]);
      expect((await pg.psql("SELECT version FROM relayctl.relayctl_schema", "v1")).trim()).toBe(String(PG_SCHEMA_VERSION));
      // What a version 1 relayctl reads at start: a newer schema, which it refuses.
      expect((await pg.psql("SELECT version FROM public.relayctl_schema", "v1")).trim()).toBe("2");
      expect((await pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('clients', 'leases', 'audit')", "v1")).trim()).toBe("0");
      // The old query (which answered parent-network keys) now fails, so Postfix defers; the new one answers.
      await expect(pg.psql("SELECT 'OK' FROM relayctl.leases WHERE net >>= relayctl_inet('2001:db8:5::9') LIMIT 1", "v1")).rejects.toThrow("does not exist");
      expect((await pg.psql(PGSQL_QUERY.replace("%s", "exact:2001:db8:5::9"), "v1")).trim()).toBe("OK");
      expect((await pg.psql(PGSQL_QUERY.replace("%s", "2001:db8:5::9"), "v1")).trim()).toBe("");
      // New rows take the moved sequence on.
      await s.tx((t) => t.audit({ ts: Date.now(), event: "add", client: "old", ip: null, source: null, detail: null }));
      expect((await s.auditLog()).length).toBe(2);
    } finally {
      await s.close();
    }
  });

  test("a version 1 database already in a schema named relayctl (the owner's own schema) is upgraded in place", async () => {
    await pg.psql("CREATE DATABASE v1own", "postgres");
    await pg.psql(`CREATE SCHEMA relayctl; SET search_path = relayctl; ${SCHEMA_V1}`, "v1own");
    await pg.psql(
      `INSERT INTO relayctl.clients (name, token_id, token_hash, created_at) VALUES ('own', 'own0000000000000', '\\x07', now());
       INSERT INTO relayctl.leases (client, family, net, granted_at, renewed_at, expires_at) VALUES ('own', 4, '192.0.2.9', now(), now(), now() + interval '1 hour')`,
      "v1own",
    );
    const s = new PgStore(at("v1own"), systemClock);
    try {
      await s.ready();
      expect((await s.allLeases()).map((l) => l.ip)).toEqual(["192.0.2.9"]);
      expect((await pg.psql("SELECT version FROM relayctl.relayctl_schema", "v1own")).trim()).toBe(String(PG_SCHEMA_VERSION));
      expect((await pg.psql("SELECT count(*) FROM pg_proc WHERE proname IN ('relayctl_inet', 'relayctl_lease_changed')", "v1own")).trim()).toBe("0");
      expect((await pg.psql(PGSQL_QUERY.replace("%s", "192.0.2.9"), "v1own")).trim()).toBe("OK");
    } finally {
      await s.close();
    }
  });

  test("with the documented grants, a relay host's role runs the server without DDL; on an old schema it says to start the owner first", async () => {
    const pg2 = await startCluster();
    const at2 = (user: string) => pgTarget(`postgres://${user}@localhost:${pg2.port}/relayctl?host=${pg2.socketDir}`);
    try {
      // The database as docs/several-relays.md sets it up: owned by relayctl, closed to PUBLIC.
      await pg2.psql("CREATE ROLE relayctl LOGIN; CREATE ROLE relayhost LOGIN; CREATE ROLE postfix LOGIN; CREATE ROLE snoop LOGIN; ALTER DATABASE relayctl OWNER TO relayctl", "postgres");
      await pg2.psql("REVOKE CONNECT, TEMPORARY ON DATABASE relayctl FROM PUBLIC; REVOKE CREATE ON SCHEMA public FROM PUBLIC");
      const owner = new PgStore(at2("relayctl"), systemClock);
      await owner.ready();
      await owner.close();
      const docs = readFileSync(join(import.meta.dir, "../../../docs/several-relays.md"), "utf8");
      const grants = /## Roles and grants[\s\S]*?```sql\n([\s\S]*?)```/.exec(docs)?.[1];
      expect(grants).toContain("TO relayhost");
      await pg2.psql(`SET ROLE relayctl; ${grants}`);
      // Nothing in this database lets the relay host's role create anything.
      expect((await pg2.psql("SELECT has_database_privilege('relayhost', 'relayctl', 'CREATE') OR has_schema_privilege('relayhost', 'relayctl', 'CREATE') OR has_schema_privilege('relayhost', 'public', 'CREATE')")).trim()).toBe("f");
      const snoop = new SQL({ adapter: "postgres", hostname: "localhost", port: pg2.port, path: pg2.socketDir, username: "snoop", database: "relayctl", max: 1 });
      await expect(snoop.unsafe("SELECT 1")).rejects.toThrow("permission denied");
      await snoop.close();
      const host = new PgStore(at2("relayhost"), systemClock);
      try {
        await host.ready();
        await host.tx((t) => t.insertClient(client("dml")));
        const book = new LeaseBook(host, () => 600, systemClock);
        expect((await book.renew((await host.getClient("dml"))!, parseCidr("192.0.2.5")!, "x")).event).toBe("grant");
        await host.tx((t) => t.audit({ ts: Date.now(), event: "add", client: "dml", ip: null, source: null, detail: null }));
        await book.expireDue();
        // The change log: written by the triggers, read and pruned by the host.
        await book.catchUp();
        await host.maintain();
        expect((await host.allLeases()).map((l) => l.ip)).toEqual(["192.0.2.5"]);
        expect(await host.pruneAudit(0)).toBe(0);
        expect(await host.counts()).toEqual({ clients: 1, leases: 1 });
      } finally {
        await host.close();
      }
      // The Postfix role reads leases through the query and nothing else.
      expect((await pg2.psql(`SET ROLE postfix; ${PGSQL_QUERY.replace("%s", "192.0.2.5")}`)).trim()).toBe("OK");
      await expect(pg2.psql("SET ROLE postfix; SELECT count(*) FROM relayctl.clients")).rejects.toThrow("permission denied");
      // A version 1 database (rows granted to the relay host's role) needs DDL that role may not run:
      // a clear refusal, not a half-upgrade.
      await pg2.psql("CREATE DATABASE old OWNER relayctl", "postgres");
      await pg2.psql("REVOKE CONNECT, TEMPORARY ON DATABASE old FROM PUBLIC; GRANT CONNECT ON DATABASE old TO relayhost", "postgres");
      await pg2.psql(`SET ROLE relayctl; ${SCHEMA_V1}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO relayhost`, "old");
      const stale = new PgStore(pgTarget(`postgres://relayhost@localhost:${pg2.port}/old?host=${pg2.socketDir}`), systemClock);
      try {
        const err = await relayError(() => stale.ready());
        expect(err.message).toContain("role relayhost may not create or upgrade relayctl's schema");
        expect(err.hint).toContain("owner role");
      } finally {
        await stale.close();
      }
    } finally {
      await pg2.destroy();
    }
  }, 60_000);
});
