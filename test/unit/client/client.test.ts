import { certificatePin } from "../../../src/lib/tls.ts";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { enroll, leaseStatus, readToken, releaseLease, renewLease, seenAddressProblem } from "../../../src/client/client.ts";
import { log } from "../../../src/lib/logging.ts";
import { loadClientConfig, loadServerConfig, renderClientConfig } from "../../../src/lib/config.ts";
import { ExitCode } from "../../../src/lib/errors.ts";
import { addClient, revokeClient } from "../../../src/server/admin.ts";
import { startServer, type RunningServer } from "../../../src/server/server.ts";
import { capture, fakePostmap, relayError, removeTempDirs, silenceLogger, tempDir, writeServerConfig, type FakePostmap } from "../helpers.ts";

let server: RunningServer;
let url: string;
let configPath: string;
let pm: FakePostmap;
let mapPath: string;

beforeAll(async () => {
  silenceLogger();
  const dir = tempDir("relayctl-client-");
  pm = fakePostmap(dir);
  configPath = writeServerConfig(dir, { postmap: pm.path });
  mapPath = join(dir, "postfix", "clients");
  const config = { ...loadServerConfig(configPath), listen: { host: "127.0.0.1", port: 0 } };
  server = await startServer({ config });
  url = `https://127.0.0.1:${server.port}`;
});

afterAll(async () => {
  await server?.stop();
  removeTempDirs();
});

/** Adds a client on the server and enrolls it into a fresh client.toml. */
async function enrolled(name: string, allow?: string[]): Promise<{ path: string; token: string; pin: string }> {
  const added = await addClient({ configPath, name, allow });
  const path = join(tempDir("relayctl-client-"), "etc", "client.toml");
  await enroll({ url, name, token: added.token, pin: added.pin, configPath: path });
  return { path, token: added.token, pin: added.pin };
}

describe("enroll", () => {
  test("checks server, pin and token, then writes a 0600 config that loads back", async () => {
    const added = await addClient({ configPath, name: "enrollee" });
    const path = join(tempDir("relayctl-client-"), "etc", "client.toml");
    const r = await enroll({ url: url + "/some/path", name: "enrollee", token: added.token, pin: added.pin.toUpperCase().replace("SHA256", "sha256"), configPath: path });
    expect(r.path).toBe(path);
    expect(r.status).toEqual({ client: "enrollee", ip: "127.0.0.1", ttl: 1200, leases: [] });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const saved = loadClientConfig(path);
    // The enrolled chain is kept so later runs need one handshake; it is the pinned certificate.
    expect(saved).toEqual({ path, server: url, name: "enrollee", token: added.token, pin: added.pin, serverCert: expect.stringContaining("-----BEGIN CERTIFICATE-----") });
    expect(certificatePin(saved.serverCert!)).toBe(added.pin);
    // Re-running the same line is harmless.
    await enroll({ url, name: "enrollee", token: added.token, pin: added.pin, configPath: path });
  });

  test("a wrong pin is refused (exit 3) before anything is written", async () => {
    const added = await addClient({ configPath, name: "wrongpin" });
    const path = join(tempDir("relayctl-client-"), "client.toml");
    const err = await relayError(() => enroll({ url, name: "wrongpin", token: added.token, pin: "sha256:" + "00".repeat(32), configPath: path }));
    expect(err.exitCode).toBe(ExitCode.REFUSED);
    expect(existsSync(path)).toBe(false);
  });

  test("a token of another client or an unknown token is refused (exit 3)", async () => {
    const a = await addClient({ configPath, name: "owner" });
    const path = join(tempDir("relayctl-client-"), "client.toml");
    const wrongName = await relayError(() => enroll({ url, name: "impostor", token: a.token, pin: a.pin, configPath: path }));
    expect(wrongName.exitCode).toBe(ExitCode.REFUSED);
    expect(wrongName.message).toContain("belongs to client owner");
    const unknown = await relayError(() => enroll({ url, name: "owner", token: "0123456789abcdef." + "A".repeat(43), pin: a.pin, configPath: path }));
    expect(unknown.exitCode).toBe(ExitCode.REFUSED);
    expect(existsSync(path)).toBe(false);
  });

  test("bad arguments are usage errors without network use", async () => {
    const path = join(tempDir("relayctl-client-"), "client.toml");
    const pin = "sha256:" + "00".repeat(32);
    expect((await relayError(() => enroll({ url: "http://127.0.0.1:1", name: "x", token: "t", configPath: path }))).exitCode).toBe(ExitCode.USAGE);
    expect((await relayError(() => enroll({ url, name: "Bad", token: "t", configPath: path }))).exitCode).toBe(ExitCode.USAGE);
    expect((await relayError(() => enroll({ url, name: "x", token: "has space", configPath: path }))).exitCode).toBe(ExitCode.USAGE);
    expect((await relayError(() => enroll({ url, name: "x", token: "t", pin: "md5:abc", configPath: path }))).exitCode).toBe(ExitCode.USAGE);
    expect(pin).toHaveLength(71);
  });

  test("replacing another enrollment needs --force", async () => {
    const first = await enrolled("first");
    const second = await addClient({ configPath, name: "second" });
    const err = await relayError(() => enroll({ url, name: "second", token: second.token, pin: second.pin, configPath: first.path }));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(loadClientConfig(first.path).name).toBe("first");
    await enroll({ url, name: "second", token: second.token, pin: second.pin, configPath: first.path, force: true });
    expect(loadClientConfig(first.path).name).toBe("second");
  });
});

