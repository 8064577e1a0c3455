import { afterAll, afterEach, beforeEach, describe, expect, test } from "bun:test";
import { parseCidr, parseIp, type Cidr } from "../../../src/lib/ip.ts";
import { LeaseBook } from "../../../src/server/leases.ts";
import { StateStore, type ClientRow } from "../../../src/server/state.ts";
import { SqliteStore } from "../../../src/server/stores/sqlite.ts";
import { FakeClock, removeTempDirs, tempDir } from "../helpers.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";

afterAll(removeTempDirs);

const ip = (s: string): Cidr => parseCidr(s)!;
const MIN = 60_000;

let store: StateStore;
let clock: FakeClock;
let ttl: number;
let book: LeaseBook;

function client(name: string, opts: { ttl?: number | null } = {}): ClientRow {
  const row: ClientRow = { name, token_id: name.padEnd(16, "0").slice(0, 16), token_hash: new Uint8Array(32), ttl: opts.ttl ?? null, allow: NO_ALLOW, created_at: clock.now(), ipv6_prefix: null };
  store.insertClient(row);
  return store.getClient(name)!;
}

beforeEach(async () => {
  store = new StateStore(tempDir("relayctl-leases-"));
  clock = new FakeClock();
  ttl = 1200;
  book = new LeaseBook(new SqliteStore(store, clock), () => ttl, clock);
});
afterEach(() => store.close());

/** What the lookups would publish now. */
const live = (): string[] => [...book.index.liveTexts(clock.now())];

describe("LeaseBook.renew", () => {
  test("first renewal is a grant: lease expires ttl later, map must change", async () => {
    const c = client("office");
    const t0 = clock.now();
    const r = (await book.renew(c, ip("198.51.100.7"), "198.51.100.7"));
    expect(r.event).toBe("grant");
    expect(r.lookupChanged).toBe(true);
    expect(r.replaced).toBeUndefined();
    expect(r.lease).toEqual({ client: "office", family: 4, ip: "198.51.100.7", granted_at: t0, renewed_at: t0, expires_at: t0 + 1200_000, renewals: 0 });
    expect(store.leasesOf("office")).toEqual([r.lease]);
    expect(live()).toEqual(["198.51.100.7"]);
  });

  test("renewing the same address extends expiry, keeps granted_at, leaves the map alone", async () => {
    const c = client("office");
    const t0 = clock.now();
    (await book.renew(c, ip("198.51.100.7"), "src"));
    clock.advance(4 * MIN);
    const r = (await book.renew(c, ip("198.51.100.7"), "src"));
    expect(r.event).toBe("renew");
    expect(r.lookupChanged).toBe(false);
    expect(r.lease.granted_at).toBe(t0);
    expect(r.lease.renewed_at).toBe(t0 + 4 * MIN);
    expect(r.lease.expires_at).toBe(t0 + 4 * MIN + 1200_000);
    expect(store.leasesOf("office")).toHaveLength(1);
  });

  test("a new address of the same family replaces the old one at once", async () => {
    const c = client("office");
    (await book.renew(c, ip("198.51.100.7"), "a"));
    clock.advance(MIN);
    const r = (await book.renew(c, ip("203.0.113.9"), "b"));
    expect(r.event).toBe("replace");
    expect(r.replaced).toBe("198.51.100.7");
    expect(r.lookupChanged).toBe(true);
    expect(r.lease.granted_at).toBe(clock.now());
    // No grace period: the old address is gone immediately, not at its old expiry.
    expect(live()).toEqual(["203.0.113.9"]);
    expect(store.leasesOf("office").map((l) => l.ip)).toEqual(["203.0.113.9"]);
    const audit = store.auditLog({ client: "office" });
    expect(audit[0]).toMatchObject({ event: "replace", ip: "203.0.113.9", source: "b", detail: "was 198.51.100.7" });
  });

  test("one lease per family: IPv4 and IPv6 coexist, each replaced separately", async () => {
    const c = client("dual");
    expect((await book.renew(c, ip("198.51.100.7"), "s")).event).toBe("grant");
    expect((await book.renew(c, ip("2001:db8::7"), "s")).event).toBe("grant");
    expect(live().sort()).toEqual(["198.51.100.7", "2001:db8::7"]);
    expect((await book.renew(c, ip("2001:db8::8"), "s")).event).toBe("replace");
    expect(live().sort()).toEqual(["198.51.100.7", "2001:db8::8"]);
    expect(store.leasesOf("dual").map((l) => [l.family, l.ip])).toEqual([
      [4, "198.51.100.7"],
      [6, "2001:db8::8"],
    ]);
  });

  test("a per-client ttl overrides the default; the default is read at each renewal", async () => {
    const short = client("short", { ttl: 90 });
    const normal = client("normal");
    expect(book.ttlOf(short)).toBe(90);
    expect(book.ttlOf(normal)).toBe(1200);
    expect((await book.renew(short, ip("192.0.2.1"), "s")).lease.expires_at).toBe(clock.now() + 90_000);
    ttl = 600;
    expect(book.ttlOf(normal)).toBe(600);
    expect((await book.renew(normal, ip("192.0.2.2"), "s")).lease.expires_at).toBe(clock.now() + 600_000);
  });

  test("an expired but not yet swept lease is granted anew, not renewed", async () => {
    const c = client("office", { ttl: 60 });
    (await book.renew(c, ip("192.0.2.1"), "s"));
    clock.advance(60_000);
    const r = (await book.renew(c, ip("192.0.2.1"), "s"));
    expect(r.event).toBe("grant");
    expect(r.lookupChanged).toBe(true);
    expect(r.lease.granted_at).toBe(clock.now());
    expect(store.leasesOf("office")).toHaveLength(1);
  });

  test("a grant is audited with source and time; plain renewals are counted on the lease, not audited", async () => {
    const c = client("office");
    (await book.renew(c, ip("192.0.2.1"), "192.0.2.1"));
    for (let i = 1; i <= 3; i++) {
      clock.advance(1000);
      expect((await book.renew(c, ip("192.0.2.1"), "192.0.2.1")).lease.renewals).toBe(i);
    }
    const log = store.auditLog({ client: "office" });
    expect(log.map((e) => e.event)).toEqual(["grant"]);
    expect(log[0]).toMatchObject({ ts: clock.now() - 3000, ip: "192.0.2.1", source: "192.0.2.1", detail: null, count: 1 });
    expect(store.leasesOf("office")[0]).toMatchObject({ renewals: 3, renewed_at: clock.now() });
    // A move starts the count again.
    expect((await book.renew(c, ip("192.0.2.2"), "192.0.2.2")).lease.renewals).toBe(0);
  });

  test("an IPv6 prefix lease is stored as NET/LEN and published as one network", async () => {
    const c = client("lan");
    const r = (await book.renew(c, ip("2001:db8:1:2::/64"), "2001:db8:1:2::10"));
    expect(r.lease.ip).toBe("2001:db8:1:2::/64");
    expect(live()).toEqual(["2001:db8:1:2::/64"]);
    expect(book.index.covers(parseIp("2001:db8:1:2:aaaa:bbbb:cccc:dddd")!, clock.now())).toBe(true);
    expect(book.index.covers(parseIp("2001:db8:1:3::1")!, clock.now())).toBe(false);
  });
});

