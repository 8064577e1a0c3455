import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { HttpError } from "../../../src/server/doors/api.ts";
import { answerFor, CHALLENGE, credentialOf, parseMyip, parseUpdate, resultLine } from "../../../src/server/doors/dyndns2.ts";
import { dispatcher } from "../../../src/server/doors/routes.ts";
import { parseIp } from "../../../src/lib/ip.ts";
import { LeaseError, type LeaseErrorCode } from "../../../src/server/service.ts";
import type { ClientRow, StateStore } from "../../../src/server/state.ts";
import { AuthThrottle, RenewalLimiter } from "../../../src/server/throttle.ts";
import { newToken } from "../../../src/server/tokens.ts";
import { FakeClock, fakeServer, removeTempDirs, silenceLogger, tempDir, testService, type TestService } from "../helpers.ts";
import { parseAllowList } from "../../../src/server/allow.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

/** inadyn's custom provider counts a body holding any of these (any case) as success. */
const SUCCESS_WORDS = /ok|good|true|updated|success|nochg/i;

const q = (s: string): URLSearchParams => new URLSearchParams(s);
const b64 = (s: string): string => Buffer.from(s).toString("base64");

describe("parseMyip", () => {
  test("absent, empty and all-empty mean the observed address", () => {
    for (const v of [null, "", ",", " , "]) expect(parseMyip(v)).toEqual([]);
  });

  test("one address, percent-encoded IPv6 (inadyn), IPv4-mapped normalised", () => {
    expect(parseMyip("198.51.100.7").map((i) => i.text)).toEqual(["198.51.100.7"]);
    expect(parseMyip(q("myip=2001%3adb8%3a%3a10").get("myip")).map((i) => i.text)).toEqual(["2001:db8::10"]);
    expect(parseMyip(q("myip=2001%3ADB8%3A0%3A0%3A0%3A0%3A0%3A10").get("myip")).map((i) => i.text)).toEqual(["2001:db8::10"]);
    expect(parseMyip("::ffff:198.51.100.7")).toEqual([{ family: 4, bytes: new Uint8Array([198, 51, 100, 7]), text: "198.51.100.7" }]);
  });

  test("v4,v6 in either order; an empty part (FRITZ!Box without IPv6) is dropped", () => {
    expect(parseMyip("198.51.100.7,2001:db8::10").map((i) => i.family)).toEqual([4, 6]);
    expect(parseMyip("2001:db8::10, 198.51.100.7").map((i) => i.family)).toEqual([6, 4]);
    expect(parseMyip("198.51.100.7,").map((i) => i.text)).toEqual(["198.51.100.7"]);
  });

  test("garbage, two of one family, three entries, CIDR and zone ids are a 400", () => {
    for (const v of ["v4", "198.51.100.256", "198.51.100.7,198.51.100.8", "2001:db8::1,2001:db8::2", "198.51.100.7,2001:db8::1,192.0.2.1", "198.51.100.0/24", "fe80::1%eth0", "[2001:db8::1]"]) {
      let err: unknown;
      try {
        parseMyip(v);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(HttpError);
      expect((err as HttpError).status).toBe(400);
      // The refusal is audited: it must not echo what was sent (a misplaced password could be in it).
      expect((err as HttpError).message).toBe("myip must be an IPv4 address, an IPv6 address, or one of each separated by a comma");
    }
  });
});

describe("credentialOf", () => {
  test("Basic: name and token", () => {
    expect(credentialOf(`Basic ${b64("router:abc.def")}`, q(""))).toEqual({ name: "router", token: "abc.def" });
  });

  test("query username and password (FRITZ!Box-style URLs) when no Authorization header is sent", () => {
    expect(credentialOf(null, q("username=router&password=abc.def"))).toEqual({ name: "router", token: "abc.def" });
  });

  test("the header wins over the query; either half missing is no credential", () => {
    expect(credentialOf(`Basic ${b64("a:t1")}`, q("username=b&password=t2"))).toEqual({ name: "a", token: "t1" });
    expect(credentialOf("Bearer x", q("username=b&password=t2"))).toBeNull();
    expect(credentialOf(null, q("username=router"))).toBeNull();
    expect(credentialOf(null, q("password=abc.def"))).toBeNull();
    expect(credentialOf(null, q("username=&password=abc.def"))).toBeNull();
    expect(credentialOf(`Basic ${b64(":abc.def")}`, q(""))).toBeNull();
  });
});

describe("parseUpdate", () => {
  test("offline=YES in any case releases; offline=NO and the other dyndns2 parameters are ignored", () => {
    expect(parseUpdate(q("hostname=h.example&offline=YES"))).toEqual({ addresses: [], offline: true });
    expect(parseUpdate(q("offline=yes")).offline).toBe(true);
    const hikvision = parseUpdate(q("system=dyndns&hostname=h.example&myip=&wildcard=OFF&mx=NO&backmx=NO&offline=NO"));
    expect(hikvision).toEqual({ addresses: [], offline: false });
  });
});

describe("answers", () => {
  test("result lines: good for a grant or a move, nochg for a renewal, with the address", () => {
    const ip = parseIp("198.51.100.7")!;
    expect(resultLine("grant", ip)).toBe("good 198.51.100.7");
    expect(resultLine("replace", ip)).toBe("good 198.51.100.7");
    expect(resultLine("renew", ip)).toBe("nochg 198.51.100.7");
  });

  const expected: Record<LeaseErrorCode, [number, string]> = {
    unauthorized: [401, "badauth"],
    too_many_failures: [401, "badauth"],
    rate_limited: [503, "911"],
    no_address: [400, "notfqdn"],
    bad_forwarded: [400, "notfqdn"],
    invalid_ip: [400, "notfqdn"],
    address_not_allowed: [403, "nohost"],
    lookup_cannot_hold: [403, "nohost"],
    map_update_failed: [503, "911"],
    state_unavailable: [503, "911"],
  };
  for (const [code, [status, word]] of Object.entries(expected)) {
    test(`${code} is ${status} ${word}, no success word in the body`, () => {
      const a = answerFor(new LeaseError(code as LeaseErrorCode, "whatever the service said", 7))!;
      expect(a.status).toBe(status);
      expect(a.lines).toEqual([word]);
      expect(a.lines.join("\n")).not.toMatch(SUCCESS_WORDS);
      expect(a.headers["retry-after"]).toBe("7");
      // The challenge goes with every 401 (RFC 9110) and with nothing else.
      expect<string | null>(a.headers["www-authenticate"] ?? null).toBe(status === 401 ? CHALLENGE : null);
    });
  }

  test("door refusals: a malformed parameter is notfqdn, a request it cannot take is badagent", () => {
    expect(answerFor(new HttpError(400, "invalid_myip", "x"))).toEqual({ status: 400, lines: ["notfqdn"], headers: {} });
    expect(answerFor(new HttpError(405, "method_not_allowed", "x", { allow: "GET, POST" }))).toEqual({ status: 405, lines: ["badagent"], headers: { allow: "GET, POST" } });
    expect(answerFor(new HttpError(413, "body_too_large", "x"))!.lines).toEqual(["badagent"]);
  });

  test("a state database error is 503 911; anything unexpected is left to the route (500 911)", () => {
    const sqlite = Object.assign(new Error("disk I/O error"), { name: "SQLiteError" });
    expect(answerFor(sqlite)).toEqual({ status: 503, lines: ["911"], headers: { "retry-after": "30" } });
    expect(answerFor(new TypeError("bug"))).toBeNull();
  });
});

describe("GET|POST /nic/update", () => {
  let t: TestService;
  let store: StateStore;
  let clock: FakeClock;
  let dispatch: ReturnType<typeof dispatcher>;

  const setUp = async (opts: { authThrottle?: AuthThrottle; renewals?: RenewalLimiter } = {}): Promise<void> => {
    clock = new FakeClock();
    t = await testService(tempDir("relayctl-dyndns-"), clock, opts);
    store = t.store;
    // The listener's own table: /nic/update is a row of DOORS.
    dispatch = t.dispatch;
  };
  beforeEach(() => setUp());
  afterEach(() => store.close());

  function addClient(name: string, allow: string[] = []): string {
    const tok = newToken();
    const row: ClientRow = { name, token_id: tok.tokenId, token_hash: tok.hash, ttl: null, allow: parseAllowList(JSON.stringify(allow)), created_at: clock.now(), ipv6_prefix: null };
    store.insertClient(row);
    return tok.token;
  }

  async function call(query: string, opts: { user?: string; token?: string; peer?: string; method?: string; form?: string; type?: string } = {}): Promise<{ status: number; text: string; headers: Headers }> {
    const headers: Record<string, string> = {};
    if (opts.token !== undefined) headers.authorization = `Basic ${b64(`${opts.user ?? "router"}:${opts.token}`)}`;
    if (opts.form !== undefined) headers["content-type"] = opts.type ?? "application/x-www-form-urlencoded";
    const req = new Request(`https://relay.example:8443/nic/update${query}`, { method: opts.method ?? (opts.form !== undefined ? "POST" : "GET"), headers, body: opts.form });
    const res = await dispatch(req, fakeServer(opts.peer ?? "198.51.100.7"));
    expect(res.headers.get("content-type")).toBe("text/plain; charset=utf-8");
    expect(res.headers.get("cache-control")).toBe("no-store");
    return { status: res.status, text: await res.text(), headers: res.headers };
  }
  const leased = (): string[] => store.allLeases().map((l) => l.ip).sort();

  test("a new lease is good, the same again nochg, a move good: one line each, status 200", async () => {
    const tok = addClient("router");
    expect(await call("?hostname=h.example", { token: tok })).toMatchObject({ status: 200, text: "good 198.51.100.7\n" });
    expect(await call("?hostname=h.example&myip=", { token: tok })).toMatchObject({ status: 200, text: "nochg 198.51.100.7\n" });
    expect(await call("?myip=203.0.113.5", { token: tok, peer: "203.0.113.5" })).toMatchObject({ status: 200, text: "good 203.0.113.5\n" });
    expect(leased()).toEqual(["203.0.113.5"]);
  });

  test("no credentials: 401 with the Basic challenge and badauth, not counted as a failure nor audited", async () => {
    await setUp({ authThrottle: new AuthThrottle(2) });
    const tok = addClient("router");
    for (let i = 0; i < 5; i++) {
      const r = await call("?myip=198.51.100.7");
      expect(r.status).toBe(401);
      expect(r.headers.get("www-authenticate")).toBe('Basic realm="relayctl"');
      expect(r.text).toBe("badauth\n");
    }
    // wget's second request, with the credentials, still works.
    expect((await call("", { token: tok })).status).toBe(200);
    expect(store.auditLog().filter((a) => a.event === "refuse")).toEqual([]);
  });

  test("a wrong password, a wrong user name or a revoked token: 401 badauth, nothing leased, no secret in the audit log", async () => {
    const tok = addClient("router");
    addClient("other");
    const wrong = newToken().token;
    for (const r of [await call("", { token: wrong }), await call("", { user: "other", token: tok }), await call(`?username=router&password=${encodeURIComponent(wrong)}`)]) {
      expect(r.status).toBe(401);
      expect(r.text).toBe("badauth\n");
      expect(r.headers.get("www-authenticate")).toBe(CHALLENGE);
    }
    expect(leased()).toEqual([]);
    t.refusals.flush();
    const audit = JSON.stringify(store.auditLog());
    expect(audit).toContain("unauthorized");
    for (const secret of [tok, wrong, tok.split(".")[1]!, wrong.split(".")[1]!]) expect(audit).not.toContain(secret);
  });

  test("credentials in the query string work (FRITZ!Box-style URL)", async () => {
    const tok = addClient("router");
    const r = await call(`?hostname=h.example&myip=198.51.100.7&username=router&password=${encodeURIComponent(tok)}`);
    expect(r).toMatchObject({ status: 200, text: "good 198.51.100.7\n" });
  });

  test("POST with a form body takes the same parameters", async () => {
    const tok = addClient("router", ["198.51.100.0/24"]);
    expect(await call("", { token: tok, form: "hostname=h.example&myip=198.51.100.9" })).toMatchObject({ status: 200, text: "good 198.51.100.9\n" });
    const json = await call("", { token: tok, form: '{"myip":"198.51.100.9"}', type: "application/json" });
    expect(json).toMatchObject({ status: 415, text: "badagent\n" });
    expect((await call("", { token: tok, method: "PUT" })).status).toBe(405);
  });

  test("without an allow list only the connecting address: another is 403 nohost and nothing is leased", async () => {
    const tok = addClient("router");
    expect(await call("?myip=203.0.113.5", { token: tok })).toMatchObject({ status: 403, text: "nohost\n" });
    expect(await call("?myip=bogus", { token: tok })).toMatchObject({ status: 400, text: "notfqdn\n" });
    expect(leased()).toEqual([]);
  });

  // A zero run inside the address would make it a parent key in a Postfix map (the map lookup refuses those).
  const V6 = "2001:db8:1:2:3:4:5:10";

  test("v4,v6: one lease per family, one line per address; naming one family leaves the other's lease alone", async () => {
    const tok = addClient("router", ["198.51.100.0/24", "2001:db8::/32"]);
    expect(await call(`?myip=198.51.100.9,${encodeURIComponent(V6)}`, { token: tok })).toMatchObject({ status: 200, text: `good 198.51.100.9\ngood ${V6}\n` });
    expect(leased()).toEqual(["198.51.100.9", V6]);
    expect(await call("?myip=198.51.100.10", { token: tok })).toMatchObject({ status: 200, text: "good 198.51.100.10\n" });
    expect(await call(`?myip=${V6}`, { token: tok })).toMatchObject({ status: 200, text: `nochg ${V6}\n` });
    expect(leased()).toEqual(["198.51.100.10", V6]);
    expect(await call("?myip=::ffff:198.51.100.10", { token: tok })).toMatchObject({ status: 200, text: "nochg 198.51.100.10\n" });
  });

  test("v4,v6 is all or nothing: a refused address leaves the other unleased too", async () => {
    const tok = addClient("router", ["198.51.100.0/24"]);
    expect(await call(`?myip=198.51.100.9,${V6}`, { token: tok })).toMatchObject({ status: 403, text: "nohost\n" });
    expect(leased()).toEqual([]);
  });

  test("v4,v6 is all or nothing for the lookup too: an address the map cannot hold leaves the other unleased", async () => {
    const tok = addClient("router", ["198.51.100.0/24", "2001:db8::/32"]);
    expect(await call("?myip=198.51.100.9,2001:db8::10", { token: tok })).toMatchObject({ status: 403, text: "nohost\n" });
    expect(leased()).toEqual([]);
  });

  test("offline=YES releases the named family, or every lease without myip", async () => {
    const tok = addClient("router", ["198.51.100.0/24", "2001:db8::/32"]);
    expect((await call(`?myip=198.51.100.9,${V6}`, { token: tok })).status).toBe(200);
    expect(await call(`?myip=${V6}&offline=YES`, { token: tok })).toMatchObject({ status: 200, text: `good ${V6}\n` });
    expect(leased()).toEqual(["198.51.100.9"]);
    expect(await call("?offline=yes", { token: tok })).toMatchObject({ status: 200, text: "good 198.51.100.7\n" });
    expect(leased()).toEqual([]);
    expect(await call("?offline=YES", { token: tok })).toMatchObject({ status: 200, text: "nochg 198.51.100.7\n" });
  });

  test("offline=YES takes a renewal token like an update: a token holder cannot alternate offline and update past the cap", async () => {
    await setUp({ renewals: new RenewalLimiter(2) });
    const tok = addClient("router");
    expect((await call("", { token: tok })).status).toBe(200);
    expect(await call("?offline=YES", { token: tok })).toMatchObject({ status: 200, text: "good 198.51.100.7\n" });
    expect(await call("", { token: tok })).toMatchObject({ status: 503, text: "911\n" });
    // Going offline is never refused; with nothing leased it writes nothing.
    expect(await call("?offline=YES", { token: tok })).toMatchObject({ status: 200, text: "nochg 198.51.100.7\n" });
    expect(store.auditLog({ client: "router" }).filter((r) => r.event !== "refuse").map((r) => r.event)).toEqual(["release", "grant"]);
  });

  test("v4,v6 takes one renewal token and is applied whole or not at all, also at the cap", async () => {
    await setUp({ renewals: new RenewalLimiter(2) });
    const tok = addClient("router", ["198.51.100.0/24", "2001:db8::/32"]);
    expect((await call("?myip=198.51.100.9", { token: tok })).status).toBe(200);
    expect(await call(`?myip=198.51.100.10,${V6}`, { token: tok })).toMatchObject({ status: 200, text: `good 198.51.100.10\ngood ${V6}\n` });
    const before = store.allLeases();
    clock.advance(1000);
    expect(await call(`?myip=198.51.100.11,${V6}`, { token: tok })).toMatchObject({ status: 503, text: "911\n" });
    expect(store.allLeases()).toEqual(before);
  });

  test("offline=YES with v4,v6 releases both families with one token", async () => {
    await setUp({ renewals: new RenewalLimiter(2) });
    const tok = addClient("router", ["198.51.100.0/24", "2001:db8::/32"]);
    expect((await call(`?myip=198.51.100.9,${V6}`, { token: tok })).status).toBe(200);
    expect(await call(`?myip=198.51.100.9,${V6}&offline=YES`, { token: tok })).toMatchObject({ status: 200, text: `good 198.51.100.9\ngood ${V6}\n` });
    expect(leased()).toEqual([]);
  });

  test("repeated nochg is never abuse; only the renewal cap refuses, with 503 911 and Retry-After", async () => {
    await setUp({ renewals: new RenewalLimiter(3) });
    const tok = addClient("router");
    for (let i = 0; i < 3; i++) expect((await call("", { token: tok })).status).toBe(200);
    const r = await call("", { token: tok });
    expect(r).toMatchObject({ status: 503, text: "911\n" });
    expect(Number(r.headers.get("retry-after"))).toBeGreaterThan(0);
  });

  test("a source blocked for bad passwords still gets the challenge, and the right password", async () => {
    await setUp({ authThrottle: new AuthThrottle(2) });
    const tok = addClient("router");
    const wrong = newToken().token;
    for (let i = 0; i < 3; i++) await call("", { token: wrong });
    const blocked = await call("", { token: wrong });
    expect(blocked).toMatchObject({ status: 401, text: "badauth\n" });
    expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(0);
    expect((await call("")).status).toBe(401);
    expect(await call("", { token: tok })).toMatchObject({ status: 200, text: "good 198.51.100.7\n" });
  });

  test("postmap failing: 503 911, and the answer holds no success word", async () => {
    const tok = addClient("router");
    t.pm.fail("postmap: fatal: boom");
    const r = await call("", { token: tok });
    expect(r.status).toBe(503);
    expect(r.text).toBe("911\n");
    expect(r.text).not.toMatch(SUCCESS_WORDS);
  });
});
