import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { CLIENT_METRICS_AUTO_MAX } from "../../../src/lib/schema.ts";
import { parseIp } from "../../../src/lib/ip.ts";
import { Alerter, batchEvents, commandEnv, mailMessage, STORM_OVER, type AlertDeps, type AlertEvent } from "../../../src/server/alerts.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";
import { Metrics } from "../../../src/server/metrics.ts";
import { eventOf, expectedMs, judge, MIN_LEARNED_MS, type Watched } from "../../../src/server/overdue.ts";
import { Watchdog } from "../../../src/server/runtime/watchdog.ts";
import { newToken } from "../../../src/server/tokens.ts";
import { FakeClock, relayError, removeTempDirs, silenceLogger, tempDir, testService, type TestService } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const T0 = Date.UTC(2030, 0, 1);
const lease = (renewed: number, opts: { granted?: number; expires?: number; renewals?: number; ip?: string } = {}) => ({
  ip: opts.ip ?? "198.51.100.7",
  granted_at: opts.granted ?? renewed,
  renewed_at: renewed,
  expires_at: opts.expires ?? renewed + 1_200_000,
  renewals: opts.renewals ?? 0,
});
const watched = (over: Partial<Watched>): Watched => ({ name: "nas", expect: null, state: "ok", last_seen: null, last_ip: null, leases: [], ...over });

describe("overdue rules", () => {
  test("late after two expected intervals without a renewal, not before", () => {
    const w = watched({ expect: 240, leases: [lease(T0)] });
    expect(judge(w, T0 + 480_000).state).toBe("ok");
    expect(judge(w, T0 + 480_001)).toEqual({ state: "late", last_seen: T0, last_ip: "198.51.100.7" });
  });

  test("silent once no lease is live, still showing where it was last seen; never seen is ok", () => {
    const w = watched({ expect: 240, leases: [lease(T0, { expires: T0 + 600_000 })] });
    expect(judge(w, T0 + 600_000)).toEqual({ state: "silent", last_seen: T0, last_ip: "198.51.100.7" });
    // Pruned: the row's last_seen stands in for the lease.
    expect(judge(watched({ last_seen: T0, last_ip: "192.0.2.1" }), T0 + 1)).toEqual({ state: "silent", last_seen: T0, last_ip: "192.0.2.1" });
    expect(judge(watched({}), T0).state).toBe("ok");
  });

  test("the interval is learned from the lease's renewals, at least a minute; unknown never makes a client late", () => {
    expect(expectedMs(watched({ leases: [lease(T0 + 3 * 240_000, { granted: T0, renewals: 3 })] }))).toEqual({ ms: 240_000, learned: true });
    expect(expectedMs(watched({ leases: [lease(T0 + 2_000, { granted: T0, renewals: 2 })] }))).toEqual({ ms: MIN_LEARNED_MS, learned: true });
    expect(expectedMs(watched({ expect: 2, leases: [lease(T0, { renewals: 5 })] }))).toEqual({ ms: 2_000, learned: false });
    const fresh = watched({ leases: [lease(T0)] });
    expect(expectedMs(fresh)).toBeNull();
    expect(judge(fresh, T0 + 1_100_000).state).toBe("ok");
  });

  test("events: late, silent, back; nothing when the state stays", () => {
    expect(eventOf("ok", "late")).toBe("late");
    expect(eventOf("late", "silent")).toBe("silent");
    expect(eventOf("ok", "silent")).toBe("silent");
    expect(eventOf("silent", "ok")).toBe("back");
    expect(eventOf("late", "ok")).toBe("back");
    expect(eventOf("late", "late")).toBeNull();
  });
});

/** Delivery that records what it was asked to do instead of doing it. */
function recorder(): { deps: Partial<AlertDeps>; runs: { argv: string[]; input?: string; env?: Record<string, string> }[]; posts: { url: string; body: string }[] } {
  const runs: { argv: string[]; input?: string; env?: Record<string, string> }[] = [];
  const posts: { url: string; body: string }[] = [];
  return {
    runs,
    posts,
    deps: {
      run: async (argv, _ms, opts = {}) => (runs.push({ argv, ...opts }), { code: 0, stdout: "", stderr: "", timedOut: false }),
      fetch: async (url, init) => (posts.push({ url, body: String(init.body) }), new Response("ok")),
      sleep: async () => undefined,
      sendmail: async () => "/usr/sbin/sendmail",
      host: "relay1",
    },
  };
}

