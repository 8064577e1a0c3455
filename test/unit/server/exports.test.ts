// Export files (server.toml `export`): the live leases for OpenDKIM and rspamd, kept in step by the publisher.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadServerConfig, type ExportSpec, type ServerConfig } from "../../../src/lib/config.ts";
import { parseCidr, parseIp, type Ip } from "../../../src/lib/ip.ts";
import { openExports } from "../../../src/server/exports.ts";
import { LiveIndex } from "../../../src/server/live.ts";
import { MAP_HEADER } from "../../../src/server/lookups/map.ts";
import { withoutServer } from "../../../src/server/runtime/sweep.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";
import { newToken } from "../../../src/server/tokens.ts";
import { FakeClock, relayError, removeTempDirs, silenceLogger, tempDir, testService, type TestService } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const ip = (s: string): Ip => parseIp(s)!;
const lease = (client: string, family: number, addr: string, expires_at = 60_000) => ({ client, family, ip: addr, granted_at: 0, renewed_at: 0, expires_at, renewals: 0 });
/** The entries of an export file: every line that is not a comment. */
const entries = (path: string): string[] => readFileSync(path, "utf8").split("\n").filter((l) => l && !l.startsWith("#"));
const spec = (path: string, reload?: string[], fixed: string[] = []): ExportSpec => ({ format: "lines", path, reload, static: fixed.map((n) => parseCidr(n)!), where: "server.toml:1: export: entry 1" });

function loadWith(text: string): ServerConfig {
  const path = join(tempDir(), "server.toml");
  writeFileSync(path, text);
  return loadServerConfig(path);
}

describe("the export key", () => {
  test("inline tables and [[export]] sections both load; format defaults to lines", () => {
    const a = loadWith('export = [{ format = "lines", path = "/etc/opendkim/relayctl/hosts", reload = ["/usr/bin/systemctl", "reload", "opendkim"] }, { path = "/etc/rspamd/relayctl.map", static = ["127.0.0.1", "::1", "10.1.0.0/16"] }]\n');
    expect(a.exports.map(({ format, path, reload, static: s }) => ({ format, path, reload, static: s.map((n) => n.text) }))).toEqual([
      { format: "lines", path: "/etc/opendkim/relayctl/hosts", reload: ["/usr/bin/systemctl", "reload", "opendkim"], static: [] },
      { format: "lines", path: "/etc/rspamd/relayctl.map", reload: undefined, static: ["127.0.0.1/32", "::1/128", "10.1.0.0/16"] },
    ]);
    const b = loadWith('ttl = "20m"\n\n[[export]]\nformat = "lines"\npath = "/etc/rspamd/relayctl.map"\n');
    expect(b.exports.map((e) => e.path)).toEqual(["/etc/rspamd/relayctl.map"]);
    expect(loadWith("").exports).toEqual([]);
  });

  test("each mistake is named with file:line and the entry", async () => {
    const bad: [string, RegExp][] = [
      ['export = "/etc/x"', /server\.toml:2: export: must be a list of tables/],
      ['export = [{ format = "csv", path = "/etc/x" }]', /:2: export: entry 1: format "csv" is not one of lines/],
      ['export = [{ path = "relative/x" }]', /entry 1: path must be the absolute path of a file/],
      ['export = [{ path = "/etc/x", mode = "0644" }]', /entry 1: unknown key "mode"/],
      ['export = [{ path = "/etc/x", reload = "systemctl reload opendkim" }]', /entry 1: reload must be a list of strings, the first an absolute program path/],
      ['export = [{ path = "/etc/x", reload = ["systemctl", "reload"] }]', /entry 1: reload must be/],
      ['export = [{ path = "/etc/postfix/relayctl/clients" }]', /entry 1: path \/etc\/postfix\/relayctl\/clients is already used by map/],
      ['export = [{ path = "/etc/x" }, { path = "/etc/x" }]', /entry 2: path \/etc\/x is already used by export entry 1/],
      ['export = [{ path = "/etc/x", static = ["10.1.2.3/16"] }]', /entry 1: static: "10.1.2.3\/16" is not an address or CIDR network with zero host bits/],
      ['export = [{ path = "/etc/x", static = "127.0.0.1" }]', /entry 1: static must be a list of addresses/],
    ];
    for (const [line, message] of bad) expect((await relayError(() => loadWith(`ttl = "20m"\n${line}\n`))).message).toMatch(message);
    expect((await relayError(() => loadWith('ttl = "20m"\n\n[[export]]\npath = "x"\n'))).message).toMatch(/server\.toml:3: export: entry 1: path must be/);
  });
});

