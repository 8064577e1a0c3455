import { beforeAll, describe, expect, test } from "bun:test";
import { maskText, parseIp, type Ip } from "../../../src/lib/ip.ts";
import { LiveIndex, type IndexTuple } from "../../../src/server/live.ts";
import type { LeaseRow } from "../../../src/server/state.ts";
import { silenceLogger } from "../helpers.ts";

beforeAll(silenceLogger);

const T = 1_000_000;
const ip = (s: string): Ip => parseIp(s)!;
const row = (client: string, family: number, addr: string, expires_at = T + 60_000): LeaseRow => ({
  client,
  family,
  ip: addr,
  granted_at: T,
  renewed_at: T,
  expires_at,
  renewals: 0,
});
const tuple = (r: LeaseRow): IndexTuple => [r.client, r.family, r.ip, r.expires_at];
const nets = (index: LiveIndex, now = T): readonly string[] => index.liveTexts(now);

describe("LiveIndex.covers", () => {
  test("an exact lease covers its own address only, IPv4 and IPv6", () => {
    const index = new LiveIndex();
    index.load([row("a", 4, "192.0.2.7"), row("a", 6, "2001:db8:1:2:3:4:5:6")]);
    expect(index.covers(ip("192.0.2.7"), T)).toBe(true);
    expect(index.covers(ip("::ffff:192.0.2.7"), T)).toBe(true);
    expect(index.covers(ip("192.0.2.8"), T)).toBe(false);
    expect(index.covers(ip("2001:DB8:1:2:3:4:5:6"), T)).toBe(true);
    expect(index.covers(ip("2001:db8:1:2:3:4:5:7"), T)).toBe(false);
  });

  test("a /64 prefix lease covers every address in the /64 and nothing outside it", () => {
    const index = new LiveIndex();
    index.put(row("lan", 6, "2001:db8:1:2::/64"));
    for (const inside of ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2:abcd::9"]) expect(index.covers(ip(inside), T)).toBe(true);
    for (const outside of ["2001:db8:1:3::1", "2001:db8:1:1:ffff:ffff:ffff:ffff", "2001:db8::1", "192.0.2.1"]) expect(index.covers(ip(outside), T)).toBe(false);
  });

  test("a lease stops covering at its expiry (strictly before expires_at)", () => {
    const index = new LiveIndex();
    index.load([row("a", 4, "192.0.2.7", T + 1000), row("lan", 6, "2001:db8:1:2::/64", T + 1000)]);
    expect(index.covers(ip("192.0.2.7"), T + 999)).toBe(true);
    expect(index.covers(ip("192.0.2.7"), T + 1000)).toBe(false);
    expect(index.covers(ip("2001:db8:1:2::5"), T + 999)).toBe(true);
    expect(index.covers(ip("2001:db8:1:2::5"), T + 1000)).toBe(false);
    expect(index.liveCount(T + 999)).toBe(2);
    expect(index.liveCount(T + 1000)).toBe(0);
    expect(nets(index, T + 1000)).toEqual([]);
  });

  test("an address shared by two clients stays covered while either lease lives", () => {
    const index = new LiveIndex();
    index.load([row("a", 4, "192.0.2.7", T + 1000), row("b", 4, "192.0.2.7", T + 5000)]);
    expect(nets(index)).toEqual(["192.0.2.7"]);
    expect(index.covers(ip("192.0.2.7"), T + 2000)).toBe(true);
    index.remove("b", 4);
    expect(index.covers(ip("192.0.2.7"), T)).toBe(true);
    expect(index.covers(ip("192.0.2.7"), T + 2000)).toBe(false);
  });
});

describe("LiveIndex rows", () => {
  test("a row with an invalid address or a family that does not match is skipped, the rest loaded", () => {
    const index = new LiveIndex();
    index.load([
      row("bad", 4, "192.0.2.300"),
      row("mismatch", 6, "192.0.2.9"),
      row("hostbits", 6, "2001:db8:1:2::1/64"),
      row("junk", 4, "192.0.2.1 OK\n10.0.0.0/8"),
      row("good", 4, "192.0.2.7"),
    ]);
    expect(nets(index)).toEqual(["192.0.2.7"]);
    expect(index.liveCount(T)).toBe(1);
    expect(index.covers(ip("192.0.2.9"), T)).toBe(false);
    expect(index.covers(ip("10.1.2.3"), T)).toBe(false);
  });

  test("an invalid row replacing a valid one drops the old lease instead of keeping it", () => {
    const index = new LiveIndex();
    index.put(row("a", 4, "192.0.2.7"));
    index.put(row("a", 4, "not an address"));
    expect(index.covers(ip("192.0.2.7"), T)).toBe(false);
    expect(index.liveCount(T)).toBe(0);
  });

  test("put replaces the lease of the same client and family; families are independent", () => {
    const index = new LiveIndex();
    index.put(row("a", 4, "192.0.2.7"));
    index.put(row("a", 6, "2001:db8:1:2:3:4:5:6"));
    index.put(row("a", 4, "203.0.113.5"));
    expect(nets(index)).toEqual(["2001:db8:1:2:3:4:5:6", "203.0.113.5"]);
    expect(index.covers(ip("192.0.2.7"), T)).toBe(false);
    index.removeClient("a");
    expect(nets(index)).toEqual([]);
    expect(index.covers(ip("203.0.113.5"), T)).toBe(false);
    index.remove("nobody", 4); // no-op
  });

  test("load replaces everything; liveTexts is sorted and de-duplicated", () => {
    const index = new LiveIndex();
    index.put(row("old", 4, "10.0.0.1"));
    index.load([row("c", 4, "198.51.100.1"), row("a", 4, "192.0.2.1"), row("b", 4, "192.0.2.1"), row("d", 6, "2001:db8:1:2::/64")]);
    expect(nets(index)).toEqual(["192.0.2.1", "198.51.100.1", "2001:db8:1:2::/64"]);
    expect(index.covers(ip("10.0.0.1"), T)).toBe(false);
    expect(index.liveCount(T)).toBe(4);
  });

  test("nextExpiry is the earliest expiry held, null when empty", () => {
    const index = new LiveIndex();
    expect(index.nextExpiry()).toBeNull();
    index.load([row("a", 4, "192.0.2.1", T + 500), row("b", 4, "192.0.2.2", T + 100), row("c", 4, "192.0.2.3", T + 900)]);
    expect(index.nextExpiry()).toBe(T + 100);
    index.remove("b", 4);
    expect(index.nextExpiry()).toBe(T + 500);
  });
});

describe("maskText", () => {
  test("masks to the prefix and writes the network as parseCidr does", () => {
    expect(maskText(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64)).toBe("2001:db8:1:2::/64");
    expect(maskText(ip("2001:db8:1:2:3:4:5:6"), 128)).toBe("2001:db8:1:2:3:4:5:6/128");
    expect(maskText(ip("192.0.2.77"), 24)).toBe("192.0.2.0/24");
    expect(maskText(ip("192.0.2.77"), 0)).toBe("0.0.0.0/0");
    expect(maskText(ip("192.0.2.77"), 64)).toBeNull();
  });
});

describe("LiveIndex renewals", () => {
  test("a renewal of the same network moves its expiry in place; a move replaces it", () => {
    const index = new LiveIndex();
    const row = { client: "a", family: 4, ip: "192.0.2.1", granted_at: 0, renewed_at: 0, expires_at: 1000, renewals: 0 };
    index.put(row);
    index.put({ ...row, expires_at: 5000 });
    expect(index.covers(parseIp("192.0.2.1")!, 4000)).toBe(true);
    expect(index.nextExpiry()).toBe(5000);
    index.put({ ...row, ip: "192.0.2.2", expires_at: 6000 });
    expect(index.covers(parseIp("192.0.2.1")!, 4000)).toBe(false);
    expect(index.covers(parseIp("192.0.2.2")!, 4000)).toBe(true);
    expect(index.liveTexts(0)).toEqual(["192.0.2.2"]);
  });
});

describe("LiveIndex.liveTexts kept in step", () => {
  /** A small deterministic generator: the same sequence on every run, so a failure reproduces. */
  function prng(seed: number): (n: number) => number {
    let s = seed >>> 0;
    return (n) => {
      s = (Math.imul(s, 1_664_525) + 1_013_904_223) >>> 0;
      return s % n;
    };
  }
  // Few texts among many clients, so addresses are shared, moved and freed often.
  const TEXTS: [number, string][] = [
    ...Array.from({ length: 12 }, (_, i): [number, string] => [4, `192.0.2.${i}`]),
    [4, "10.0.0.0/8"],
    [6, "2001:db8::1"],
    [6, "2001:db8:1:2::/64"],
    [6, "2001:db8:0:1:2:3:4:5"],
  ];

  test("equals a sort of the live leases after every grant, move, renewal, release, expiry and load", () => {
    const rand = prng(7);
    const index = new LiveIndex();
    const model = new Map<string, LeaseRow>();
    const expected = (now: number): string[] => [...new Set([...model.values()].filter((l) => l.expires_at > now).map((l) => l.ip))].sort();
    let now = T;
    for (let step = 0; step < 5_000; step++) {
      const client = `c${rand(20)}`;
      const op = rand(100);
      if (op < 55) {
        // Grant, move or renew; the expiry may also move earlier (a shorter ttl).
        const [family, text] = TEXTS[rand(TEXTS.length)]!;
        const key = `${client}/${family}`;
        const held = model.get(key);
        const r = row(client, family, rand(3) === 0 && held ? held.ip : text, now + 1 + rand(2_000));
        model.set(key, r);
        index.put(r);
      } else if (op < 70) {
        const family = rand(2) ? 4 : 6;
        model.delete(`${client}/${family}`);
        index.remove(client, family);
      } else if (op < 75) {
        model.delete(`${client}/4`);
        model.delete(`${client}/6`);
        index.removeClient(client);
      } else if (op < 85) {
        const dropped = index.dropExpired(now);
        for (const l of dropped) model.delete(`${l.client}/${l.family}`);
        expect([...model.values()].every((l) => l.expires_at > now)).toBe(true);
      } else if (op < 88) {
        index.load([...model.values()]);
      } else if (op < 90) {
        index.nextExpiry();
      } else {
        now += rand(400);
      }
      expect([...index.liveTexts(now)]).toEqual(expected(now));
      expect([...index.liveTexts(now + 500)]).toEqual(expected(now + 500));
    }
  });

  test("paged loads with changes between and during pages (pages read before a change arrive after it), and the list read only now and then, still equal the live leases", async () => {
    const rand = prng(11);
    const index = new LiveIndex();
    const model = new Map<string, LeaseRow>();
    const expected = (now: number): string[] => [...new Set([...model.values()].filter((l) => l.expires_at > now).map((l) => l.ip))].sort();
    const now = T;
    /** A change committed on this host: in the model and the index at once. */
    const change = (): void => {
      const client = `c${rand(40)}`;
      const [family, text] = TEXTS[rand(TEXTS.length)]!;
      if (rand(3) === 0) {
        model.delete(`${client}/${family}`);
        index.remove(client, family);
      } else {
        const r = row(client, family, text, now + 1 + rand(2_000));
        model.set(`${client}/${family}`, r);
        index.put(r);
      }
    };
    /** The store's pages in key order, each read when asked for (as a database would), with changes landing between pages. */
    async function* pages(size: number): AsyncGenerator<IndexTuple[]> {
      for (let after = ""; ; ) {
        const keys = [...model.keys()].filter((k) => k > after).sort().slice(0, size);
        const read = keys.map((k) => tuple(model.get(k)!));
        // Changes committed and applied after the page was read, before it arrives: the page is stale for them.
        for (let i = rand(3); i > 0; i--) change();
        if (read.length) yield read;
        if (keys.length < size) return;
        after = keys[keys.length - 1]!;
        for (let i = rand(4); i > 0; i--) change();
        // Mid-load the index may still hold what the store dropped (the sweep comes at the end), but its list must say what it holds.
        if (rand(4) === 0) {
          const listed = new Set(index.liveTexts(now));
          for (const [, text] of TEXTS) expect(listed.has(text)).toBe(index.covers(parseIp(text.split("/")[0]!)!, now));
        }
      }
    }
    for (let round = 0; round < 300; round++) {
      for (let i = rand(30); i > 0; i--) change();
      if (rand(3) === 0) expect([...index.liveTexts(now)]).toEqual(expected(now));
      // The store may also hold what this index never heard of (another host's grants) and lack what it holds.
      for (let i = rand(5); i > 0; i--) {
        const [family, text] = TEXTS[rand(TEXTS.length)]!;
        const client = `c${rand(40)}`;
        if (rand(2)) model.set(`${client}/${family}`, row(client, family, text, now + 1 + rand(2_000)));
        else model.delete(`${client}/${family}`);
      }
      await index.loadPages(pages(1 + rand(8)));
      expect([...index.liveTexts(now)]).toEqual(expected(now));
      expect(index.liveCount(now)).toBe([...model.values()].filter((l) => l.expires_at > now).length);
    }
  });

  test("a paged load that fails part-way drops nothing: the leases held stay, with the rows read so far", async () => {
    const index = new LiveIndex();
    index.load([row("a", 4, "192.0.2.1"), row("b", 4, "192.0.2.2"), row("c", 4, "192.0.2.3")]);
    expect(index.liveTexts(T)).toHaveLength(3);
    async function* broken(): AsyncGenerator<IndexTuple[]> {
      yield [tuple(row("a", 4, "192.0.2.9"))];
      throw new Error("connection lost");
    }
    await expect(index.loadPages(broken())).rejects.toThrow("connection lost");
    expect([...index.liveTexts(T)]).toEqual(["192.0.2.2", "192.0.2.3", "192.0.2.9"]);
    // The next load that completes drops what the store no longer holds.
    async function* whole(): AsyncGenerator<IndexTuple[]> {
      yield [tuple(row("a", 4, "192.0.2.9"))];
    }
    await index.loadPages(whole());
    expect([...index.liveTexts(T)]).toEqual(["192.0.2.9"]);
  });

  test("a lease renewed to an earlier expiry leaves the list at that expiry", () => {
    const index = new LiveIndex();
    index.put(row("a", 4, "192.0.2.1", T + 10_000));
    expect(index.liveTexts(T + 5_000)).toEqual(["192.0.2.1"]);
    index.put(row("a", 4, "192.0.2.1", T + 1_000));
    expect(index.liveTexts(T + 999)).toEqual(["192.0.2.1"]);
    expect(index.liveTexts(T + 1_000)).toEqual([]);
  });

  test("onlyIPv4Hosts is false as soon as an IPv6 lease or a prefix is held", () => {
    const index = new LiveIndex();
    expect(index.onlyIPv4Hosts()).toBe(true);
    index.put(row("a", 4, "192.0.2.1"));
    expect(index.onlyIPv4Hosts()).toBe(true);
    index.put(row("b", 4, "10.0.0.0/8"));
    expect(index.onlyIPv4Hosts()).toBe(false);
    index.remove("b", 4);
    index.put(row("c", 6, "2001:db8::1"));
    expect(index.onlyIPv4Hosts()).toBe(false);
    index.removeClient("c");
    expect(index.onlyIPv4Hosts()).toBe(true);
  });
});