describe("the overdue check (SQLite, fake clock)", () => {
  let t: TestService;
  let clock: FakeClock;
  let rec: ReturnType<typeof recorder>;

  const enroll = (name: string, expect: number | null = 2): void => {
    const tok = newToken();
    t.store.insertClient({ name, token_id: tok.tokenId, token_hash: tok.hash, ttl: 10, allow: NO_ALLOW, created_at: clock.now(), ipv6_prefix: null });
    if (expect !== null) t.store.setExpect(name, expect);
  };
  const renew = async (name: string, addr = "198.51.100.7") => t.service.renew(t.store.getClient(name)!, parseIp(addr)!);
  const check = async (): Promise<AlertEvent[]> => {
    const events = await t.watchdog.check();
    await t.alerter.idle();
    return events;
  };

  beforeEach(async () => {
    clock = new FakeClock(T0);
    rec = recorder();
    t = await testService(tempDir(), clock, { alertDeps: rec.deps });
    t.config.alerts = { command: ["/usr/local/bin/page"], mail: ["postmaster@example.org"], webhook: "https://alerts.example.org/hook" };
  });

  test("late -> silent -> back: one event each, none while renewing, and the state is on the client row", async () => {
    enroll("nas");
    await renew("nas");
    for (let i = 0; i < 5; i++) {
      clock.advance(2_000);
      await renew("nas");
      expect(await check()).toEqual([]);
    }
    clock.advance(4_001);
    const late = await check();
    expect(late).toMatchObject([{ event: "late", client: "nas", state: "late", last_address: "198.51.100.7", expect_seconds: 2, host: "relay1" }]);
    expect(await check()).toEqual([]);
    expect(t.store.db.query("SELECT overdue_state FROM clients WHERE name = 'nas'").get()).toEqual({ overdue_state: "late" });
    // The lease expires and is pruned: silent, with the last address still known.
    clock.advance(10_000);
    await t.leases.expireDue();
    expect(await check()).toMatchObject([{ event: "silent", client: "nas", last_address: "198.51.100.7" }]);
    expect(await check()).toEqual([]);
    await renew("nas", "198.51.100.8");
    expect(await check()).toMatchObject([{ event: "back", client: "nas", state: "ok", last_address: "198.51.100.8" }]);
    // Each of the three went to every channel once.
    expect(rec.runs.filter((r) => r.argv[0] === "/usr/local/bin/page").map((r) => r.env!.RELAYCTL_EVENT)).toEqual(["late", "silent", "back"]);
    expect(rec.runs.filter((r) => r.argv[0] === "/usr/sbin/sendmail").length).toBe(3);
    expect(rec.posts.map((p) => JSON.parse(p.body).event)).toEqual(["late", "silent", "back"]);
    expect(t.store.auditLog({ client: "nas" }).map((a) => a.event).filter((e) => ["late", "silent", "back"].includes(e))).toEqual(["back", "silent", "late"]);
  });

  test("a client whose lease expires before it is late goes straight to silent, its last renewal kept at pruning", async () => {
    enroll("nas", 60);
    await renew("nas");
    clock.advance(10_000);
    await t.leases.expireDue();
    expect(t.store.leasesOf("nas")).toEqual([]);
    expect(await check()).toMatchObject([{ event: "silent", last_seen: new Date(T0).toISOString(), last_address: "198.51.100.7" }]);
  });

  test("of two relay hosts checking one database, exactly one records and alerts each change", async () => {
    enroll("nas");
    await renew("nas");
    clock.advance(5_000);
    const other = recorder();
    const second = new Watchdog({ store: t.shared, clock, alerter: new Alerter(() => t.config.alerts, other.deps), config: () => t.config, host: "relay2", clients: () => 1 });
    const [a, b] = await Promise.all([t.watchdog.check(), second.check()]);
    expect([...a, ...b].map((e) => e.event)).toEqual(["late"]);
  });

  test(`more than ${STORM_OVER} changes in one check are one summary; nothing is judged while the store is down`, async () => {
    for (let i = 0; i < STORM_OVER + 2; i++) {
      enroll(`c${i}`);
      await renew(`c${i}`, `198.51.100.${i + 1}`);
    }
    clock.advance(5_000);
    const problems = t.shared.problems;
    t.shared.problems = () => ["database down"];
    expect(await check()).toEqual([]);
    t.shared.problems = problems;
    const events = await check();
    expect(events).toMatchObject([{ event: "summary", client: null, counts: { late: STORM_OVER + 2 } }]);
    expect(events[0]!.clients!.length).toBe(STORM_OVER + 2);
    expect(rec.runs.filter((r) => r.argv[0] === "/usr/sbin/sendmail").length).toBe(1);
    expect(rec.runs.find((r) => r.argv[0] === "/usr/local/bin/page")!.env!.RELAYCTL_COUNT).toBe(String(STORM_OVER + 2));
  });

  test("metrics: a late/silent count always, per-client series only with client_metrics", async () => {
    enroll("nas");
    await renew("nas");
    clock.advance(5_000);
    await check();
    const render = () => new Metrics().render({ leases: 1, clients: 1, degraded: false, lookupEntries: 1, overdue: t.watchdog });
    expect(render()).toContain('relayctl_clients_overdue{state="late"} 1');
    expect(render()).toContain('relayctl_client_overdue{client="nas"} 1');
    expect(render()).toContain(`relayctl_client_last_renewal_timestamp_seconds{client="nas"} ${(T0 / 1000).toFixed(3)}`);
    t.config.clientMetrics = false;
    await check();
    expect(render()).toContain('relayctl_clients_overdue{state="late"} 1');
    expect(render()).not.toContain("relayctl_client_overdue{");
    // "auto" (the default) keeps them while few enough clients are enrolled; above the limit a check reads only the candidates.
    t.config.clientMetrics = "auto";
    await check();
    expect(render()).toContain('relayctl_client_overdue{client="nas"} 1');
    t.server.follower.clients = CLIENT_METRICS_AUTO_MAX + 1;
    await check();
    expect(render()).toContain('relayctl_clients_overdue{state="late"} 1');
    expect(render()).not.toContain("relayctl_client_overdue{");
  });
});

