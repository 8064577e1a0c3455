import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { parseCidr } from "../../../src/lib/ip.ts";
import { MAX_BODY } from "../../../src/server/doors/api.ts";
import type { LeaseBook } from "../../../src/server/leases.ts";
import type { MapWriter } from "../../../src/server/lookups/map.ts";
import type { ClientRow, StateStore } from "../../../src/server/state.ts";
import { newToken } from "../../../src/server/tokens.ts";
import { FakeClock, fakeServer, removeTempDirs, silenceLogger, tempDir, testService, type FakePostmap, type TestService } from "../helpers.ts";
import { parseAllowList } from "../../../src/server/allow.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const BASE = "https://127.0.0.1:8443";

let t: TestService;
let store: StateStore;
let clock: FakeClock;
let leases: LeaseBook;
let map: MapWriter;
let pm: FakePostmap;
let mapPath: string;

beforeEach(async () => {
  clock = new FakeClock();
  t = await testService(tempDir("relayctl-http-"), clock);
  ({ store, leases, writer: map, pm, mapPath } = t);
});
afterEach(() => store.close());

/** Creates a client and returns its bearer token. */
function addClient(name: string, opts: { allow?: string[]; ttl?: number; ipv6Prefix?: number } = {}): string {
  const tok = newToken();
  const row: ClientRow = { name, token_id: tok.tokenId, token_hash: tok.hash, ttl: opts.ttl ?? null, allow: parseAllowList(JSON.stringify(opts.allow ?? [])), created_at: clock.now(), ipv6_prefix: opts.ipv6Prefix ?? null };
  store.insertClient(row);
  return tok.token;
}

interface Answer {
  status: number;
  body: Record<string, unknown>;
  headers: Headers;
}

async function call(
  method: string,
  path: string,
  opts: { token?: string; peer?: string | null; json?: unknown; body?: string | ReadableStream<Uint8Array>; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body = opts.body;
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json);
    headers["content-type"] ??= "application/json";
  }
  const req = new Request(BASE + path, { method, headers, body, ...(body instanceof ReadableStream ? { duplex: "half" } : {}) } as RequestInit);
  const res = await t.dispatch(req, fakeServer(opts.peer === undefined ? "198.51.100.7" : opts.peer));
  expect(res.headers.get("content-type")).toBe("application/json");
  expect(res.headers.get("cache-control")).toBe("no-store");
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {}, headers: res.headers };
}

const mapEntries = (): string[] => readFileSync(mapPath, "utf8").split("\n").filter((l) => l && !l.startsWith("#"));

describe("authentication", () => {
  test("no token, a bad token and a malformed header are 401 with WWW-Authenticate", async () => {
    const good = addClient("office");
    for (const headers of [{} as Record<string, string>, { authorization: "Bearer 0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }, { authorization: `Basic ${good}` }, { authorization: `Bearer ${good}x` }]) {
      for (const method of ["GET", "POST", "DELETE"]) {
        const r = await call(method, "/v1/lease", { headers });
        expect(r.status).toBe(401);
        expect(r.body.error).toBe("unauthorized");
        expect(r.headers.get("www-authenticate")).toBe("Bearer");
      }
    }
    expect(store.allLeases()).toEqual([]);
  });

  test("a revoked client's token is refused", async () => {
    const tok = addClient("office");
    expect((await call("GET", "/v1/lease", { token: tok })).status).toBe(200);
    (await leases.revoke("office", null));
    expect((await call("POST", "/v1/lease", { token: tok })).status).toBe(401);
  });
});

describe("GET /v1/lease", () => {
  test("shows client, observed address, ttl and leases without changing anything", async () => {
    const tok = addClient("office", { ttl: 600 });
    const r = await call("GET", "/v1/lease", { token: tok });
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ client: "office", ip: "198.51.100.7", ttl: 600, leases: [] });
    expect(store.allLeases()).toEqual([]);
    expect(pm.calls()).toBe(0);

    await call("POST", "/v1/lease", { token: tok });
    const after = await call("GET", "/v1/lease", { token: tok, peer: "203.0.113.5" });
    expect(after.body).toEqual({
      client: "office",
      ip: "203.0.113.5",
      ttl: 600,
      leases: [{ ip: "198.51.100.7", family: 4, renewed_at: new Date(clock.now()).toISOString(), expires_at: new Date(clock.now() + 600_000).toISOString() }],
    });
  });

  test("a peer without an address is a 400", async () => {
    const tok = addClient("office");
    const r = await call("GET", "/v1/lease", { token: tok, peer: null });
    expect(r.status).toBe(400);
    expect(r.body.error).toBe("no_address");
  });
});