describe("openExports", () => {
  test("writes the live leases, addresses bare and prefixes as CIDR, under relayctl's header; an expired one leaves", async () => {
    const dir = tempDir();
    const clock = new FakeClock(0);
    const index = new LiveIndex();
    const config = { exports: [spec(join(dir, "dkim", "hosts"))], postmapTimeout: 10 } as unknown as ServerConfig;
    const exports = openExports(config, index, clock);
    index.put(lease("a", 4, "198.18.0.7", 10_000));
    index.put(lease("b", 6, "2001:db8:1:2::/64"));
    index.put(lease("c", 6, "2001:db8::9"));
    await exports.sync();
    const path = join(dir, "dkim", "hosts");
    expect(readFileSync(path, "utf8").split("\n")[0]).toBe(MAP_HEADER);
    expect(entries(path).sort()).toEqual(["198.18.0.7", "2001:db8:1:2::/64", "2001:db8::9"]);
    clock.advance(10_000);
    await exports.sync();
    expect(entries(path).sort()).toEqual(["2001:db8:1:2::/64", "2001:db8::9"]);
    expect(exports.status()).toMatchObject([{ path, format: "lines", entries: 2, rebuilds: 2, error: null }]);
  });

  test("static networks come first, under their own comment, whatever the leases", async () => {
    const path = join(tempDir(), "hosts");
    const index = new LiveIndex();
    const exports = openExports({ exports: [spec(path, undefined, ["127.0.0.1", "::1", "10.1.0.0/16"])], postmapTimeout: 10 } as unknown as ServerConfig, index, new FakeClock(0));
    await exports.sync();
    expect(entries(path)).toEqual(["127.0.0.1", "::1", "10.1.0.0/16"]);
    index.put(lease("a", 4, "198.18.0.7"));
    await exports.sync();
    expect(entries(path)).toEqual(["127.0.0.1", "::1", "10.1.0.0/16", "198.18.0.7"]);
    expect(readFileSync(path, "utf8")).toContain("# From server.toml (export static), whatever the leases:\n127.0.0.1\n");
  });

  test("a file relayctl did not write is refused, not overwritten (an operator's own InternalHosts)", async () => {
    const path = join(tempDir(), "TrustedHosts");
    writeFileSync(path, "127.0.0.1\n10.0.0.0/8\n");
    const err = await relayError(() => openExports({ exports: [spec(path)], postmapTimeout: 10 } as unknown as ServerConfig, new LiveIndex(), new FakeClock(0)));
    expect(err.message).toContain("was not written by relayctl");
    expect(readFileSync(path, "utf8")).toBe("127.0.0.1\n10.0.0.0/8\n");
  });

  test("the reload command runs after each rewrite; when it fails the export is degraded and check() retries until it works", async () => {
    const dir = tempDir();
    const script = join(dir, "reload.sh");
    const marker = join(dir, "fail");
    // Records each run; fails while the marker exists.
    writeFileSync(script, `#!/bin/sh\necho run >> ${join(dir, "runs")}\n[ ! -e ${marker} ] || { echo "opendkim not running" >&2; exit 1; }\n`);
    chmodSync(script, 0o755);
    writeFileSync(marker, "");
    const index = new LiveIndex();
    const clock = new FakeClock(0);
    const path = join(dir, "hosts");
    const exports = openExports({ exports: [spec(path, [script])], postmapTimeout: 10 } as unknown as ServerConfig, index, clock);
    index.put(lease("a", 4, "198.18.0.7"));
    await exports.sync(); // never rejects
    expect(exports.problems().join("\n")).toMatch(/export .*hosts: reload command .*reload\.sh failed: opendkim not running/);
    expect(await exports.check()).toBe(true);
    expect(exports.problems()).toHaveLength(1);
    rmSync(marker);
    expect(await exports.check()).toBe(true);
    expect(exports.problems()).toEqual([]);
    expect(entries(path)).toEqual(["198.18.0.7"]);
    expect(readFileSync(join(dir, "runs"), "utf8").trim().split("\n")).toHaveLength(3);
    // Nothing wrong: check() does nothing at all.
    expect(await exports.check()).toBe(false);
    expect(readFileSync(join(dir, "runs"), "utf8").trim().split("\n")).toHaveLength(3);
  });

  test("deleted or replaced by another program, check() writes it again", async () => {
    const dir = tempDir();
    const index = new LiveIndex();
    const path = join(dir, "hosts");
    const exports = openExports({ exports: [spec(path)], postmapTimeout: 10 } as unknown as ServerConfig, index, new FakeClock(0));
    index.put(lease("a", 4, "198.18.0.7"));
    await exports.sync();
    rmSync(path);
    expect(await exports.check()).toBe(true);
    expect(entries(path)).toEqual(["198.18.0.7"]);
    writeFileSync(path, `${MAP_HEADER}\n0.0.0.0/0\n`);
    expect(await exports.check()).toBe(true);
    expect(entries(path)).toEqual(["198.18.0.7"]);
    expect(exports.problems()).toEqual([]);
  });
});