describe("renew, status, release", () => {
  test("a loopback client with an allow list gets its lease into the map", async () => {
    const c = await enrolled("looper", ["127.0.0.1"]);
    const r = await renewLease({ configPath: c.path });
    expect(r.client).toBe("looper");
    expect(r.ip).toBe("127.0.0.1");
    expect(r.ttl).toBe(1200);
    expect(r.event).toBe("grant");
    expect(Math.abs(Date.parse(r.expires_at) - (Date.now() + 1200_000))).toBeLessThan(10_000);
    expect(readFileSync(mapPath, "utf8")).toContain("127.0.0.1 OK");
    expect((await renewLease({ configPath: c.path })).event).toBe("renew");
    const s = await leaseStatus({ configPath: c.path });
    expect(s.leases.map((l) => l.ip)).toEqual(["127.0.0.1"]);
    const rel = await releaseLease({ configPath: c.path });
    expect(rel).toEqual({ client: "looper", released: ["127.0.0.1"] });
    expect(readFileSync(mapPath, "utf8")).not.toContain("127.0.0.1 OK");
  });

  test("loopback without an allow list is refused with exit 3", async () => {
    const c = await enrolled("plain");
    const err = await relayError(() => renewLease({ configPath: c.path }));
    expect(err.exitCode).toBe(ExitCode.REFUSED);
    expect(err.message).toContain("loopback");
  });

  test("--ip names another address inside the allow list; a bad --ip is a usage error", async () => {
    const c = await enrolled("namer", ["192.0.2.0/24"]);
    const r = await renewLease({ configPath: c.path, ip: "192.0.2.44" });
    expect(r.ip).toBe("192.0.2.44");
    expect((await relayError(() => renewLease({ configPath: c.path, ip: "192.0.3.1" }))).exitCode).toBe(ExitCode.REFUSED);
    const bad = await relayError(() => renewLease({ configPath: c.path, ip: "010.1.1.1" }));
    expect(bad.exitCode).toBe(ExitCode.USAGE);
    await releaseLease({ configPath: c.path });
  });

  test("a revoked client is refused with exit 3 and a re-enroll hint", async () => {
    const c = await enrolled("doomed", ["127.0.0.1"]);
    await revokeClient({ configPath, name: "doomed" });
    const err = await relayError(() => renewLease({ configPath: c.path }));
    expect(err.exitCode).toBe(ExitCode.REFUSED);
    expect(err.hint).toContain("enroll again");
  });

  test("an unreachable server is exit 1 (worth retrying)", async () => {
    const path = join(tempDir("relayctl-client-"), "client.toml");
    writeFileSync(path, renderClientConfig({ server: "https://127.0.0.1:1", name: "x", token: "0123456789abcdef.x" }));
    const err = await relayError(() => leaseStatus({ configPath: path }));
    expect(err.exitCode).toBe(ExitCode.FAILED);
    expect(err.message).toBe("cannot reach https://127.0.0.1:1: connection refused");
    expect(err.hint).toContain("firewall");
  });
});