describe("POST /v1/lease", () => {
  test("grants the observed address; answers only once the map holds it", async () => {
    const tok = addClient("office");
    pm.slow(0.2);
    const r = await call("POST", "/v1/lease", { token: tok });
    // Checked synchronously at the moment the answer arrives.
    expect(mapEntries()).toEqual(["198.51.100.7 OK"]);
    expect(readFileSync(mapPath + ".db", "utf8")).toContain("198.51.100.7 OK");
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ client: "office", ip: "198.51.100.7", expires_at: new Date(clock.now() + 1200_000).toISOString(), ttl: 1200, event: "grant" });
  });

  test("a renewal does not rebuild the map; a move replaces at once", async () => {
    const tok = addClient("office");
    await call("POST", "/v1/lease", { token: tok });
    clock.advance(240_000);
    const again = await call("POST", "/v1/lease", { token: tok, json: {} });
    expect(again.body.event).toBe("renew");
    expect(again.body.expires_at).toBe(new Date(clock.now() + 1200_000).toISOString());
    expect(map.rebuilds).toBe(1);
    expect(pm.calls()).toBe(1);
    const moved = await call("POST", "/v1/lease", { token: tok, peer: "203.0.113.5" });
    expect(moved.body).toMatchObject({ ip: "203.0.113.5", event: "replace" });
    expect(mapEntries()).toEqual(["203.0.113.5 OK"]);
  });

  test("IPv4 and IPv6 leases coexist; an IPv4-mapped peer is leased as plain IPv4", async () => {
    const tok = addClient("dual");
    const v4 = await call("POST", "/v1/lease", { token: tok, peer: "::ffff:198.51.100.7" });
    expect(v4.body.ip).toBe("198.51.100.7");
    const v6 = await call("POST", "/v1/lease", { token: tok, peer: "2001:DB8:1:2:3:4:5:0007" });
    expect(v6.body.ip).toBe("2001:db8:1:2:3:4:5:7");
    expect(mapEntries()).toEqual(["198.51.100.7 OK", "2001:db8:1:2:3:4:5:7 OK"]);
    expect(store.leasesOf("dual").map((l) => l.family)).toEqual([4, 6]);
  });

  test("the map lookup refuses what it cannot hold exactly: an inner zero run, an IPv6 prefix", async () => {
    const tok = addClient("v6");
    const zeroRun = await call("POST", "/v1/lease", { token: tok, peer: "2001:DB8:0:0::7" });
    expect(zeroRun.status).toBe(403);
    expect(zeroRun.body.error).toBe("lookup_cannot_hold");
    expect(String(zeroRun.body.message)).toContain("2001:db8::7");
    const prefix = addClient("lan", { ipv6Prefix: 64 });
    const r = await call("POST", "/v1/lease", { token: prefix, peer: "2001:db8:1:2:3:4:5:6" });
    expect(r.status).toBe(403);
    expect(r.body.error).toBe("lookup_cannot_hold");
    expect(String(r.body.message)).toContain("/64");
    expect(store.allLeases()).toEqual([]);
    expect(pm.calls()).toBe(0);
  });

  test("naming the own address is fine; naming another one needs an allow list", async () => {
    const tok = addClient("office");
    expect((await call("POST", "/v1/lease", { token: tok, json: { ip: "198.51.100.7" } })).status).toBe(200);
    const r = await call("POST", "/v1/lease", { token: tok, json: { ip: "198.51.100.8" } });
    expect(r.status).toBe(403);
    expect(r.body.error).toBe("address_not_allowed");
    expect(String(r.body.message)).toContain("198.51.100.7");
    expect(mapEntries()).toEqual(["198.51.100.7 OK"]);
  });

  test("an allow list admits addresses inside it and denies the rest, including the observed one", async () => {
    const tok = addClient("router", { allow: ["192.0.2.0/24", "2001:db8::/32"] });
    const inside = await call("POST", "/v1/lease", { token: tok, json: { ip: "192.0.2.77" } });
    expect(inside.status).toBe(200);
    expect(inside.body.ip).toBe("192.0.2.77");
    expect((await call("POST", "/v1/lease", { token: tok, json: { ip: "2001:db8:1:2:3:4:5:6" } })).status).toBe(200);
    const outside = await call("POST", "/v1/lease", { token: tok, json: { ip: "192.0.3.1" } });
    expect(outside.status).toBe(403);
    expect(String(outside.body.message)).toContain("outside the allow list");
    const observed = await call("POST", "/v1/lease", { token: tok });
    expect(observed.status).toBe(403);
    expect(mapEntries()).toEqual(["192.0.2.77 OK", "2001:db8:1:2:3:4:5:6 OK"]);
  });

  test("loopback and other special addresses are refused unless the allow list names them", async () => {
    const plain = addClient("plain");
    const r = await call("POST", "/v1/lease", { token: plain, peer: "127.0.0.1" });
    expect(r.status).toBe(403);
    expect(String(r.body.message)).toContain("loopback");
    expect((await call("POST", "/v1/lease", { token: plain, peer: "::1" })).status).toBe(403);
    const everything = addClient("everything", { allow: ["0.0.0.0/0", "::/0"] });
    expect((await call("POST", "/v1/lease", { token: everything, peer: "127.0.0.1" })).status).toBe(403);
    expect((await call("POST", "/v1/lease", { token: everything, json: { ip: "224.0.0.1" } })).status).toBe(403);
    expect((await call("POST", "/v1/lease", { token: everything, json: { ip: "192.0.2.1" } })).status).toBe(200);
    const local = addClient("local", { allow: ["127.0.0.1"] });
    const ok = await call("POST", "/v1/lease", { token: local, peer: "127.0.0.1" });
    expect(ok.status).toBe(200);
    expect(ok.body.ip).toBe("127.0.0.1");
    expect(store.leasesOf("plain")).toEqual([]);
  });

  test.each([["010.1.1.1"], [" 198.51.100.7"], ["198.51.100.7\n"], ["198.51.100.0/24"], ["fe80::1%eth0"], ["[::1]"], [""], [5], [null], [["198.51.100.7"]], [{ v: 1 }]])("ip %p is a 400", async (bad) => {
    const tok = addClient("office", { allow: ["0.0.0.0/0"] });
    const r = await call("POST", "/v1/lease", { token: tok, json: { ip: bad } });
    expect(r.status).toBe(400);
    expect(r.body.error).toBe("invalid_ip");
    expect(store.allLeases()).toEqual([]);
  });

  test("malformed or non-object JSON is a 400", async () => {
    const tok = addClient("office");
    const bad = await call("POST", "/v1/lease", { token: tok, body: '{"ip": ', headers: { "content-type": "application/json" } });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toBe("bad_json");
    for (const body of ["[]", "null", '"198.51.100.7"', "42"]) {
      const r = await call("POST", "/v1/lease", { token: tok, body, headers: { "content-type": "application/json" } });
      expect(r.status).toBe(400);
      expect(r.body.error).toBe("bad_request");
    }
    expect(store.allLeases()).toEqual([]);
  });

  test("a body that is not JSON is a 415; JSON with a charset parameter is fine", async () => {
    const tok = addClient("office");
    for (const type of ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"]) {
      const r = await call("POST", "/v1/lease", { token: tok, body: "{}", headers: { "content-type": type } });
      expect(r.status).toBe(415);
      expect(r.body.error).toBe("unsupported_media_type");
    }
    const ok = await call("POST", "/v1/lease", { token: tok, body: '{"ip":"198.51.100.7"}', headers: { "content-type": "Application/JSON; charset=utf-8" } });
    expect(ok.status).toBe(200);
  });

  test("a body over MAX_BODY is a 413, declared or streamed", async () => {
    const tok = addClient("office");
    const big = JSON.stringify({ ip: "198.51.100.7", pad: "x".repeat(MAX_BODY) });
    const declared = await call("POST", "/v1/lease", { token: tok, body: big, headers: { "content-type": "application/json" } });
    expect(declared.status).toBe(413);
    expect(declared.body.error).toBe("body_too_large");
    const chunk = new Uint8Array(1024).fill(0x20);
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent++ < 10) c.enqueue(chunk);
        else c.close();
      },
    });
    const streamed = await call("POST", "/v1/lease", { token: tok, body: stream, headers: { "content-type": "application/json" } });
    expect(streamed.status).toBe(413);
    expect(sent).toBeLessThanOrEqual(6); // reading stopped soon after the limit
    expect(store.allLeases()).toEqual([]);
    // Exactly at the limit is still accepted.
    const json = JSON.stringify({ ip: "198.51.100.7" });
    const atLimit = json.slice(0, -1) + " ".repeat(MAX_BODY - json.length) + "}";
    expect(atLimit.length).toBe(MAX_BODY);
    expect((await call("POST", "/v1/lease", { token: tok, body: atLimit, headers: { "content-type": "application/json" } })).status).toBe(200);
  });

  test("a failing postmap answers 503 map_update_failed, keeps the lease, and heals on the next request", async () => {
    const tok = addClient("office");
    pm.fail("postmap: fatal: disk full");
    const r = await call("POST", "/v1/lease", { token: tok });
    expect(r.status).toBe(503);
    expect(r.body.error).toBe("map_update_failed");
    expect(String(r.body.message)).toContain("disk full");
    expect(r.headers.get("retry-after")).toBe("5");
    expect(store.leasesOf("office").map((l) => l.ip)).toEqual(["198.51.100.7"]);
    const health = await call("GET", "/healthz");
    expect(health.status).toBe(503);
    expect(health.body.status).toBe("degraded");

    // A plain renewal would not rebuild, but the earlier failure makes it try again.
    pm.ok();
    const retry = await call("POST", "/v1/lease", { token: tok });
    expect(retry.status).toBe(200);
    expect(retry.body.event).toBe("renew");
    expect(mapEntries()).toEqual(["198.51.100.7 OK"]);
    expect(map.lastError).toBeNull();
    expect((await call("GET", "/healthz")).body).toEqual({ status: "ok" });
  });
});

