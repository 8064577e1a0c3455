/**
 * The one promise, tried as an attacker and a careless operator would:
 * Postfix relays for exactly the live leases, whatever happened to the map,
 * the server or the files around it. Every verdict is a real SMTP
 * conversation (swaks; XCLIENT for IPv6 addresses).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chownSync, existsSync, lstatSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { postmap, requireE2E, run } from "./harness.ts";
import { addClient, onHost, relayctl, stage, type Stage } from "./relayctl.ts";

const enabled = requireE2E();

/** Polls until ok() holds, at most ms. */
async function waitFor(what: string, ok: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(100);
  }
}

describe.if(enabled)("IPv6 keys under check_client_access", () => {
  let s: Stage;
  beforeAll(async () => {
    s = await stage({
      prefix: "rc9a",
      hook: "check_client_access",
      ready: async (st) => {
        await st.enroll(st.h1, "v6", ["--allow", "2001:db8::/32"]);
      },
    });
  }, 90_000);
  afterAll(async () => s?.cleanup());

  const renew = (ip: string) => onHost(s.h1, ["client", "--config", s.cfg("v6"), "--ip", ip]);

  test("a key check_client_access would widen is refused with the fix; nothing reaches the map", async () => {
    const r = await renew("2001:db8:7::1");
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('lookup = "policy"');
    expect(s.mapEntries().some((l) => l.startsWith("2001:db8:7::1"))).toBe(false);
    for (const probe of ["2001:db8:7::1", "2001:db8:7::1:5", "2001:db8:7::1:abcd:5", "2001:db8:7::1:0:0:5"]) expect(await s.relaysFor(probe)).toBe(false);
  }, 60_000);

  test("a full eight-group address relays for itself only: no neighbour, no other /64", async () => {
    const leased = "2001:db8:7:1:2:3:4:5";
    expect((await renew(leased)).code).toBe(0);
    expect(s.mapEntries()).toContain(`${leased} OK`);
    expect(await s.relaysFor(leased)).toBe(true);
    for (const other of ["2001:db8:7:1:2:3:4:6", "2001:db8:7:1:2:3:4:50", "2001:db8:7:2:2:3:4:5", "2001:db8:7:1::5"]) {
      expect({ other, relays: await s.relaysFor(other) }).toEqual({ other, relays: false });
    }
  }, 60_000);

  test("a prefix lease is refused under the map, at server add and at config load", async () => {
    const add = await relayctl(["server", "add", "lan", "--ipv6-prefix", "64", "--config", s.config]);
    expect(add.code).toBe(2);
    expect(add.stderr).toContain("policy");
    const bad = join(s.tmp.path, "prefix-map.toml");
    writeFileSync(bad, readFileSync(s.config, "utf8") + "ipv6_prefix = 64\n");
    const list = await relayctl(["server", "list", "--config", bad]);
    expect(list.code).toBe(2);
    expect(list.stderr).toMatch(/prefix-map\.toml:\d+: ipv6_prefix/);
  });
});

