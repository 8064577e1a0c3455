// server log --addresses (a view over the audit log) and --export jsonl|csv (streamed, RFC 4180).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { runServerLog } from "../../../src/commands/server/log.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";
import { AUDIT_PAGE, AddressHistory, auditEntries, csvField, exportLines } from "../../../src/server/auditlog.ts";
import { LeaseBook } from "../../../src/server/leases.ts";
import { StateStore, type AuditRow, type ClientRow } from "../../../src/server/state.ts";
import { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import { systemClock } from "../../../src/lib/clock.ts";
import { PgStore, pgTarget } from "../../../src/server/stores/postgres.ts";
import { postgresBinDir, startCluster, type PgCluster } from "../../pgcluster.ts";
import { capture, FakeClock, fakePostmap, removeTempDirs, silenceLogger, tempDir, writeServerConfig } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const client = (name: string): ClientRow => ({ name, token_id: `id-${name}`, token_hash: new Uint8Array(32), ttl: null, allow: NO_ALLOW, created_at: 0, ipv6_prefix: null });
const row = (over: Partial<AuditRow>): AuditRow => ({ id: 1, ts: Date.UTC(2030, 0, 1), event: "grant", client: "nas", ip: "198.18.0.7", source: null, detail: null, count: 1, ...over });

/** A server.toml and state in a temp dir, with a lease book (ttl 10 minutes) over it on a fake clock that starts 20 minutes ago. */
async function fixture() {
  const dir = tempDir();
  const config = writeServerConfig(dir, { postmap: fakePostmap(dir).path });
  const state = new StateStore(join(dir, "state"));
  const clock = new FakeClock(Date.now() - 20 * 60_000);
  const store = new SqliteStore(state, clock);
  const book = new LeaseBook(store, () => 600, clock);
  await store.tx(async (t) => {
    await t.insertClient(client("nas"));
    await t.insertClient(client("other"));
  });
  const renew = (name: string, net: string) => book.renewAll(state.getClient(name)!, [{ net: parseCidr(net)! }], "198.18.0.1");
  return { dir, config, state, clock, store, book, renew };
}

describe("CSV and JSON Lines", () => {
  test("a field is quoted only when it must be, quotes doubled; null is empty", () => {
    expect(csvField("plain")).toBe("plain");
    expect(csvField(3)).toBe("3");
    expect(csvField(null)).toBe("");
    expect(csvField("a,b")).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField("two\nlines")).toBe('"two\nlines"');
    expect(csvField("cr\r")).toBe('"cr\r"');
  });

  test("rows keep the documented columns in order, CRLF-terminated; JSON Lines one object a line", () => {
    const r = row({ id: 7, event: "refuse", client: null, ip: null, source: "192.0.2.9", count: 3, detail: 'unauthorized: bad token, "x"' });
    expect(exportLines([r], "csv")).toBe(`7,2030-01-01T00:00:00.000Z,refuse,,,192.0.2.9,3,"unauthorized: bad token, ""x"""\r\n`);
    expect(exportLines([r, row({ id: 8 })], "jsonl").split("\n")).toEqual([
      '{"id":7,"ts":"2030-01-01T00:00:00.000Z","event":"refuse","client":null,"ip":null,"source":"192.0.2.9","count":3,"detail":"unauthorized: bad token, \\"x\\""}',
      '{"id":8,"ts":"2030-01-01T00:00:00.000Z","event":"grant","client":"nas","ip":"198.18.0.7","source":null,"count":1,"detail":null}',
      "",
    ]);
  });
});