describe("DELETE /v1/lease", () => {
  test("releases every lease and answers once the map no longer holds them", async () => {
    const tok = addClient("office");
    const other = addClient("other");
    await call("POST", "/v1/lease", { token: tok });
    await call("POST", "/v1/lease", { token: tok, peer: "2001:db8:1:2:3:4:5:7" });
    await call("POST", "/v1/lease", { token: other, peer: "203.0.113.5" });
    pm.slow(0.2);
    const r = await call("DELETE", "/v1/lease", { token: tok });
    expect(mapEntries()).toEqual(["203.0.113.5 OK"]);
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ client: "office", released: ["198.51.100.7", "2001:db8:1:2:3:4:5:7"] });
    const none = await call("DELETE", "/v1/lease", { token: tok });
    expect(none.body).toEqual({ client: "office", released: [] });
  });
});

describe("X-Forwarded-For", () => {
  test("ignored unless the peer is a trusted proxy", async () => {
    const tok = addClient("office");
    const r = await call("GET", "/v1/lease", { token: tok, headers: { "x-forwarded-for": "203.0.113.9" } });
    expect(r.body.ip).toBe("198.51.100.7");
    const garbage = await call("GET", "/v1/lease", { token: tok, headers: { "x-forwarded-for": "not an address" } });
    expect(garbage.status).toBe(200);
  });

  test("from a trusted proxy, the right-most untrusted hop is the client", async () => {
    const tok = addClient("office");
    t.config.trustedProxies = [parseCidr("127.0.0.1")!, parseCidr("10.0.0.0/8")!];
    const one = await call("POST", "/v1/lease", { token: tok, peer: "127.0.0.1", headers: { "x-forwarded-for": "203.0.113.9" } });
    expect(one.body.ip).toBe("203.0.113.9");
    // A spoofed left-most entry is not believed.
    const chain = await call("GET", "/v1/lease", { token: tok, peer: "127.0.0.1", headers: { "x-forwarded-for": "192.0.2.66, 203.0.113.10, 10.1.2.3" } });
    expect(chain.body.ip).toBe("203.0.113.10");
    const mapped = await call("GET", "/v1/lease", { token: tok, peer: "::ffff:127.0.0.1", headers: { "x-forwarded-for": "2001:db8::9" } });
    expect(mapped.body.ip).toBe("2001:db8::9");
    const bad = await call("GET", "/v1/lease", { token: tok, peer: "127.0.0.1", headers: { "x-forwarded-for": "203.0.113.9, 010.0.0.1" } });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toBe("bad_forwarded");
    const noHeader = await call("GET", "/v1/lease", { token: tok, peer: "127.0.0.1" });
    expect(noHeader.body.ip).toBe("127.0.0.1");
  });
});