describe("exports follow the publisher", () => {
  let t: TestService;
  let dir: string;
  afterEach(() => t.store.close());

  async function serviceWith(reload?: string[]): Promise<FakeClock> {
    dir = tempDir();
    const clock = new FakeClock();
    t = await testService(dir, clock, { exports: [spec(join(dir, "export", "hosts"), reload)] });
    const tok = newToken();
    t.store.insertClient({ name: "office", token_id: tok.tokenId, token_hash: tok.hash, ttl: 60, allow: NO_ALLOW, created_at: 0, ipv6_prefix: null });
    return clock;
  }
  const exported = (): string[] => entries(join(dir, "export", "hosts"));

  test("a grant, a new address, a release and an expiry each reach the file", async () => {
    const clock = await serviceWith();
    const c = t.store.getClient("office")!;
    await t.service.renew(c, ip("198.18.0.7"));
    await t.server.exports.close();
    expect(exported()).toEqual(["198.18.0.7"]);
    await t.service.renew(c, ip("198.18.0.8"));
    await t.server.exports.close();
    expect(exported()).toEqual(["198.18.0.8"]);
    await t.service.release(c, ip("198.18.0.8"));
    await t.server.exports.close();
    expect(exported()).toEqual([]);
    await t.service.renew(c, ip("198.18.0.9"));
    await t.server.exports.close();
    expect(exported()).toEqual(["198.18.0.9"]);
    // The expiry timer expires it at its time and publishes: the export follows.
    clock.advance(60_000);
    await t.server.publisher.expiry.fire();
    await t.server.exports.close();
    expect(exported()).toEqual([]);
  });

  test("a failing export blocks neither renewals nor the lookup; it is reported as degraded", async () => {
    await serviceWith(["/bin/false"]);
    const c = t.store.getClient("office")!;
    expect((await t.service.renew(c, ip("198.18.0.7"))).event).toBe("grant");
    await t.server.exports.close();
    // Postfix's map holds the lease; the export was written but its reader was not told.
    expect(readFileSync(t.mapPath, "utf8")).toContain("198.18.0.7 OK");
    expect(exported()).toEqual(["198.18.0.7"]);
    expect(t.server.exports.problems().join("\n")).toMatch(/reload command \/bin\/false failed/);
    expect((await t.service.renew(c, ip("198.18.0.7"))).event).toBe("renew");
  });

  test("sweep (no server running) writes the exports with the lookup", async () => {
    await serviceWith();
    const c = t.store.getClient("office")!;
    await t.service.renew(c, ip("198.18.0.7"));
    await t.server.exports.close();
    rmSync(join(dir, "export", "hosts"));
    const config = t.config;
    t.store.close();
    const r = await withoutServer(config, async () => undefined);
    expect(r).not.toBeNull();
    expect(existsSync(join(dir, "export", "hosts"))).toBe(true);
    expect(exported()).toEqual(["198.18.0.7"]);
    // afterEach closes the store again: a closed bun:sqlite database takes that quietly.
  });
});