describe("enroll input and warnings", () => {
  test("the token comes from exactly one of --token, --token - (stdin) and --token-file", () => {
    const file = join(tempDir("relayctl-client-"), "token");
    writeFileSync(file, "abc.def\n");
    expect(readToken({ tokenFile: file })).toBe("abc.def");
    expect(readToken({ token: "-", stdin: () => "  from.stdin\n" })).toBe("from.stdin");
    // The token: line exactly as `server add` printed it works too.
    expect(readToken({ token: "-", stdin: () => "token: from.stdin\n" })).toBe("from.stdin");
    expect(readToken({ token: "plain" })).toBe("plain");
    for (const bad of [{}, { token: "x", tokenFile: file }, { tokenFile: join(file, "missing") }]) {
      expect(() => readToken(bad)).toThrow();
      try {
        readToken(bad);
      } catch (err) {
        expect((err as { exitCode: number }).exitCode).toBe(ExitCode.USAGE);
      }
    }
  });

  test("a bad token is reported under the flag it came from, --token-file naming the file", () => {
    const dir = tempDir("relayctl-client-");
    const cases: [Parameters<typeof readToken>[0], string][] = [
      [{ tokenFile: join(dir, "empty") }, `--token-file ${join(dir, "empty")}: is empty`],
      [{ tokenFile: join(dir, "two") }, `--token-file ${join(dir, "two")}: holds more than one word or line`],
      [{ token: "-", stdin: () => "" }, "--token - (stdin): is empty"],
      [{ token: "-", stdin: () => "tok en\n" }, "--token - (stdin): holds more than one word or line"],
      [{ token: "caf\u00e9" }, "--token: is not a token"],
    ];
    writeFileSync(join(dir, "empty"), "\n");
    writeFileSync(join(dir, "two"), "abc.def\nsecond line\n");
    for (const [opts, message] of cases) {
      let err: unknown;
      try {
        readToken(opts);
      } catch (e) {
        err = e;
      }
      expect({ message: (err as Error).message, exitCode: (err as { exitCode: number }).exitCode }).toEqual({ message, exitCode: ExitCode.USAGE });
    }
  });

  test("names what is wrong with a loopback or private address, and nothing for a public one", () => {
    expect(seenAddressProblem("127.0.0.1")).toContain("a loopback address: it refuses to lease that unless this client's allow list names it");
    expect(seenAddressProblem("::1")).toContain("loopback");
    expect(seenAddressProblem("192.168.1.20")).toContain("a private address");
    expect(seenAddressProblem("fd00::5")).toContain("a private address");
    expect(seenAddressProblem("198.51.100.7")).toBeNull();
    expect(seenAddressProblem("2001:db8::1")).toBeNull();
  });

  test("enroll warns before writing when the server sees a loopback address", async () => {
    const added = await addClient({ configPath, name: "seenlocal" });
    const path = join(tempDir("relayctl-client-"), "client.toml");
    log.level = 1;
    try {
      const r = await capture(() => enroll({ url, name: "seenlocal", token: added.token, pin: added.pin, configPath: path }));
      expect(r.error).toBeUndefined();
      expect(r.stderr).toStartWith("warn: the server sees this host as 127.0.0.1, a loopback address");
    } finally {
      silenceLogger();
    }
    expect(existsSync(path)).toBe(true);
  });
});