describe("alert delivery", () => {
  const event: AlertEvent = { event: "late", client: "nas", state: "late", last_seen: "2030-01-01T00:00:00.000Z", last_address: "198.51.100.7", expect_seconds: 240, at: "2030-01-01T00:08:01.000Z", host: "relay1" };

  test("alert_command runs its argv with the event on stdin and in a fixed environment", async () => {
    const dir = tempDir();
    const out = join(dir, "out");
    // A real program: the event must arrive through stdin and the environment, not argv.
    const a = new Alerter(() => ({ command: ["/bin/sh", "-c", `cat > ${out}.json; env > ${out}.env`], mail: [] }));
    a.send([event]);
    await a.idle();
    expect(JSON.parse(readFileSync(`${out}.json`, "utf8"))).toEqual(event);
    const env = readFileSync(`${out}.env`, "utf8");
    for (const line of ["RELAYCTL_EVENT=late", "RELAYCTL_CLIENT=nas", "RELAYCTL_STATE=late", "RELAYCTL_LAST_ADDRESS=198.51.100.7", "RELAYCTL_EXPECT=240"]) expect(env).toContain(line);
    expect(commandEnv(event).HOME).toBeUndefined();
  });

  test("the webhook is retried with backoff on failure, at most three times; a 4xx is not retried", async () => {
    const calls: number[] = [];
    const sleeps: number[] = [];
    let status = [500, 503, 200];
    const a = new Alerter(() => ({ command: [], mail: [], webhook: "https://h.example/x" }), {
      fetch: async () => new Response("", { status: status[calls.push(1) - 1] ?? 500 }),
      sleep: async (ms) => void sleeps.push(ms),
    });
    a.send([event]);
    await a.idle();
    expect(calls.length).toBe(3);
    expect(sleeps).toEqual([1000, 2000]);
    status = [500, 500, 500, 500];
    calls.length = 0;
    a.send([event]);
    await a.idle();
    expect(calls.length).toBe(3);
    status = [400];
    calls.length = 0;
    a.send([event]);
    await a.idle();
    expect(calls.length).toBe(1);
  });

  test("the mail is a plain message to sendmail -i -- rcpt; a storm is one summary", () => {
    const msg = mailMessage(event, ["postmaster@example.org"]);
    expect(msg).toStartWith("To: postmaster@example.org\nSubject: relayctl: client nas is late");
    expect(msg).toContain("Auto-Submitted: auto-generated");
    const many = Array.from({ length: STORM_OVER + 1 }, (_, i) => ({ ...event, client: `c${i}` }));
    expect(batchEvents(many.slice(0, STORM_OVER), event.at, "relay1").length).toBe(STORM_OVER);
    expect(batchEvents(many, event.at, "relay1")).toMatchObject([{ event: "summary", counts: { late: STORM_OVER + 1 } }]);
  });
});

describe("alert settings in server.toml", () => {
  const load = (toml: string) => {
    const path = join(tempDir(), "server.toml");
    writeFileSync(path, toml);
    return () => loadServerConfig(path);
  };

  test("are read and checked, errors naming file and line", async () => {
    const c = load('alert_command = ["/usr/local/bin/page", "--relay"]\nalert_webhook = "http://127.0.0.1:9000/x"\nalert_mail = "ops@example.org"\nclient_metrics = false\noverdue_check = "1s"\n')();
    expect(c.alerts).toEqual({ command: ["/usr/local/bin/page", "--relay"], webhook: "http://127.0.0.1:9000/x", webhookCa: undefined, mail: ["ops@example.org"] });
    expect(c.clientMetrics).toBe(false);
    expect(load("")().clientMetrics).toBe("auto");
    expect(load('client_metrics = "auto"\n')().clientMetrics).toBe("auto");
    expect(c.overdueCheck).toBe(1);
    expect((await relayError(load('ttl = "20m"\nalert_webhook = "http://alerts.example.org/x"\n'))).message).toMatch(/server\.toml:2: alert_webhook: must be an https:\/\/ URL/);
    expect((await relayError(load('alert_mail = ["ops@example.org", "-oQ/tmp x"]\n'))).message).toMatch(/:1: alert_mail: "-oQ\/tmp x" is not a mail address/);
    expect((await relayError(load('alert_command = ["page"]\n'))).message).toMatch(/:1: alert_command: the program must be an absolute path/);
    expect((await relayError(load("alert_command = []\n"))).message).toMatch(/alert_command: is empty/);
    expect((await relayError(load('client_metrics = "no"\n'))).message).toMatch(/client_metrics: must be true, false or "auto"/);
  });
});
