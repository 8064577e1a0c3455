import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import { eximLine, eximLookupType } from "../../../src/server/lookups/exim.ts";
import { LOOKUPS } from "../../../src/server/lookups/index.ts";
import { LineFileLookup, LineFileWriter, renderLines } from "../../../src/server/lookups/linefile.ts";
import { MAP_HEADER } from "../../../src/server/lookups/map.ts";
import { opensmtpdLookupType, SMTPD_PREAMBLE, smtpdHook } from "../../../src/server/lookups/opensmtpd.ts";
import { LiveIndex } from "../../../src/server/live.ts";
import { FakeClock, removeTempDirs, silenceLogger, tempDir } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const lease = (client: string, family: number, ip: string, expires_at = 60_000) => ({ client, family, ip, granted_at: 0, renewed_at: 0, expires_at, renewals: 0 });
const entries = (text: string) => text.split("\n").filter((l) => l && !l.startsWith("#"));

describe("line formats", () => {
  test("Exim: IPv6 keys quoted (an unquoted key ends at its first colon), IPv4 bare, prefixes kept", () => {
    expect(eximLine("198.51.100.7")).toBe("198.51.100.7");
    expect(eximLine("192.0.2.0/24")).toBe("192.0.2.0/24");
    expect(eximLine("2001:db8::1")).toBe('"2001:db8::1"');
    expect(eximLine("2001:db8:1:2::/64")).toBe('"2001:db8:1:2::/64"');
  });

  test("the header comes first, then the preamble, then one line per lease", () => {
    const text = renderLines(["192.0.2.1", "2001:db8::/64"], eximLine);
    expect(text.split("\n")[0]).toBe(MAP_HEADER);
    expect(entries(text)).toEqual(["192.0.2.1", '"2001:db8::/64"']);
    // OpenSMTPD's file is never without an entry (smtpd refuses an empty table in `match from src`).
    expect(entries(renderLines([], (t) => t, SMTPD_PREAMBLE))).toEqual(["0.0.0.0"]);
  });

  test("hook: the smtpd.conf lines name the configured file", () => {
    const dir = tempDir();
    const path = join(dir, "server.toml");
    writeFileSync(path, 'lookup = "exim"\nexim_hosts = "/etc/exim4/x/hosts"\nsmtpd_table = "/etc/smtpd/x/clients"\n');
    const config = loadServerConfig(path);
    expect(smtpdHook(config)).toBe('table relayctl file:/etc/smtpd/x/clients\nmatch from src <relayctl> for any action "relay"');
  });

  test("both rows hold every lease shape exactly and outlive the server (so sweep expires for them)", () => {
    for (const row of [LOOKUPS.exim, LOOKUPS.opensmtpd]) {
      expect(row.prefixes).toBe(true);
      expect(row.outlivesServer).toBe(true);
      for (const net of ["192.0.2.1", "2001:db8::1", "2001:db8:1:2::/64"]) expect(row.refuses(parseCidr(net)!)).toBeNull();
    }
    expect(LOOKUPS.exim).toBe(eximLookupType);
    expect(LOOKUPS.opensmtpd).toBe(opensmtpdLookupType);
  });
});

function fixture(reload?: () => Promise<void>) {
  const dir = tempDir();
  const path = join(dir, "hosts");
  const clock = new FakeClock(0);
  const index = new LiveIndex();
  const writer = new LineFileWriter({ path, line: eximLine, addresses: () => index.liveTexts(clock.now()), reload });
  return { dir, path, clock, index, writer, lookup: new LineFileLookup(eximLookupType, writer, index, clock) };
}