describe("address history", () => {
  test("grants, a new address, a release, an expiry and the live lease, folded per address; plain renewals write nothing", async () => {
    const f = await fixture();
    const t0 = f.clock.now();
    await f.renew("nas", "198.18.0.7"); // grant at t0
    f.clock.advance(60_000);
    const rows = f.state.auditLog({ limit: 100 }).length;
    await f.renew("nas", "198.18.0.7"); // plain renewal: no audit row
    expect(f.state.auditLog({ limit: 100 })).toHaveLength(rows);
    f.clock.advance(60_000);
    await f.renew("nas", "198.18.0.8"); // replace at t0+120s: .7 ends, .8 starts
    f.clock.advance(60_000);
    await f.book.release("nas", null); // .8 ends at t0+180s
    f.clock.advance(60_000);
    await f.renew("nas", "198.18.0.7"); // .7 again at t0+240s
    await f.renew("nas", "2001:db8::5");
    f.clock.advance(600_000);
    await f.book.expireDue(); // both expire at t0+840s
    f.clock.advance(60_000);
    await f.renew("nas", "198.18.0.8"); // live, granted at t0+900s
    f.clock.advance(60_000);
    await f.renew("nas", "198.18.0.8"); // renewed at t0+960s
    await f.renew("other", "198.18.0.9");
    const iso = (ms: number) => new Date(t0 + ms).toISOString();
    const r = await capture(() => runServerLog({ config: f.config, client: "nas", addresses: true, json: true }));
    expect(r.error).toBeUndefined();
    expect(JSON.parse(r.stdout)).toEqual({
      client: "nas",
      addresses: [
        { address: "198.18.0.8", first_seen: iso(120_000), last_seen: iso(960_000), grants: 2, live: true },
        { address: "198.18.0.7", first_seen: iso(0), last_seen: iso(840_000), grants: 2, live: false },
        { address: "2001:db8::5", first_seen: iso(240_000), last_seen: iso(840_000), grants: 1, live: false },
      ],
    });
    const text = await capture(() => runServerLog({ config: f.config, client: "nas", addresses: true }));
    expect(text.stdout.split("\n")[0]).toBe(`198.18.0.8  first ${iso(120_000)}  last ${iso(960_000)}  2 grants  live`);
  });

  test("revokes and edits end what they name; an address that does not parse is left out", () => {
    const h = new AddressHistory();
    h.add([
      row({ id: 1, ts: 1000, ip: "198.18.0.7" }),
      row({ id: 2, ts: 2000, event: "grant", ip: "2001:db8:1::/48" }),
      row({ id: 3, ts: 3000, event: "edit", ip: "2001:db8:1::/48", detail: "dropped 2001:db8:1::/48: outside" }),
      row({ id: 4, ts: 4000, event: "revoke", ip: "198.18.0.7 bogus" }),
      row({ id: 5, ts: 5000, event: "refuse", ip: "198.18.0.99" }),
    ]);
    expect(h.rows().map((r) => [r.address, r.last_seen, r.grants])).toEqual([
      ["198.18.0.7", new Date(4000).toISOString(), 1],
      ["2001:db8:1::/48", new Date(3000).toISOString(), 1],
    ]);
  });

  test("--addresses needs --client; --export takes jsonl or csv alone", async () => {
    const f = await fixture();
    expect(String((await capture(() => runServerLog({ config: f.config, addresses: true }))).error)).toContain("--addresses needs --client NAME");
    expect(String((await capture(() => runServerLog({ config: f.config, export: "xml" }))).error)).toContain("--export xml: not a format");
    expect(String((await capture(() => runServerLog({ config: f.config, export: "csv", json: true }))).error)).toContain("--export writes every entry in its own format");
  });
});

