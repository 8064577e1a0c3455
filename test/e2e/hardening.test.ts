/**
 * Hostile input, brute force, faults and restarts against the compiled
 * server and a real Postfix. After each scenario swaks proves the map was
 * never emptied or widened: the leased host relays, the others do not.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "node:net";
import { requireE2E, run, which, type Host } from "./harness.ts";
import { addClient, apiCaller, BIN, onHost, relayctl, stage, tokenOf, type Stage } from "./relayctl.ts";

setDefaultTimeout(60_000);
type Body = string | ReadableStream;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const body = async (r: Response): Promise<Record<string, any>> => (await r.json()) as Record<string, any>;
const enabled = requireE2E();

describe.skipIf(!enabled)("hardening", () => {
  let s: Stage;
  let api: ReturnType<typeof apiCaller>;
  let manyToken: string;
  const pool: string[] = [];
  let turn = 0;
  /** POSTs a named address, spreading requests over a pool of clients so the per-client cap stays out of the way. */
  const lease = (ip: unknown, token = pool[turn++ % pool.length]!) =>
    api("/v1/lease", { method: "POST", token, body: JSON.stringify({ ip }), headers: { "content-type": "application/json" } });
  const releaseAll = async (): Promise<void> => {
    for (const token of [manyToken, ...pool]) await api("/v1/lease", { method: "DELETE", token });
  };
  const flag = (name: string): string => join(s.tmp.path, `postmap-${name}`);
  const wrapper = (): string => join(s.tmp.path, "postmap-wrapper");
  const renew = (host: Host, name: string, extra: string[] = []) => onHost(host, ["client", "--config", s.cfg(name), ...extra]);
  /** The map still holds exactly h1's lease: h1 relays, h2 does not. */
  const mapIntact = async (): Promise<void> => {
    expect(s.mapEntries()).toEqual([`${s.h1.ip} OK`]);
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.relays(s.h2)).toBe(false);
  };
  const waitFor = async (what: string, ok: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!(await ok())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await Bun.sleep(100);
    }
  };

  beforeAll(async () => {
    s = await stage({
      prefix: "rch",
      prepare: async (st) => {
        s = st;
        // A small filesystem of its own, so the test can make it full or read-only.
        mkdirSync(st.stateDir);
        await run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "relayctl-e2e", st.stateDir]);
        st.onCleanup(() => run(["umount", "-l", st.stateDir]));
        // postmap behind a switch: flag files make it fail or hang.
        writeFileSync(
          wrapper(),
          `#!/bin/sh\n[ -e '${flag("fail")}' ] && { echo 'postmap: fatal: simulated failure' >&2; exit 1; }\n[ -e '${flag("hang")}' ] && exec sleep 60\nexec ${which("postmap")} "$@"\n`,
        );
        chmodSync(wrapper(), 0o755);
        st.writeConfig({ postmap: wrapper(), postmap_timeout: "2s", renewals_per_minute: 30, trusted_proxies: ["198.18.0.1/32"] });
      },
      ready: async (st) => {
        api = apiCaller(st.url, st.stateDir);
        await st.enroll(st.h1, "h1");
        await st.enroll(st.h2, "h2");
        manyToken = tokenOf(await addClient(st.config, "many", ["--allow", "198.18.0.0/24", "--allow", "127.0.0.0/8"]));
        for (let i = 0; i < 16; i++) pool.push(tokenOf(await addClient(st.config, `m${i}`, ["--allow", "198.18.0.0/24"])));
        expect((await renew(st.h1, "h1")).code).toBe(0);
      },
    });
  }, 180_000);

  afterAll(() => s?.cleanup());

  test("hostile input is refused with the right status and never reaches the map", async () => {
    const post = (body: Body, headers: Record<string, string> = { "content-type": "application/json" }) =>
      api("/v1/lease", { method: "POST", token: pool[turn++ % pool.length], body, headers });
    expect((await post(JSON.stringify({ ip: "198.18.0.9", pad: "x".repeat(10_000) }))).status).toBe(413);
    // Chunked, no length: the cap still holds while streaming.
    const stream = new ReadableStream({
      pull(c) {
        c.enqueue(new TextEncoder().encode("x".repeat(8192)));
      },
    });
    expect((await post(stream)).status).toBe(413);
    expect((await post('{"ip": "198.18.0.9"}', { "content-type": "text/plain" })).status).toBe(415);
    expect((await post('{"ip": ')).status).toBe(400);
    for (const bad of ["198.18.0.09", "198.18.0.9 ", " 198.18.0.9", "198.18.0.9\n198.18.0.10 OK", "198.18.0.0/24", "fe80::1%eth0", "[::1]", "198.18.0.9 OK", "", 42]) {
      const r = await post(JSON.stringify({ ip: bad }));
      expect({ bad, status: r.status }).toEqual({ bad, status: 400 });
      expect((await body(r)).error).toBe("invalid_ip");
    }
    // Special addresses: refused unless the allow list names them (it names 127.0.0.0/8).
    expect((await lease("127.0.0.5", manyToken)).status).toBe(200);
    await api("/v1/lease", { method: "DELETE", token: manyToken });
    expect((await lease("127.0.0.5")).status).toBe(403);
    expect((await lease("224.0.0.1", manyToken)).status).toBe(403);
    expect((await lease("198.51.100.7")).status).toBe(403);
    expect((await api("/v1/nothing", { token: manyToken })).status).toBe(404);
    expect((await api("/v1/lease", { method: "PUT", token: manyToken })).status).toBe(405);
    expect((await api("/healthz", { method: "POST" })).status).toBe(405);
    // Plain HTTP on the TLS port is never served.
    const plain = await new Promise<string>((resolve) => {
      const sock = connect({ host: "198.18.0.1", port: Number(new URL(s.url).port) }, () => sock.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
      let got = "";
      sock.on("data", (d) => (got += d.toString("latin1")));
      sock.on("close", () => resolve(got));
      sock.on("error", () => resolve(got));
      sock.setTimeout(3000, () => sock.destroy());
    });
    expect(plain).not.toContain("HTTP/1.1 200");
    expect(plain).not.toContain("status");
    await mapIntact();
  });

  test("X-Forwarded-For counts only from trusted proxies", async () => {
    // From 198.18.0.1 (trusted): the forwarded address is the client's.
    let r = await api("/v1/lease", { method: "GET", token: manyToken, headers: { "x-forwarded-for": "198.18.0.77" } });
    expect((await body(r)).ip).toBe("198.18.0.77");
    // From s.h2 (not trusted): ignored, the connection's address counts.
    const h2tok = readFileSync(s.cfg("h2"), "utf8").match(/token = "([^"]+)"/)![1]!;
    const curl = await s.h2.run(["curl", "-sS", "--cacert", join(s.stateDir, "tls", "cert.pem"), "-H", `authorization: Bearer ${h2tok}`, "-H", "x-forwarded-for: 198.18.0.77", `${s.url}/v1/lease`]);
    expect(JSON.parse(curl.stdout).ip).toBe("198.18.0.3");
    r = await api("/v1/lease", { method: "GET", token: manyToken, headers: { "x-forwarded-for": "not-an-ip" } });
    expect(r.status).toBe(400);
  });

  test("a client renewing in a loop is capped with 429; cron-rate renewals pass", async () => {
    const looper = tokenOf(await addClient(s.config, "looper", ["--allow", "198.18.0.0/24"]));
    const codes: number[] = [];
    for (let i = 0; i < 32; i++) codes.push((await lease("198.18.0.50", looper)).status);
    expect(codes.slice(0, 30)).toEqual(Array(30).fill(200));
    expect(codes.slice(30)).toEqual([429, 429]);
    // Another client is unaffected.
    expect((await renew(s.h1, "h1")).code).toBe(0);
    await api("/v1/lease", { method: "DELETE", token: looper });
    await waitFor("release of .50", () => !s.mapEntries().includes("198.18.0.50 OK"));
  });

  test("postmap failing, hanging or missing: lease kept, 503, last good map untouched, healthz degraded, recovery without restart", async () => {
    for (const fault of ["fail", "hang", "missing"] as const) {
      const before = readFileSync(s.mapPath, "utf8");
      if (fault === "missing") renameSync(wrapper(), `${wrapper()}.away`);
      else writeFileSync(flag(fault), "");
      const ip = fault === "fail" ? "198.18.0.60" : fault === "hang" ? "198.18.0.61" : "198.18.0.62";
      const r = await lease(ip, manyToken);
      expect(r.status).toBe(503);
      const err = await body(r);
      expect(err.error).toBe("map_update_failed");
      if (fault === "fail") expect(err.message).toContain("simulated failure");
      expect(readFileSync(s.mapPath, "utf8")).toBe(before);
      const health = await api("/healthz");
      expect(health.status).toBe(503);
      expect((await body(health)).status).toBe("degraded");
      const list = JSON.parse((await relayctl(["server", "list", "--json", "--config", s.config])).stdout);
      expect(list.clients.find((c: { name: string }) => c.name === "many").leases[0].ip).toBe(ip);
      expect(await s.relays(s.h1)).toBe(true);
      if (fault === "missing") renameSync(`${wrapper()}.away`, wrapper());
      else rmSync(flag(fault));
      await waitFor(`map with ${ip}`, () => s.mapEntries().includes(`${ip} OK`), 15_000);
      expect((await api("/healthz")).status).toBe(200);
      // A failed rebuild may still be retrying when the 503 goes out; once healed, no temp file is left.
      expect(readdirNames().filter((f) => f.includes(".tmp"))).toEqual([]);
      await api("/v1/lease", { method: "DELETE", token: manyToken });
    }
    await waitFor("map back to s.h1 only", () => s.mapEntries().length === 1);
    await mapIntact();
  });

  const readdirNames = (): string[] => readdirSync(join(s.tmp.path, "map"));

  test("a second server on the same state_dir refuses to start", async () => {
    const r = await relayctl(["server", "--config", s.config], 10_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("already running");
    await mapIntact();
  });

  test("a second server on another state_dir but the same listen address exits at once naming the port; the first keeps every connection", async () => {
    const dir = join(s.tmp.path, "second");
    mkdirSync(join(dir, "map"), { recursive: true });
    const config = join(dir, "server.toml");
    writeFileSync(
      config,
      readFileSync(s.config, "utf8")
        .replace(/^state_dir = .*$/m, `state_dir = ${JSON.stringify(join(dir, "state"))}`)
        .replace(/^map = .*$/m, `map = ${JSON.stringify(join(dir, "map", "clients"))}`),
    );
    const port = new URL(s.url).port;
    const second = Bun.spawn([BIN, "server", "--config", config], { stdout: "pipe", stderr: "pipe" });
    try {
      expect(await Promise.race([second.exited, Bun.sleep(5_000).then(() => "still running")])).toBe(2);
      const lines = (await new Response(second.stderr).text()).trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toStartWith("relayctl: ");
      expect(lines[0]).toContain(`port ${port}`);
    } finally {
      if (second.exitCode === null) process.kill(second.pid, "SIGKILL");
    }
    // A new connection each time; one reaching any other server would fail the check against the first's certificate.
    for (let i = 0; i < 24; i++) expect((await api("/healthz", { keepalive: false })).status).toBe(200);
    expect(readdirSync(join(dir, "map"))).toEqual([]);
    await mapIntact();
  });

  test("SIGKILL at any moment leaves a readable map and a state that restarts cleanly", async () => {
    for (let i = 0; i < 6; i++) {
      const pending = Array.from({ length: 12 }, (_, j) =>
        lease(`198.18.0.${100 + ((i * 12 + j) % 100)}`).catch(() => undefined),
      );
      await Bun.sleep(Math.floor(Math.random() * 150));
      await s.server!.kill9();
      s.server = undefined;
      await Promise.all(pending);
      // Whatever moment the kill hit, Postfix can read the map it has.
      for (const l of s.mapEntries()) expect(l).toMatch(/^198\.18\.0\.\d+ OK$/);
      expect(await s.relays(s.h1)).toBe(true);
      await s.start();
    }
    await releaseAll();
    await waitFor("map back to s.h1 only", () => s.mapEntries().length === 1);
    await mapIntact();
  }, 120_000);

  test("state_dir read-only: the server refuses to start with a clear error", async () => {
    await s.server!.stop();
    s.server = undefined;
    const ro = join(s.tmp.path, "state-ro");
    mkdirSync(ro);
    await run(["mount", "--bind", s.stateDir, ro]);
    try {
      await run(["mount", "-o", "remount,bind,ro", ro]);
      writeFileSync(s.cfg("server-ro"), readFileSync(s.config, "utf8").replace(`state_dir = ${JSON.stringify(s.stateDir)}`, `state_dir = ${JSON.stringify(ro)}`));
      const r = await relayctl(["server", "--config", s.cfg("server-ro")], 15_000);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toContain(ro);
    } finally {
      await run(["umount", ro]);
      await s.start();
    }
    await mapIntact();
  });

  test("disk full: 503 state_unavailable or success, never a 500, a corrupt database or a broken map", async () => {
    await run(["dd", "if=/dev/zero", `of=${join(s.stateDir, "filler")}`, "bs=1M", "count=64"]);
    const seen = new Set<string>();
    try {
      for (let i = 0; i < 120; i++) {
        const r = await lease(`198.18.0.${10 + (i % 80)}`);
        seen.add(r.status === 200 ? "200" : `${r.status} ${(await body(r)).error}`);
      }
    } finally {
      rmSync(join(s.stateDir, "filler"));
    }
    expect([...seen].filter((s) => s !== "200" && s !== "503 state_unavailable")).toEqual([]);
    const check = await run([process.execPath, "-e", `const {Database}=require("bun:sqlite");const d=new Database(${JSON.stringify(join(s.stateDir, "state.db"))},{readonly:true});console.log(d.query("PRAGMA integrity_check").get().integrity_check)`]);
    expect(check.stdout.trim()).toBe("ok");
    for (const l of s.mapEntries()) expect(l).toMatch(/^198\.18\.0\.\d+ OK$/);
    await releaseAll();
    await waitFor("map back to s.h1 only", () => s.mapEntries().length === 1);
    await mapIntact();
  }, 120_000);

  test("failed authentications are throttled per source and logged once; others are not slowed", async () => {
    writeFileSync(s.cfg("bad"), readFileSync(s.cfg("h2"), "utf8").replace(/token = "([0-9a-f]{16})\.[^"]+"/, 'token = "$1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"'), { mode: 0o600 });
    const codes: number[] = [];
    for (let i = 0; i < 11; i++) codes.push((await renew(s.h2, "bad")).code);
    expect(codes.slice(0, 10)).toEqual(Array(10).fill(3));
    expect(codes[10]).toBe(1);
    const t0 = performance.now();
    expect((await renew(s.h1, "h1")).code).toBe(0);
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(s.server!.stderr().match(/too many bad tokens from 198\.18\.0\.3/g)).toHaveLength(1);
    // One burst from one source is one audit row with a count, not ten rows; the count reaches the log within 5 s.
    type Ev = { event: string; source: string; count: number; detail: string };
    let refusals: Ev[] = [];
    await waitFor("the refusal count in the audit log", async () => {
      const log = JSON.parse((await relayctl(["server", "log", "--json", "--since", "10m", "--config", s.config])).stdout);
      refusals = log.events.filter((e: Ev) => e.event === "refuse" && e.source === "198.18.0.3");
      return refusals[0]?.count === 10;
    });
    expect(refusals.length).toBe(1);
    expect(refusals[0].detail).toContain("unauthorized");
    expect(refusals[0].count).toBe(10);
    const mine = JSON.parse((await relayctl(["server", "log", "--json", "--client", "h1", "--config", s.config])).stdout);
    expect(mine.events.every((e: { client: string }) => e.client === "h1")).toBe(true);
    expect(mine.events.some((e: { event: string }) => e.event === "grant")).toBe(true);
    await mapIntact();
  });
});
