// Issue 21 on a real, private PostgreSQL (unix sockets): host lists, the
// read-write host, renewals that notify nobody and are HOT updates, group
// commit, and server migrate's bulk copy (all or nothing).
import { SQL } from "bun";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { checkDatabaseUrl, loadServerConfig } from "../../../src/lib/config.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import { systemClock } from "../../../src/lib/clock.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";
import { LeaseBook } from "../../../src/server/leases.ts";
import type { ClientRow } from "../../../src/server/state.ts";
import { StateStore } from "../../../src/server/state.ts";
import { StoreUnavailable, type Store } from "../../../src/server/stores/index.ts";
import { openStore } from "../../../src/server/stores/open.ts";
import { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import { CHANNEL, PgStore, pgTarget } from "../../../src/server/stores/postgres.ts";
import { migrateToPostgres, pgsqlHosts } from "../../../src/server/stores/tools.ts";
import { postgresBinDir, startCluster, type PgCluster } from "../../pgcluster.ts";
import { FakeClock, relayError, removeTempDirs, silenceLogger, tempDir, writeServerConfig } from "../helpers.ts";

const HAVE_PG = postgresBinDir() !== undefined;
if (!HAVE_PG && process.env.RELAYCTL_REQUIRE_E2E) throw new Error("PostgreSQL is not installed; these tests need it");
let pg: PgCluster;

beforeAll(async () => {
  silenceLogger();
  if (HAVE_PG) pg = await startCluster();
}, 60_000);
afterAll(async () => {
  await pg?.destroy();
  removeTempDirs();
});

const client = (name: string): ClientRow => ({ name, token_id: Bun.hash(name).toString(16).padStart(16, "0"), token_hash: new Uint8Array(32).fill(7), ttl: null, allow: NO_ALLOW, created_at: Date.now(), ipv6_prefix: null });
const dbUrl = (c: PgCluster, db: string): string => `postgres://postgres@localhost:${c.port}/${db}?host=${c.socketDir}`;

describe("database host lists, as libpq writes them", () => {
  test("authority lists with ports, bracketed IPv6, socket directories with one port or one each", () => {
    expect(checkDatabaseUrl("postgres://u:pw@h1,h2:5433/db", "database").hosts).toEqual([
      { host: "h1", port: 5432, socket: false },
      { host: "h2", port: 5433, socket: false },
    ]);
    expect(checkDatabaseUrl("postgresql://u@[2001:db8::1]:6000,db2/db?target_session_attrs=read-write", "database").hosts).toEqual([
      { host: "2001:db8::1", port: 6000, socket: false },
      { host: "db2", port: 5432, socket: false },
    ]);
    expect(checkDatabaseUrl("postgres://u@localhost:5444/db?host=/run/a,/run/b", "database").hosts).toEqual([
      { host: "/run/a", port: 5444, socket: true },
      { host: "/run/b", port: 5444, socket: true },
    ]);
    expect(checkDatabaseUrl("postgres://u@/db?host=/run/a,/run/b&port=5444,5445", "database").hosts.map((h) => h.port)).toEqual([5444, 5445]);
    const t = pgTarget("postgres://u:s3cret@h1,h2:5433/db?pool_size=20");
    expect(t).toMatchObject({ hostname: "h1", port: 5432, poolSize: 20, database: "db", password: "s3cret" });
    expect(t.shown).toBe("postgres://u@h1,h2:5433/db?pool_size=20");
    // Postfix gets every host too: it tries the next when one fails.
    expect(pgsqlHosts(pgTarget("postgres://u@localhost:5444/db?host=/run/a,/run/b"), "postfix")).toBe("postgresql://postfix@%2Frun%2Fa:5444/db postgresql://postfix@%2Frun%2Fb:5444/db");
  });

  test("a port per host that does not add up, a standby-only target and a tiny pool are refused", async () => {
    expect((await relayError(() => checkDatabaseUrl("postgres://u@/db?host=/a,/b,/c&port=1,2", "database"))).message).toContain("3 hosts but 2 ports");
    expect((await relayError(() => checkDatabaseUrl("postgres://u@h1,h2/db?target_session_attrs=read-only", "database"))).message).toContain("read-write");
    expect((await relayError(() => pgTarget("postgres://u@h/db?pool_size=1"))).message).toContain("pool_size");
    expect((await relayError(() => checkDatabaseUrl("postgres://u@h1,h2:99999/db", "database"))).message).toContain("not a port");
  });

  test("server.toml takes a list of one-host URLs and joins it into one host list", async () => {
    const dir = tempDir();
    const path = writeServerConfig(dir, { postmap: "/bin/true", extra: `database = ["postgres://relayctl@db1:5432/relayctl?sslmode=require", "postgres://relayctl@db2:5433/relayctl?sslmode=require"]` });
    expect(loadServerConfig(path).database).toBe("postgres://relayctl@db1:5432,db2:5433/relayctl?sslmode=require");
    writeFileSync(path, `state_dir = "${dir}"\ndatabase = ["postgres://a@db1/relayctl", "postgres://b@db2/relayctl"]\n`);
    expect((await relayError(() => loadServerConfig(path))).message).toContain("differ in more than their hosts");
  });
});

describe.skipIf(!HAVE_PG)("the read-write host", () => {
  test("a dead host and a read-only host are skipped; a read-only answer later makes the store look again", async () => {
    const other = await startCluster();
    try {
      await pg.psql("CREATE DATABASE rw", "postgres");
      await other.psql("CREATE DATABASE rw", "postgres");
      const readOnly = async (c: PgCluster, on: boolean): Promise<void> => {
        await c.psql(`ALTER SYSTEM SET default_transaction_read_only = ${on ? "on" : "off"}`, "postgres");
        await c.psql("SELECT pg_reload_conf()", "postgres");
      };
      // A standby holds the schema already (replicated): so does this one.
      const prep = new PgStore(pgTarget(dbUrl(other, "rw")), systemClock);
      await prep.ready();
      await prep.close();
      await readOnly(other, true);
      const gone = join(tempDir(), "nothing-here");
      const s = new PgStore(pgTarget(`postgres://postgres@localhost:${pg.port},localhost:${other.port},localhost:${pg.port}/rw?host=${gone},${other.socketDir},${pg.socketDir}`), systemClock);
      try {
        await s.tx((t) => t.insertClient(client("rw-one")));
        expect((await pg.psql("SELECT name FROM relayctl.clients", "rw")).trim()).toBe("rw-one");
        // The host in use turns read-only (demoted) and the other one takes writes: a write
        // fails once (the caller answers 503 and its client retries) and the next one goes there.
        await readOnly(other, false);
        await readOnly(pg, true);
        await Bun.sleep(200);
        const first = await s.tx((t) => t.insertClient(client("rw-two"))).then(
          () => "ok",
          (e) => e,
        );
        expect(first).toBeInstanceOf(StoreUnavailable);
        await s.tx((t) => t.insertClient(client("rw-two")));
        expect((await other.psql("SELECT name FROM relayctl.clients", "rw")).trim()).toBe("rw-two");
      } finally {
        await s.close();
        await readOnly(pg, false);
      }
      // No host takes writes: the store says so, as an outage.
      await readOnly(other, true);
      const none = new PgStore(pgTarget(`postgres://postgres@localhost:${other.port}/rw?host=${gone},${other.socketDir}`), systemClock);
      try {
        const err = await none.getClient("x").then(
          () => null,
          (e) => e,
        );
        expect(err).toBeInstanceOf(StoreUnavailable);
        expect(String(err.message)).toContain("no host of the database accepts writes");
      } finally {
        await none.close();
      }
    } finally {
      await other.destroy();
    }
  }, 60_000);
});

describe.skipIf(!HAVE_PG)("connections", () => {
  test("an admin command opens three connections, the server its pool of ten", async () => {
    const admin = new SQL({ adapter: "postgres", hostname: "localhost", port: pg.port, path: pg.socketDir, username: "postgres", database: "postgres", max: 1 });
    const dir = tempDir();
    const config = loadServerConfig(writeServerConfig(dir, { postmap: "/bin/true", extra: `database = ${JSON.stringify(dbUrl(pg, "relayctl"))}` }));
    // Counted while the store is open: each is a backend PostgreSQL forked for this process.
    const backends = async (): Promise<number> => Number(((await admin.unsafe(`SELECT count(*) AS n FROM pg_stat_activity WHERE datname = 'relayctl' AND pid <> pg_backend_pid()`)) as { n: string }[])[0]!.n);
    try {
      const before = await backends();
      for (const brief of [true, false]) {
        const store = await openStore(config, systemClock, { brief });
        try {
          await store.counts();
          // The peak of a few samples: Bun's pool opens its connections together and may close idle ones soon after.
          let peak = 0;
          for (let i = 0; i < 5; i++, await Bun.sleep(20)) peak = Math.max(peak, (await backends()) - before);
          if (brief) expect(peak).toBeLessThanOrEqual(3);
          else expect(peak).toBeGreaterThan(3);
        } finally {
          await store.close();
        }
      }
    } finally {
      await admin.close();
    }
  });
});

describe.skipIf(!HAVE_PG)("renewals on PostgreSQL", () => {
  test("a plain renewal notifies nobody; a grant, a new address, a shorter expiry and a delete do", async () => {
    const s = new PgStore(pgTarget(pg.url), systemClock);
    const listener = new SQL({ adapter: "postgres", hostname: "localhost", port: pg.port, path: pg.socketDir, username: "postgres", database: "relayctl", max: 1 });
    let heard = 0;
    try {
      await s.ready();
      await listener.listen(CHANNEL, () => heard++);
      const book = new LeaseBook(s, () => 600, systemClock);
      await s.tx((t) => t.insertClient(client("quiet")));
      const quiet = (await s.getClient("quiet"))!;
      const settle = async (): Promise<number> => {
        await Bun.sleep(300);
        const n = heard;
        heard = 0;
        return n;
      };
      await book.renew(quiet, parseCidr("192.0.2.50")!, "x");
      expect(await settle()).toBeGreaterThan(0); // grant
      for (let i = 0; i < 5; i++) expect((await book.renew(quiet, parseCidr("192.0.2.50")!, "x")).event).toBe("renew");
      expect(await settle()).toBe(0);
      await book.renew(quiet, parseCidr("192.0.2.51")!, "x");
      expect(await settle()).toBeGreaterThan(0); // new address
      await s.tx((t) => t.setLeaseExpiry("quiet", 4, Date.now() + 10_000));
      expect(await settle()).toBeGreaterThan(0); // shorter
      await book.release("quiet", "x");
      expect(await settle()).toBeGreaterThan(0); // delete
    } finally {
      await listener.close();
      await s.close();
    }
  });

  test("renewals are HOT updates, and concurrent transactions share commits", async () => {
    const s = new PgStore(pgTarget(pg.url), systemClock);
    try {
      await s.ready();
      const names = Array.from({ length: 50 }, (_, i) => `hot${i}`);
      await s.tx(async (t) => {
        for (const n of names) await t.insertClient(client(n));
      });
      const book = new LeaseBook(s, () => 600, systemClock);
      const rows = await Promise.all(names.map((n) => s.getClient(n)));
      await Promise.all(rows.map((c, i) => book.renew(c!, parseCidr(`192.0.2.${100 + i}`)!, "x")));
      const stats = async (): Promise<{ upd: number; hot: number; commits: number }> => {
        const out = (await pg.psql("SELECT pg_stat_clear_snapshot(); SELECT n_tup_upd, n_tup_hot_upd, (SELECT xact_commit FROM pg_stat_database WHERE datname = 'relayctl') FROM pg_stat_user_tables WHERE relname = 'leases'")).trim().split("\n").pop()!;
        const [upd, hot, commits] = out.split("|").map(Number);
        return { upd: upd!, hot: hot!, commits: commits! };
      };
      await Bun.sleep(1_200); // backends report their counters at most once a second
      const before = await stats();
      for (let round = 0; round < 4; round++) {
        const done = await Promise.all(rows.map((c, i) => book.renew(c!, parseCidr(`192.0.2.${100 + i}`)!, "x")));
        expect(done.every((r) => r.event === "renew")).toBe(true);
      }
      let after = before;
      for (let i = 0; i < 40 && after.upd - before.upd < 200; i++) {
        await Bun.sleep(100);
        after = await stats();
      }
      expect(after.upd - before.upd).toBe(200);
      // Every renewal a HOT update: no index entry written (fillfactor leaves room, no index on expires_at).
      expect(after.hot - before.hot).toBe(200);
      // 200 renewals in far fewer commits than 200 (the stats queries themselves commit too).
      console.log(`200 concurrent renewals: ${after.commits - before.commits} commits`);
      expect(after.commits - before.commits).toBeLessThan(100);
    } finally {
      await s.close();
    }
  });

  test("one failing transaction in a group leaves the others committed and itself rolled back", async () => {
    const s = new PgStore(pgTarget(pg.url), systemClock);
    try {
      await s.ready();
      const results = await Promise.allSettled(
        ["g-1", "g-2", "g-bad", "g-3"].map((n) =>
          s.tx(async (t) => {
            await t.insertClient(client(n));
            if (n === "g-bad") throw new Error("refused");
            return n;
          }),
        ),
      );
      expect(results.map((r) => r.status)).toEqual(["fulfilled", "fulfilled", "rejected", "fulfilled"]);
      expect((await pg.psql("SELECT string_agg(name, ' ' ORDER BY name) FROM relayctl.clients WHERE name LIKE 'g-%'")).trim()).toBe("g-1 g-2 g-3");
    } finally {
      await s.close();
    }
  });
});

describe.skipIf(!HAVE_PG)("server migrate, in bulk", () => {
  /** A SQLite state with n clients each holding a live lease, written directly (no token hashing). */
  const seed = (n: number, extra?: (db: StateStore["db"]) => void) => {
    const dir = tempDir();
    const config = loadServerConfig(writeServerConfig(dir, { postmap: "/bin/true" }));
    const state = new StateStore(config.stateDir);
    const now = Date.now();
    const ins = state.db.prepare("INSERT INTO clients (name, token_id, token_hash, ttl, allow, created_at) VALUES (?, ?, ?, NULL, '[]', ?)");
    // Documentation addresses, as data only.
    const lease = state.db.prepare("INSERT INTO leases (client, family, ip, granted_at, renewed_at, expires_at) VALUES (?, 6, ?, ?, ?, ?)");
    const hash = new Uint8Array(32).fill(3);
    state.tx(() => {
      for (let i = 0; i < n; i++) {
        const name = `c${String(i).padStart(7, "0")}`;
        ins.run(name, `t${String(i).padStart(15, "0")}`, hash, now);
        lease.run(name, `2001:db8:${(i >> 16).toString(16)}::${(i & 0xffff).toString(16)}`, now, now, now + 3_600_000);
      }
      extra?.(state.db);
    });
    state.close();
    return config;
  };

  test("200,000 leases in one transaction, with progress", async () => {
    const config = seed(200_000);
    await pg.psql("CREATE DATABASE bulk", "postgres");
    const seen: string[] = [];
    const t0 = performance.now();
    const r = await migrateToPostgres(config, dbUrl(pg, "bulk"), (what, done, total) => seen.push(`${what} ${done}/${total}`));
    const seconds = (performance.now() - t0) / 1000;
    console.log(`server migrate: 200,000 clients and leases in ${seconds.toFixed(1)} s`);
    expect(r).toMatchObject({ clients: 200_000, leases: 200_000 });
    expect((await pg.psql("SELECT count(*) FROM relayctl.leases", "bulk")).trim()).toBe("200000");
    expect(seen).toContain("leases 200000/200000");
    expect(seen.filter((l) => l.startsWith("leases")).length).toBe(20);
    // Row by row this took minutes; a generous bound that still catches a return to it.
    expect(seconds).toBeLessThan(60);
  }, 120_000);

  test("the overdue watch moves too: --expect, a silent client's state, last seen and last address", async () => {
    const seenAt = Date.now() - 86_400_000;
    const config = seed(2, (db) => {
      db.prepare("UPDATE clients SET expect = 240 WHERE name = 'c0000000'").run();
      db.prepare("INSERT INTO clients (name, token_id, token_hash, ttl, allow, created_at, overdue_state, last_seen, last_ip) VALUES ('gone', 'gggggggggggggggg', x'00', NULL, '[]', 0, 'silent', ?, '192.0.2.77')").run(seenAt);
    });
    await pg.psql("CREATE DATABASE watch", "postgres");
    expect(await migrateToPostgres(config, dbUrl(pg, "watch"), () => undefined)).toMatchObject({ clients: 3, leases: 2 });
    const rows = await pg.psql(
      "SELECT name || ' ' || coalesce(expect::text, '-') || ' ' || overdue_state || ' ' || coalesce((extract(epoch FROM last_seen) * 1000)::bigint::text, '-') || ' ' || coalesce(last_ip, '-') FROM relayctl.clients ORDER BY name",
      "watch",
    );
    expect(rows.trim().split("\n")).toEqual(["c0000000 240 ok - -", "c0000001 - ok - -", `gone - silent ${seenAt} 192.0.2.77`]);
  }, 60_000);

  test("a failure half-way leaves nothing behind", async () => {
    // The last lease is wider than relayctl ever leases: PostgreSQL's CHECK refuses it, after 30,000 good rows.
    const config = seed(30_000, (db) => {
      db.prepare("INSERT INTO clients (name, token_id, token_hash, ttl, allow, created_at) VALUES ('zz-wide', 'zzzzzzzzzzzzzzzz', x'00', NULL, '[]', 0)").run();
      db.prepare("INSERT INTO leases (client, family, ip, granted_at, renewed_at, expires_at) VALUES ('zz-wide', 6, '2001:db8::/32', 0, 0, ?)").run(Date.now() + 3_600_000);
    });
    await pg.psql("CREATE DATABASE halfway", "postgres");
    const err = await migrateToPostgres(config, dbUrl(pg, "halfway"), () => undefined).then(
      () => null,
      (e) => e,
    );
    expect(err).not.toBeNull();
    expect((await pg.psql("SELECT (SELECT count(*) FROM relayctl.clients) || ' ' || (SELECT count(*) FROM relayctl.leases) || ' ' || (SELECT count(*) FROM relayctl.audit)", "halfway")).trim()).toBe("0 0 0");
  }, 60_000);
});

describe.skipIf(!HAVE_PG)("the change log (issue 21 item 1)", () => {
  /** Two relay hosts on one fresh database: A writes, B follows. */
  type Hosts = { a: PgStore; b: PgStore; bookA: LeaseBook; bookB: LeaseBook };
  /** Runs fn with two relay hosts on one fresh database (A writes, B follows), and closes both. */
  const onHosts = async (db: string, fn: (h: Hosts) => Promise<void>, opts: { changesKeepMs?: number } = {}, clockA = systemClock): Promise<void> => {
    await pg.psql(`CREATE DATABASE ${db}`, "postgres");
    const a = new PgStore(pgTarget(dbUrl(pg, db)), clockA, opts);
    const b = new PgStore(pgTarget(dbUrl(pg, db)), systemClock, opts);
    try {
      await a.ready();
      await fn({ a, b, bookA: new LeaseBook(a, () => 600, systemClock), bookB: new LeaseBook(b, () => 600, systemClock) });
    } finally {
      await a.close();
      await b.close();
    }
  };
  const live = (book: LeaseBook): string[] => [...book.index.liveTexts(Date.now())];
  const rowsOf = async (db: string): Promise<string> => (await pg.psql("SELECT coalesce(string_agg(op || ':' || coalesce(client, '-'), ' ' ORDER BY id), '') FROM relayctl.changes", db)).trim();

  test("grant, new address, release and revoke on A reach B's index by catch-up, with no full reload; plain renewals log nothing", async () => {
    await onHosts("clog", async ({ a, bookA, bookB }) => {
        await a.tx(async (t) => {
          await t.insertClient(client("x"));
          await t.insertClient(client("y"));
        });
        await bookB.reload();
        expect(bookB.fullReloads).toBe(1);
        const x = (await a.getClient("x"))!;
        const y = (await a.getClient("y"))!;
        await pg.psql("DELETE FROM relayctl.changes", "clog");
        await bookA.renew(x, parseCidr("192.0.2.61")!, "t");
        await bookA.renew(y, parseCidr("2001:db8:61::/48")!, "t");
        await bookB.catchUp();
        expect(live(bookB)).toEqual(["192.0.2.61", "2001:db8:61::/48"]);
        expect(await rowsOf("clog")).toBe("lease:x lease:y");
        for (let i = 0; i < 5; i++) expect((await bookA.renew(x, parseCidr("192.0.2.61")!, "t")).event).toBe("renew");
        expect(await rowsOf("clog")).toBe("lease:x lease:y");
        // Plain renewals name nobody: B reads no lease and publishes nothing.
        expect(await bookB.catchUp()).toEqual({ enrolled: false, changed: false });
        await bookA.renew(x, parseCidr("192.0.2.62")!, "t");
        expect((await bookB.catchUp()).changed).toBe(true);
        expect(live(bookB)).toEqual(["192.0.2.62", "2001:db8:61::/48"]);
        await bookA.release("y", "t");
        await bookB.catchUp();
        expect(live(bookB)).toEqual(["192.0.2.62"]);
        await bookA.revoke("x", "t");
        await bookB.catchUp();
        expect(live(bookB)).toEqual([]);
        // Nothing new: a catch-up is one cheap read and still a success.
        await bookB.catchUp();
        expect(bookB.fullReloads).toBe(1);
    });
  });

  test("a transaction that took an earlier id and commits after a later one is still applied", async () => {
    await onHosts("cgap", async ({ a, bookA, bookB }) => {
      const slow = new SQL({ adapter: "postgres", hostname: "localhost", port: pg.port, path: pg.socketDir, username: "postgres", database: "cgap", max: 1 });
      try {
        await a.tx(async (t) => {
          await t.insertClient(client("early"));
          await t.insertClient(client("late"));
        });
        await bookA.renew((await a.getClient("early"))!, parseCidr("192.0.2.71")!, "t");
        await bookB.reload();
        const before = (await pg.psql("SELECT max(id) FROM relayctl.changes", "cgap")).trim();
        const conn = await slow.reserve();
        try {
          // The long transaction logs its change (taking an id) and stays open...
          await conn.unsafe("BEGIN");
          await conn.unsafe("UPDATE relayctl.leases SET net = '192.0.2.72/32' WHERE client = 'early'");
          // ...while a later change takes a higher id, commits and is read.
          await bookA.renew((await a.getClient("late"))!, parseCidr("192.0.2.73")!, "t");
          await bookB.catchUp();
          expect(live(bookB)).toEqual(["192.0.2.71", "192.0.2.73"]);
          const ids = (await pg.psql(`SELECT string_agg(client || '=' || id, ' ' ORDER BY id) FROM relayctl.changes WHERE id > ${before}`, "cgap")).trim();
          expect(ids).toMatch(/^late=\d+$/); // the early one is not visible yet
          await conn.unsafe("COMMIT");
        } finally {
          conn.release();
        }
        const [early, late] = (await pg.psql("SELECT (SELECT max(id) FROM relayctl.changes WHERE client = 'early') || ' ' || (SELECT max(id) FROM relayctl.changes WHERE client = 'late')", "cgap")).trim().split(" ").map(Number);
        expect(early!).toBeLessThan(late!);
        await bookB.catchUp();
        expect(live(bookB)).toEqual(["192.0.2.72", "192.0.2.73"]);
        expect(bookB.fullReloads).toBe(1);
      } finally {
        await slow.close();
      }
    });
  });

  test("pruning keeps what a follower may still need; one cut off longer than the log is kept reloads everything", async () => {
    const clockA = new FakeClock(Date.now());
    await onHosts(
      "cprune",
      async ({ a, bookA, bookB }) => {
          await a.tx(async (t) => {
            for (const n of ["p1", "p2", "p3"]) await t.insertClient(client(n));
          });
          await bookB.reload();
          await bookA.renew((await a.getClient("p1"))!, parseCidr("192.0.2.81")!, "t");
          await bookB.catchUp();
          await a.maintain(); // the first mark: nothing is old enough yet
          expect(await rowsOf("cprune")).toContain("lease:p1");
          await Bun.sleep(1_700);
          clockA.advance(300_000);
          await bookA.renew((await a.getClient("p2"))!, parseCidr("192.0.2.82")!, "t");
          await a.maintain();
          // Committed before the old mark: gone; the newer row stays.
          expect(await rowsOf("cprune")).not.toContain("lease:p1");
          expect(await rowsOf("cprune")).toContain("lease:p2");
          // B last read 1.7 s ago, longer than the log keeps: it cannot trust the log and reloads.
          await bookB.catchUp();
          expect(bookB.fullReloads).toBe(2);
          expect(live(bookB)).toEqual(["192.0.2.81", "192.0.2.82"]);
          await bookA.renew((await a.getClient("p3"))!, parseCidr("192.0.2.83")!, "t");
          await bookB.catchUp();
          expect(bookB.fullReloads).toBe(2);
          expect(live(bookB)).toEqual(["192.0.2.81", "192.0.2.82", "192.0.2.83"]);
      },
      { changesKeepMs: 1_500 },
      clockA,
    );
  });

  test("a full load reads keyset pages: every lease once, in key order, networks as the index writes them; SQLite pages the same", async () => {
    const nets = Array.from({ length: 23 }, (_, i) => (i % 3 === 0 ? `2001:db8:${i}::/48` : i % 3 === 1 ? `2001:db8::${i}` : `192.0.2.${i}`));
    const paged = async (store: Store): Promise<{ sizes: number[]; rows: string[] }> => {
      const sizes: number[] = [];
      const rows: string[] = [];
      for await (const page of store.leasePages(4)) {
        sizes.push(page.length);
        for (const [client, family, ip, expiresAt] of page) rows.push(`${client}/${family} ${parseCidr(ip)?.text} ${Number.isInteger(expiresAt) && expiresAt > Date.now()}`);
      }
      return { sizes, rows };
    };
    await onHosts("cpages", async ({ a, bookA, bookB }) => {
      for (let i = 0; i < nets.length; i++) {
        const name = `p${String(i).padStart(2, "0")}`;
        await a.tx((t) => t.insertClient(client(name)));
        await bookA.renew((await a.getClient(name))!, parseCidr(nets[i]!)!, "t");
      }
      const want = nets.map((n, i) => `p${String(i).padStart(2, "0")}/${n.includes(":") ? 6 : 4} ${parseCidr(n)!.text} true`);
      expect(await paged(a)).toEqual({ sizes: [4, 4, 4, 4, 4, 3], rows: want });
      await bookB.reload();
      expect(live(bookB)).toEqual([...live(bookA)]);
      expect(live(bookB)).toHaveLength(nets.length);
      const sqlite = new SqliteStore(new StateStore(tempDir()), systemClock);
      for (let i = 0; i < nets.length; i++) {
        const name = `p${String(i).padStart(2, "0")}`;
        sqlite.state.insertClient(client(name));
        await new LeaseBook(sqlite, () => 600, systemClock).renew(sqlite.state.getClient(name)!, parseCidr(nets[i]!)!, "t");
      }
      expect(await paged(sqlite)).toEqual({ sizes: [4, 4, 4, 4, 4, 3], rows: want });
      sqlite.state.close();
    });
  });

  test("a change that bypassed the log (trigger off) is not caught up, and the full reconcile repairs it", async () => {
    await onHosts("cbypass", async ({ a, bookA, bookB }) => {
        await a.tx((t) => t.insertClient(client("h1")));
        await bookA.renew((await a.getClient("h1"))!, parseCidr("192.0.2.95")!, "t");
        await bookB.reload();
        await pg.psql("BEGIN; ALTER TABLE relayctl.leases DISABLE TRIGGER leases_removed; DELETE FROM relayctl.leases; ALTER TABLE relayctl.leases ENABLE TRIGGER leases_removed; COMMIT", "cbypass");
        await bookB.catchUp();
        expect(live(bookB)).toEqual(["192.0.2.95"]);
        await bookB.reload();
        expect(live(bookB)).toEqual([]);
    });
  });

  test("a follower on a new pool (what a failover makes) reloads everything; a bulk insert logs one 'all' row", async () => {
    await onHosts("cswitch", async ({ a, b, bookA, bookB }) => {
        await a.tx((t) => t.insertClient(client("s1")));
        await bookB.reload();
        // What a connection loss or a read-only answer does: the next call chooses the read-write host again.
        (b as unknown as { forget(): void }).forget();
        await bookA.renew((await a.getClient("s1"))!, parseCidr("192.0.2.91")!, "t");
        await bookB.catchUp();
        expect(bookB.fullReloads).toBe(2);
        expect(live(bookB)).toEqual(["192.0.2.91"]);
        await pg.psql(
          "INSERT INTO relayctl.clients (name, token_id, token_hash, created_at) SELECT 'b' || i, 't' || i, '\\x00', now() FROM generate_series(1, 1200) i; " +
            "INSERT INTO relayctl.leases (client, family, net, granted_at, renewed_at, expires_at) SELECT 'b' || i, 6, ('2001:db8:99::' || to_hex(i))::cidr, now(), now(), now() + interval '1 hour' FROM generate_series(1, 1200) i",
          "cswitch",
        );
        expect((await pg.psql("SELECT count(*) FROM relayctl.changes WHERE op = 'all'", "cswitch")).trim()).toBe("1");
        await bookB.catchUp();
        expect(bookB.fullReloads).toBe(3);
        expect(live(bookB).length).toBe(1201);
    });
  });
});