describe("expiry", () => {
  test("a lease is live until just before expires_at and gone at exactly expires_at", async () => {
    const c = client("office", { ttl: 60 });
    const { lease } = (await book.renew(c, ip("192.0.2.1"), "s"));
    clock.t = lease.expires_at - 1;
    expect(live()).toEqual(["192.0.2.1"]);
    expect((await book.expireDue())).toEqual([]);
    expect(book.msUntilNextExpiry()).toBe(1);
    clock.t = lease.expires_at;
    expect(live()).toEqual([]);
    expect(book.msUntilNextExpiry()).toBe(0);
    const gone = (await book.expireDue());
    expect(gone).toEqual([lease]);
    expect(store.leasesOf("office")).toEqual([]);
    expect(book.msUntilNextExpiry()).toBeNull();
  });

  test("expireDue removes only due leases and audits each as expire", async () => {
    const a = client("a", { ttl: 60 });
    const b = client("b", { ttl: 120 });
    (await book.renew(a, ip("192.0.2.1"), "s"));
    (await book.renew(a, ip("2001:db8::1"), "s"));
    (await book.renew(b, ip("192.0.2.2"), "s"));
    clock.advance(90_000);
    const gone = (await book.expireDue());
    expect(gone.map((l) => l.ip).sort()).toEqual(["192.0.2.1", "2001:db8::1"]);
    expect(live()).toEqual(["192.0.2.2"]);
    const expires = store.auditLog().filter((e) => e.event === "expire");
    expect(expires.map((e) => [e.client, e.ip, e.ts, e.source]).sort()).toEqual([
      ["a", "192.0.2.1", clock.now(), null],
      ["a", "2001:db8::1", clock.now(), null],
    ]);
    expect(book.msUntilNextExpiry()).toBe(30_000);
    expect((await book.expireDue())).toEqual([]);
  });

  test("renewing in time keeps a lease alive across many ttls", async () => {
    const c = client("office", { ttl: 60 });
    for (let i = 0; i < 10; i++) {
      (await book.renew(c, ip("192.0.2.1"), "s"));
      clock.advance(59_000);
      expect((await book.expireDue())).toEqual([]);
    }
    expect(live()).toEqual(["192.0.2.1"]);
  });
});