describe("LineFileWriter", () => {
  test("writes the live leases by rename (a new inode, no temp file left), and skips an unchanged set", async () => {
    const f = fixture();
    f.index.load([lease("a", 4, "198.51.100.7"), lease("b", 6, "2001:db8:1:2::/64")]);
    expect((await f.writer.sync()).changed).toBe(true);
    expect(entries(readFileSync(f.path, "utf8"))).toEqual(["198.51.100.7", '"2001:db8:1:2::/64"']);
    const ino = statSync(f.path).ino;
    expect((await f.writer.sync()).changed).toBe(false);
    f.index.put(lease("c", 4, "192.0.2.1"));
    await f.writer.sync();
    expect(statSync(f.path).ino).not.toBe(ino);
    expect(readdirSync(f.dir)).toEqual(["hosts"]);
    // Expired leases leave at the next sync.
    f.clock.advance(60_000);
    await f.writer.sync();
    expect(entries(readFileSync(f.path, "utf8"))).toEqual([]);
  });

  test("concurrent callers share rebuilds: a burst costs at most two, each caller sees its change", async () => {
    let reloads = 0;
    const f = fixture(async () => {
      reloads++;
      await Bun.sleep(20);
    });
    const all: Promise<unknown>[] = [];
    for (let i = 1; i <= 10; i++) {
      f.index.put(lease(`c${i}`, 4, `192.0.2.${i}`));
      all.push(f.writer.sync());
    }
    await Promise.all(all);
    expect(reloads).toBe(2);
    expect(entries(readFileSync(f.path, "utf8"))).toHaveLength(10);
  });

  test("a failing reload rejects, is reported with what still relays, and runs again at the next sync even for the same text", async () => {
    let fail = true;
    let reloads = 0;
    const f = fixture(async () => {
      reloads++;
      if (fail) throw new Error("smtpctl update table relayctl failed: command failed");
    });
    fail = false;
    f.index.load([lease("a", 4, "198.51.100.7")]);
    await f.lookup.publish();
    fail = true;
    f.index.remove("a", 4);
    await expect(f.lookup.publish()).rejects.toThrow("command failed");
    const problems = f.lookup.problems();
    expect(problems[0]).toContain("smtpctl update table relayctl failed");
    // The MTA still holds the released lease: said, not hidden.
    expect(problems[1]).toContain("1 entries without a live lease still relay");
    fail = false;
    await f.lookup.publish();
    expect(reloads).toBe(3);
    expect(f.lookup.problems()).toEqual([]);
    expect(f.lookup.status()).toMatchObject({ lookup: "exim", target: f.path, entries: 0, rebuilds: 2 });
  });

  test("check() writes a deleted or replaced file again", async () => {
    const f = fixture();
    f.index.load([lease("a", 4, "198.51.100.7")]);
    await f.lookup.publish();
    rmSync(f.path);
    await f.lookup.check();
    expect(entries(readFileSync(f.path, "utf8"))).toEqual(["198.51.100.7"]);
    writeFileSync(f.path, "0.0.0.0/0\n");
    await f.lookup.check();
    expect(entries(readFileSync(f.path, "utf8"))).toEqual(["198.51.100.7"]);
  });

  test("a write that fails (a directory planted at the path, which even root cannot rename over) rejects, is reported and retried", async () => {
    const f = fixture();
    f.index.load([lease("a", 4, "198.51.100.7")]);
    await f.lookup.publish();
    rmSync(f.path);
    mkdirSync(join(f.path, "x"), { recursive: true });
    f.index.put(lease("b", 4, "192.0.2.1"));
    await expect(f.lookup.publish()).rejects.toThrow();
    expect(f.lookup.problems()[0]).toContain(f.path);
    rmSync(f.path, { recursive: true });
    await f.lookup.publish();
    expect(entries(readFileSync(f.path, "utf8"))).toEqual(["192.0.2.1", "198.51.100.7"]);
    expect(f.lookup.problems()).toEqual([]);
  });
});

describe("opening", () => {
  test("a file at the path that relayctl did not write is refused, never overwritten", async () => {
    const dir = tempDir();
    const hosts = join(dir, "hosts");
    writeFileSync(hosts, "10.0.0.0/8\n");
    const cfg = join(dir, "server.toml");
    writeFileSync(cfg, `lookup = "exim"\nexim_hosts = "${hosts}"\nstate_dir = "${dir}"\n`);
    const config = loadServerConfig(cfg);
    await expect(eximLookupType.open({ config, index: new LiveIndex(), clock: new FakeClock(0) })).rejects.toThrow(/exim_hosts .* was not written by relayctl/);
    expect(readFileSync(hosts, "utf8")).toBe("10.0.0.0/8\n");
  });
});