describe("routing and /healthz", () => {
  test("unknown paths are 404, wrong methods 405 with Allow", async () => {
    const tok = addClient("office");
    for (const path of ["/", "/v1/leases", "/v1/lease/", "/v2/lease", "/healthz/x"]) {
      const r = await call("GET", path, { token: tok });
      expect(r.status).toBe(404);
      expect(r.body.error).toBe("not_found");
    }
    for (const method of ["PUT", "PATCH", "OPTIONS"]) {
      const r = await call(method, "/v1/lease", { token: tok });
      expect(r.status).toBe(405);
      expect(r.headers.get("allow")).toBe("GET, POST, DELETE");
    }
    const h = await call("POST", "/healthz");
    expect(h.status).toBe(405);
    expect(h.headers.get("allow")).toBe("GET, HEAD");
    expect(store.allLeases()).toEqual([]);
  });

  test("/healthz needs no token and reveals no client information", async () => {
    const tok = addClient("secret-client-name");
    await call("POST", "/v1/lease", { token: tok });
    const r = await call("GET", "/healthz");
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ status: "ok" });
    pm.fail("postmap: fatal: cannot write");
    (await leases.release("secret-client-name", null));
    await t.lookup.publish().catch(() => undefined);
    const d = await call("GET", "/healthz");
    expect(d.status).toBe(503);
    expect(Object.keys(d.body).sort()).toEqual(["reasons", "status"]);
    const text = JSON.stringify(d.body);
    expect(text).not.toContain("secret-client-name");
    expect(text).not.toContain("198.51.100.7");
  });
});