describe("a lease renewed by another host", () => {
  // Two hosts over one store: a plain renewal through `book` is not in the
  // change log, so `other` still holds the old expiry when it falls due.
  test("is read back, not dropped, when this host's old expiry passes; one renewed nowhere goes", async () => {
    const other = new LeaseBook(new SqliteStore(store, clock), () => ttl, clock);
    const c = client("office", { ttl: 60 });
    const d = client("nas", { ttl: 60 });
    await book.renew(c, ip("192.0.2.1"), "s");
    await book.renew(c, ip("2001:db8::1"), "s");
    await book.renew(d, ip("192.0.2.2"), "s");
    await other.reload();
    clock.advance(30_000);
    await book.renew(c, ip("192.0.2.1"), "s");
    await book.renew(c, ip("2001:db8::1"), "s");
    clock.advance(31_000);
    let changes = 0;
    const { gone, local } = await other.expireDueOrLocally(() => changes++);
    expect(local).toBe(false);
    expect(gone.map((l) => l.ip)).toEqual(["192.0.2.2"]);
    expect([...other.index.liveTexts(clock.now())].sort()).toEqual(["192.0.2.1", "2001:db8::1"]);
    // Dropped (published), then back (published again); due next at the renewed expiry.
    expect(changes).toBe(2);
    expect(other.msUntilNextExpiry()).toBe(29_000);
  });

  test("a read-back row that is due by this host's clock stays out, so the expiry timer cannot spin", async () => {
    const other = new LeaseBook(new SqliteStore(store, clock), () => ttl, clock);
    const c = client("office", { ttl: 60 });
    await book.renew(c, ip("192.0.2.1"), "s");
    await other.reload();
    // This host's clock is ahead of the store's: the store does not expire the row yet.
    const ahead = new FakeClock(clock.now() + 61_000);
    const skewed = new LeaseBook(new SqliteStore(store, clock), () => ttl, ahead);
    await skewed.reload();
    const { gone } = await skewed.expireDueOrLocally();
    expect(gone).toEqual([]);
    expect(skewed.msUntilNextExpiry()).toBeNull();
    expect([...skewed.index.liveTexts(ahead.now())]).toEqual([]);
  });
});

describe("release and revoke", () => {
  test("release drops every lease of the client and audits each", async () => {
    const c = client("office");
    const other = client("other");
    (await book.renew(c, ip("192.0.2.1"), "s"));
    (await book.renew(c, ip("2001:db8::1"), "s"));
    (await book.renew(other, ip("192.0.2.9"), "s"));
    const gone = (await book.release("office", "192.0.2.1"));
    expect(gone.map((l) => l.ip).sort()).toEqual(["192.0.2.1", "2001:db8::1"]);
    expect(live()).toEqual(["192.0.2.9"]);
    expect(store.getClient("office")).not.toBeNull();
    expect(store.auditLog({ client: "office" }).filter((e) => e.event === "release")).toHaveLength(2);
    expect((await book.release("office", null))).toEqual([]);
  });

  test("revoke removes leases and the client, and audits once", async () => {
    const c = client("office");
    (await book.renew(c, ip("192.0.2.1"), "s"));
    (await book.renew(c, ip("2001:db8::1"), "s"));
    const gone = (await book.revoke("office", null));
    expect(gone?.map((l) => l.ip).sort()).toEqual(["192.0.2.1", "2001:db8::1"]);
    expect(store.getClient("office")).toBeNull();
    expect(store.leasesOf("office")).toEqual([]);
    expect(live()).toEqual([]);
    const revokes = store.auditLog({ client: "office" }).filter((e) => e.event === "revoke");
    expect(revokes).toHaveLength(1);
    expect(revokes[0]!.ip).toBe("192.0.2.1 2001:db8::1");
    expect((await book.revoke("office", null))).toBeNull();
  });

  test("revoking a client without leases logs no address", async () => {
    client("idle");
    expect((await book.revoke("idle", "admin"))).toEqual([]);
    expect(store.auditLog({ client: "idle" })[0]).toMatchObject({ event: "revoke", ip: null, source: "admin" });
  });
});

describe("two clients behind one address", () => {
  test("the address stays in the map while either lease lives", async () => {
    const a = client("a", { ttl: 60 });
    const b = client("b", { ttl: 600 });
    (await book.renew(a, ip("192.0.2.1"), "s"));
    (await book.renew(b, ip("192.0.2.1"), "s"));
    expect(live()).toEqual(["192.0.2.1"]);
    (await book.release("b", null));
    expect(live()).toEqual(["192.0.2.1"]);
    (await book.renew(b, ip("192.0.2.1"), "s"));
    clock.advance(60_000);
    (await book.expireDue());
    expect(store.leasesOf("a")).toEqual([]);
    expect(live()).toEqual(["192.0.2.1"]);
    // b moves away: now nobody holds the address.
    expect((await book.renew(b, ip("192.0.2.2"), "s")).event).toBe("replace");
    expect(live()).toEqual(["192.0.2.2"]);
  });

  test("one client replacing away from a shared address does not remove it for the other", async () => {
    const a = client("a");
    const b = client("b");
    (await book.renew(a, ip("192.0.2.1"), "s"));
    (await book.renew(b, ip("192.0.2.1"), "s"));
    (await book.renew(a, ip("192.0.2.3"), "s"));
    expect(live()).toEqual(["192.0.2.1", "192.0.2.3"]);
    (await book.revoke("b", null));
    expect(live()).toEqual(["192.0.2.3"]);
  });
});