describe.if(enabled)("the map equals the live leases, whatever happened", () => {
  let s: Stage;
  beforeAll(async () => {
    s = await stage({
      prefix: "rc9b",
      ready: async (st) => {
        await st.enroll(st.h1, "h1");
        expect((await onHost(st.h1, ["client", "--config", st.cfg("h1")])).code).toBe(0);
        await addClient(st.config, "spare");
      },
    });
  }, 90_000);
  afterAll(async () => s?.cleanup());

  const db = (): string => `${s.mapPath}.db`;
  const stopServer = async (): Promise<void> => {
    expect(await s.server!.stop()).toBe(0);
    s.server = undefined;
  };
  /** A database that holds h1 and also h2, renamed into place under an unchanged source: a crash between the two renames. */
  const plantExtra = async (): Promise<void> => {
    const scratch = join(s.tmp.path, "planted");
    writeFileSync(scratch, readFileSync(s.mapPath, "utf8") + `${s.h2.ip} OK\n`);
    await postmap("hash", scratch);
    renameSync(`${scratch}.db`, db());
    expect(s.mapEntries()).not.toContain(`${s.h2.ip} OK`);
    expect(await s.relays(s.h2)).toBe(true);
  };
  const status = async () => JSON.parse((await relayctl(["server", "status", "--json", "--config", s.config])).stdout);

  test("a database with an extra address (crash between renames) is rebuilt at start", async () => {
    await stopServer();
    await plantExtra();
    await s.start();
    expect(await s.relays(s.h2)).toBe(false);
    expect(await s.relays(s.h1)).toBe(true);
  }, 60_000);

  test("... and by an admin command or server sweep while no server runs", async () => {
    await stopServer();
    await plantExtra();
    expect((await relayctl(["server", "revoke", "spare", "--config", s.config])).code).toBe(0);
    expect(await s.relays(s.h2)).toBe(false);
    await plantExtra();
    const sw = await relayctl(["server", "sweep", "--config", s.config]);
    expect(sw.code).toBe(0);
    expect(sw.stdout + sw.stderr).toBe("");
    expect(await s.relays(s.h2)).toBe(false);
    expect(await s.relays(s.h1)).toBe(true);
    await s.start();
  }, 60_000);

  test("server stopped: an expired lease is frozen in the map, status and doctor say so, sweep removes it", async () => {
    await s.enroll(s.h2, "brief", ["--ttl", "10s"]);
    expect((await onHost(s.h2, ["client", "--config", s.cfg("brief")])).code).toBe(0);
    expect(await s.relays(s.h2)).toBe(true);
    await stopServer();
    expect((await status()).map.frozen).toEqual({ entries: 0, since: null });
    await Bun.sleep(10_500);
    // Nobody rebuilt the map: it still relays, and everything says so.
    expect(await s.relays(s.h2)).toBe(true);
    const frozen = await status();
    expect(frozen.map.frozen.entries).toBe(1);
    expect(Date.parse(frozen.map.frozen.since)).toBeLessThanOrEqual(Date.now());
    const st = await relayctl(["server", "status", "--config", s.config]);
    expect(st.code).not.toBe(0);
    expect(st.stdout).toContain("FROZEN: 1 entries");
    const doc = JSON.parse((await relayctl(["doctor", "--json", "--config", s.config, "--postfix-dir", s.postfix.configDir])).stdout);
    const check = doc.checks.find((c: { id: string }) => c.id === "map.frozen");
    expect(check.status).toBe("fail");
    expect(check.hint).toContain("relayctl server sweep");
    expect((await relayctl(["server", "sweep", "--config", s.config])).code).toBe(0);
    expect(await s.relays(s.h2)).toBe(false);
    expect(await s.relays(s.h1)).toBe(true);
    expect((await status()).map.frozen).toEqual({ entries: 0, since: null });
    await s.start();
    // With a server running, sweep leaves everything to it.
    const idle = await relayctl(["server", "sweep", "--verbose", "--config", s.config]);
    expect(idle.code).toBe(0);
    expect(idle.stdout).toContain("server running");
  }, 60_000);

  test("a map database deleted or replaced under the running server is rebuilt within 5 s, no Postfix reload", async () => {
    const t0 = Date.now();
    unlinkSync(db());
    await waitFor("the map database to come back", () => existsSync(db()), 8_000);
    expect(Date.now() - t0).toBeLessThan(5_500);
    await waitFor("h1 to relay again", () => s.relays(s.h1), 5_000);
    expect(await s.relays(s.h2)).toBe(false);
    // Replaced by a database that also admits h2: the server puts its own back.
    const scratch = join(s.tmp.path, "replaced");
    writeFileSync(scratch, `${s.h1.ip} OK\n${s.h2.ip} OK\n`);
    await postmap("hash", scratch);
    renameSync(`${scratch}.db`, db());
    await waitFor("h2 to be denied again", async () => !(await s.relays(s.h2)), 8_000);
    expect(s.server!.stderr()).toContain("no Postfix reload needed");
    const health = await (await fetch(`${s.url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit)).json();
    expect(health).toEqual({ status: "ok" });
  }, 60_000);

  test("a lease row tampered with in the database never reaches the map", async () => {
    const evil = "198.18.0.3 OK\n0.0.0.0/0";
    const sql = `UPDATE leases SET ip = '${evil.replace(/'/g, "''")}' WHERE client = 'brief' OR client = 'h1'`;
    await stopServer();
    const r = await run([process.execPath, "-e", `const {Database}=require("bun:sqlite");const d=new Database(${JSON.stringify(join(s.stateDir, "state.db"))});d.run(${JSON.stringify(sql)});d.run("UPDATE leases SET expires_at = ${Date.now() + 600_000}")`]);
    expect(r.code).toBe(0);
    await s.start();
    expect(s.mapEntries()).toEqual([]);
    expect(await s.relays(s.h2)).toBe(false);
    expect(s.server!.stderr()).toContain("is not a valid address or network");
    // h1 renews and is back, its lease written fresh.
    expect((await onHost(s.h1, ["client", "--config", s.cfg("h1")])).code).toBe(0);
    expect(s.mapEntries()).toEqual([`${s.h1.ip} OK`]);
  }, 60_000);

  test("links planted in state_dir or the map directory are never followed by root", async () => {
    await stopServer();
    const victim = join(s.tmp.path, "victim");
    writeFileSync(victim, "root's file\n", { mode: 0o600 });
    const lock = join(s.stateDir, "server.lock");
    rmSync(lock, { force: true });
    symlinkSync(victim, lock);
    const refused = await relayctl(["server", "revoke", "spare2", "--config", s.config]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("not a plain file");
    expect(statSync(victim).uid).toBe(0);
    expect(readFileSync(victim, "utf8")).toBe("root's file\n");
    unlinkSync(lock);

    // The old temp names in the map directory are not used, let alone followed.
    for (const name of ["clients.tmp", "clients.tmp.db"]) symlinkSync(victim, join(s.tmp.path, "map", name));
    // Files root writes in the map directory go to the directory's owner.
    chownSync(join(s.tmp.path, "map"), 65534, 65534);
    await addClient(s.config, "spare2");
    expect((await relayctl(["server", "revoke", "spare2", "--config", s.config])).code).toBe(0);
    expect(readFileSync(victim, "utf8")).toBe("root's file\n");
    expect(lstatSync(s.mapPath).uid).toBe(65534);
    expect(lstatSync(db()).uid).toBe(65534);
    chownSync(join(s.tmp.path, "map"), 0, 0);
    await s.start();
    expect(await s.relays(s.h1)).toBe(true);
  }, 60_000);

  test("a map path that relayctl did not write is refused at start and left untouched", async () => {
    const foreign = join(s.tmp.path, "map", "access");
    writeFileSync(foreign, "10.0.0.0/8 OK\n");
    const cfg = join(s.tmp.path, "foreign.toml");
    writeFileSync(cfg, readFileSync(s.config, "utf8").replace(/^map = .*$/m, `map = ${JSON.stringify(foreign)}`).replace(/^state_dir = .*$/m, `state_dir = ${JSON.stringify(join(s.tmp.path, "state2"))}`).replace(/^listen = "198\.18\.0\.1:(\d+)"$/m, 'listen = "198.18.0.1:1"'));
    const r = await run([join(import.meta.dir, "../../dist/relayctl"), "server", "--config", cfg], { timeoutMs: 10_000 });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("was not written by relayctl");
    expect(readFileSync(foreign, "utf8")).toBe("10.0.0.0/8 OK\n");
  });
});