describe("metrics", () => {
  test("served to loopback with lease events and refusals counted; 404 for anyone else", async () => {
    const token = addClient("nas");
    expect((await call("POST", "/v1/lease", { token })).status).toBe(200);
    expect((await call("POST", "/v1/lease", { token: `${token}x` })).status).toBe(401);
    const fromLoopback = await t.dispatch(new Request(BASE + "/metrics"), fakeServer("127.0.0.1"));
    expect(fromLoopback.status).toBe(200);
    const text = await fromLoopback.text();
    expect(text).toContain('relayctl_lease_events_total{event="grant"} 1');
    expect(text).toContain('relayctl_refusals_total{reason="unauthorized"} 1');
    const fromOutside = await t.dispatch(new Request(BASE + "/metrics"), fakeServer("198.51.100.7"));
    expect(fromOutside.status).toBe(404);
  });
});

describe("metrics behind a reverse proxy", () => {
  const scrape = async (peer: string, headers: Record<string, string> = {}): Promise<number> => (await t.dispatch(new Request(BASE + "/metrics", { headers }), fakeServer(peer))).status;

  test("through a trusted proxy on loopback the forwarded client is judged: strangers get 404, metrics_allow the text", async () => {
    t.config.trustedProxies = [parseCidr("127.0.0.1")!];
    t.config.metricsAllow = [parseCidr("192.0.2.10")!];
    expect(await scrape("127.0.0.1", { "x-forwarded-for": "203.0.113.9" })).toBe(404);
    expect(await scrape("127.0.0.1", { "x-forwarded-for": "192.0.2.10" })).toBe(200);
    // A spoofed left-most entry is not believed; garbage is not a reader.
    expect(await scrape("127.0.0.1", { "x-forwarded-for": "192.0.2.10, 203.0.113.9" })).toBe(404);
    expect(await scrape("127.0.0.1", { "x-forwarded-for": "not an address" })).toBe(404);
    // Only X-Forwarded-For names the client; another forwarding header alone cannot be judged.
    expect(await scrape("127.0.0.1", { forwarded: "for=192.0.2.10" })).toBe(404);
    expect(await scrape("127.0.0.1", { "x-real-ip": "192.0.2.10" })).toBe(404);
    // Prometheus on this host asking directly.
    expect(await scrape("127.0.0.1")).toBe(200);
  });

  test("a request forwarded by a proxy not in trusted_proxies is refused, even from loopback", async () => {
    expect(await scrape("127.0.0.1", { "x-forwarded-for": "203.0.113.9" })).toBe(404);
    expect(await scrape("::1", { "x-real-ip": "203.0.113.9" })).toBe(404);
    expect(await scrape("127.0.0.1", { forwarded: "for=203.0.113.9" })).toBe(404);
    expect(await scrape("127.0.0.1")).toBe(200);
  });
});