describe("server log --export", () => {
  test("streams every entry oldest first, across pages, within --since and audit_retention", async () => {
    const f = await fixture();
    const now = Date.now();
    // Older than the default 90-day retention: left out even without --since (not yet pruned).
    f.state.audit({ ts: now - 91 * 86_400_000, event: "grant", client: "nas", ip: "198.18.0.1", source: null, detail: null });
    f.state.tx(() => {
      for (let i = 0; i < AUDIT_PAGE + 2; i++) f.state.audit({ ts: now - 2 * 3_600_000, event: "refuse", client: null, ip: null, source: "192.0.2.9", detail: `n${i}` });
    });
    await f.renew("nas", "198.18.0.7");
    const csv = await capture(() => runServerLog({ config: f.config, export: "csv" }));
    expect(csv.error).toBeUndefined();
    const lines = csv.stdout.split("\r\n");
    expect(lines[0]).toBe("id,ts,event,client,ip,source,count,detail");
    expect(lines).toHaveLength(1 + AUDIT_PAGE + 2 + 1 + 1);
    expect(lines[1]).toEndWith(",refuse,,,192.0.2.9,1,n0");
    expect(lines[AUDIT_PAGE + 3]).toMatch(/,grant,nas,198\.18\.0\.7,198\.18\.0\.1,1,$/);
    const ids = lines.slice(1, -1).map((l) => Number(l.split(",")[0]));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(csv.value).toBe(AUDIT_PAGE + 3);
    // --since 1h: only the grant; --client narrows the same way.
    const recent = await capture(() => runServerLog({ config: f.config, export: "jsonl", since: "1h" }));
    expect(recent.stdout.trim().split("\n").map((l) => JSON.parse(l).event)).toEqual(["grant"]);
    const nas = await capture(() => runServerLog({ config: f.config, export: "jsonl", client: "nas" }));
    expect(nas.stdout.trim().split("\n").map((l) => JSON.parse(l).ip)).toEqual(["198.18.0.7"]);
  });

  test("pages follow ids, so memory holds one page whatever the log's size", async () => {
    const f = await fixture();
    f.state.tx(() => {
      for (let i = 0; i < AUDIT_PAGE * 2 + 1; i++) f.state.audit({ ts: 1, event: "refuse", client: null, ip: null, source: null, detail: null });
    });
    const sizes: number[] = [];
    for await (const page of auditEntries(f.store, null, 0)) sizes.push(page.length);
    expect(sizes).toEqual([AUDIT_PAGE, AUDIT_PAGE, 1]);
  });
});

describe.skipIf(postgresBinDir() === undefined)("on PostgreSQL", () => {
  let pg: PgCluster;
  beforeAll(async () => {
    pg = await startCluster();
  }, 60_000);
  afterAll(() => pg?.destroy());

  test("the same pages, filters, export and address history through the shared store", async () => {
    const dir = tempDir();
    const config = writeServerConfig(dir, { postmap: fakePostmap(dir).path, extra: `database = ${JSON.stringify(pg.url)}` });
    const store = new PgStore(pgTarget(pg.url), systemClock);
    try {
      await store.ready();
      await store.tx(async (t) => {
        await t.insertClient(client("nas"));
        for (let i = 0; i < AUDIT_PAGE + 1; i++) await t.audit({ ts: Date.now() - 2 * 3_600_000, event: "refuse", client: null, ip: null, source: "192.0.2.9", detail: "a,b" });
      });
      const book = new LeaseBook(store, () => 600, systemClock);
      const nas = (await store.getClient("nas"))!;
      await book.renewAll(nas, [{ net: parseCidr("198.18.0.7")! }], "198.18.0.1");
      await book.renewAll(nas, [{ net: parseCidr("198.18.0.8")! }], "198.18.0.1");
      const sizes: number[] = [];
      for await (const page of auditEntries(store, null, 0)) sizes.push(page.length);
      expect(sizes).toEqual([AUDIT_PAGE, 3]);
      const csv = await capture(() => runServerLog({ config, export: "csv", since: "1h" }));
      expect(csv.error).toBeUndefined();
      expect(csv.stdout.split("\r\n").map((l) => l.split(",").slice(2, 5).join(","))).toEqual(["event,client,ip", "grant,nas,198.18.0.7", "replace,nas,198.18.0.8", ""]);
      const all = await capture(() => runServerLog({ config, export: "csv" }));
      expect(all.value).toBe(AUDIT_PAGE + 3);
      expect(all.stdout).toContain(',refuse,,,192.0.2.9,1,"a,b"\r\n');
      const h = await capture(() => runServerLog({ config, client: "nas", addresses: true, json: true }));
      expect(JSON.parse(h.stdout).addresses.map((a: { address: string; live: boolean; grants: number }) => [a.address, a.live, a.grants])).toEqual([
        ["198.18.0.8", true, 1],
        ["198.18.0.7", false, 1],
      ]);
    } finally {
      await store.close();
    }
  }, 60_000);
});