describe("audit log", () => {
  test("grant and replace are audited; plain renewals are not, they count on the lease", async () => {
    const tok = addClient("office");
    await call("POST", "/v1/lease", { token: tok });
    for (let i = 0; i < 3; i++) {
      clock.advance(60_000);
      expect((await call("POST", "/v1/lease", { token: tok })).body.event).toBe("renew");
    }
    expect(store.leasesOf("office")[0]!.renewals).toBe(3);
    await call("POST", "/v1/lease", { token: tok, peer: "203.0.113.5" });
    expect(store.auditLog({ client: "office" }).map((r) => r.event)).toEqual(["replace", "grant"]);
    expect(store.leasesOf("office")[0]!.renewals).toBe(0);
  });

  test("refusals from one source for one reason share a row whose count grows; other reasons get their own", async () => {
    const tok = addClient("office");
    for (let i = 0; i < 4; i++) expect((await call("POST", "/v1/lease", { token: `${tok}x` })).status).toBe(401);
    expect((await call("POST", "/v1/lease", { token: tok, json: { ip: "192.0.2.1" } })).status).toBe(403);
    t.refusals.flush();
    const rows = store.auditLog().filter((r) => r.event === "refuse");
    expect(rows.map((r) => [r.client, r.source, r.detail!.split(":")[0], r.count])).toEqual([
      ["office", "198.51.100.7", "address_not_allowed", 1],
      [null, "198.51.100.7", "unauthorized", 4],
    ]);
    // Metrics still count every refusal.
    expect(t.metrics.refusals.get("unauthorized")).toBe(4);
  });
});
