import { afterAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import {
  loadClientConfig,
  loadServerConfig,
  parseListen,
  renderClientConfig,
  validateHttpsUrl,
  validateName,
} from "../../../src/lib/config.ts";
import { DURATION_LIMITS } from "../../../src/lib/duration.ts";
import { ExitCode } from "../../../src/lib/errors.ts";
import { POLL_MS } from "../../../src/server/stores/postgres.ts";
import { relayError, removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

/** Writes text as a TOML file in a fresh temp dir and returns its path. */
function toml(text: string, name = "server.toml"): string {
  const path = join(tempDir(), name);
  writeFileSync(path, text);
  return path;
}

describe("loadServerConfig: lookups for Exim and OpenSMTPD", () => {
  test('lookup = "exim" and "opensmtpd" load with their file defaults and take IPv6 prefix leases', () => {
    const exim = loadServerConfig(toml('lookup = "exim"\nipv6_prefix = 64\n'));
    expect(exim).toMatchObject({ lookup: "exim", eximHosts: "/etc/exim4/relayctl/hosts", ipv6Prefix: 64 });
    const smtpd = loadServerConfig(toml('lookup = "opensmtpd"\nipv6_prefix = 64\nsmtpctl = "/usr/sbin/smtpctl"\n'));
    expect(smtpd).toMatchObject({ lookup: "opensmtpd", smtpdTable: "/etc/smtpd/relayctl/clients", smtpctl: "/usr/sbin/smtpctl" });
  });

  test("an unknown lookup or a relative file path is refused at file:line", async () => {
    expect((await relayError(() => loadServerConfig(toml('lookup = "sendmail"\n')))).message).toMatch(/server\.toml:1: lookup: "sendmail" is not one of map, policy, exim, opensmtpd/);
    expect((await relayError(() => loadServerConfig(toml('exim_hosts = "hosts"\n')))).message).toMatch(/exim_hosts: must be an absolute path/);
    expect((await relayError(() => loadServerConfig(toml('smtpd_table = "t"\n')))).message).toMatch(/smtpd_table: must be an absolute path/);
  });
});

describe("loadServerConfig", () => {
  test("an empty file gives the built-in defaults", () => {
    const path = toml("");
    const c = loadServerConfig(path);
    expect(c).toMatchObject({
      path,
      listen: { host: "::", port: 8443 },
      publicUrl: `https://${hostname()}:8443`.toLowerCase(),
      stateDir: "/var/lib/relayctl",
      map: "/etc/postfix/relayctl/clients",
      ttl: 1200,
      trustedProxies: [],
    });
    expect(c.tlsCert).toBeUndefined();
    expect(c.tlsKey).toBeUndefined();
    expect(c.mapType).toBeUndefined();
    expect(c.postmap).toBeUndefined();
  });

  test("a missing explicit file is a usage error; a missing default is not consulted here", async () => {
    const err = await relayError(() => loadServerConfig("/nonexistent/relayctl/server.toml"));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toContain("/nonexistent/relayctl/server.toml");
  });

  test("every key is read", () => {
    const c = loadServerConfig(
      toml(`listen = "0.0.0.0:9443"
public_url = "https://mail.example.org:9443/ignored/path"
state_dir = "/srv/relayctl"
tls_cert = "/etc/ssl/relay.pem"
tls_key = "/etc/ssl/relay.key"
map = "/etc/postfix/relay_clients"
map_type = "lmdb"
ttl = "1h"
postmap = "/opt/postfix/sbin/postmap"
trusted_proxies = ["127.0.0.1", "2001:db8::/32"]
`),
    );
    expect(c.listen).toEqual({ host: "0.0.0.0", port: 9443 });
    expect(c.publicUrl).toBe("https://mail.example.org:9443");
    expect(c.stateDir).toBe("/srv/relayctl");
    expect(c.tlsCert).toBe("/etc/ssl/relay.pem");
    expect(c.tlsKey).toBe("/etc/ssl/relay.key");
    expect(c.map).toBe("/etc/postfix/relay_clients");
    expect(c.mapType).toBe("lmdb");
    expect(c.ttl).toBe(3600);
    expect(c.postmap).toBe("/opt/postfix/sbin/postmap");
    expect(c.trustedProxies.map((n) => n.text)).toEqual(["127.0.0.1/32", "2001:db8::/32"]);
  });

  test("public_url defaults to this host and the listen port", () => {
    expect(loadServerConfig(toml(`listen = ":9000"`)).publicUrl).toBe(`https://${hostname()}:9000`.toLowerCase());
  });

  test("ttl accepts a TOML integer as seconds", () => {
    expect(loadServerConfig(toml("ttl = 600")).ttl).toBe(600);
    expect(loadServerConfig(toml('ttl = "90s"')).ttl).toBe(90);
    expect(loadServerConfig(toml('ttl = "30s"')).ttl).toBe(30);
  });

  test("an unknown key names file, key and line", async () => {
    const path = toml(`listen = "[::]:8443"\n\n# comment\nttl_seconds = 60\n`);
    const err = await relayError(() => loadServerConfig(path));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toBe(`${path}:4: ttl_seconds: unknown key "ttl_seconds"`);
    expect(err.hint).toContain("known keys: listen");
  });

  test("a table is an unknown key too", async () => {
    const path = toml(`ttl = "20m"\n[server]\nlisten = ":1"\n`);
    const err = await relayError(() => loadServerConfig(path));
    expect(err.message).toContain(`unknown key "server"`);
    expect(err.message).toStartWith(path);
  });

  // Bun's parser names no position: the line is found by parsing the file line by line.
  const SYNTAX: Array<[string, string, string, string]> = [
    ["server.toml", "# relayctl\nttl = \"20m\"\nlisten = [::]:8443\n", ":3: listen: invalid TOML: Expected a value but found ':'", 'quote the value: listen = "[::]:8443"'],
    ["server.toml", 'map = "/etc/x"\nttl = 20m\n', ":2: ttl: invalid TOML: Unexpected character after a value: 'm'", 'quote the value: ttl = "20m"'],
    ["server.toml", 'state_dir = "/var/lib/relayctl\nttl = "1h"\n', ":1: state_dir: invalid TOML: Unterminated string; newlines must be escaped in basic strings", 'close the string with a " on the same line'],
    ["server.toml", 'ttl = "1h"\nmetrics_allow = [\n  "127.0.0.1",\n  "::1"\n  "192.0.2.1",\n]\n', ":5: invalid TOML: Expected ',' or ']' in an array but found '\"'", 'write a list as ["a", "b"], items separated by commas'],
    ["server.toml", 'ttl = "1h"\nlisten =\nmap = "/m"\n', ":2: listen: invalid TOML: Missing value after '='; values must be on the same line", "give the value on the same line as the key, or remove the line"],
    ["server.toml", 'ttl = "1h"\nttl = "2h"\n', ":2: ttl: invalid TOML: Cannot redefine key 'ttl'", "set each key once: remove the repeated line"],
    ["client.toml", 'server = "https://mail.example.org:8443"\nname = nas\n', ':2: name: invalid TOML: Strings must be quoted: "nas"', 'quote the value: name = "nas"'],
  ];
  test.each(SYNTAX)("invalid TOML in %s (%j) is exit 2 naming file:line: key, with the fix", async (name, text, where, hint) => {
    const path = toml(text, name);
    const err = await relayError(() => (name === "client.toml" ? loadClientConfig(path) : loadServerConfig(path)));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toBe(`${path}${where}`);
    expect(err.hint).toBe(hint);
  });

  const WRONG: Array<[string, string, string]> = [
    ["listen = 8443", "listen", "must be a non-empty string"],
    ['listen = ""', "listen", "must be a non-empty string"],
    ["state_dir = true", "state_dir", "must be a non-empty string"],
    ['map = ["/a"]', "map", "must be a non-empty string"],
    ["ttl = true", "ttl", "duration"],
    ["ttl = 1.5", "ttl", "not a positive whole number"],
    ["ttl = 0", "ttl", "not a positive whole number"],
    ['ttl = "-1m"', "ttl", "is not a duration"],
    ['ttl = "5s"', "ttl", "5s is below the minimum of 10s"],
    ['ttl = "401d"', "ttl", "401d is above the maximum of 400d"],
    ["ttl = 34560001", "ttl", "34560001s is above the maximum of 400d"],
    ['postmap_timeout = "25d"', "postmap_timeout", "25d is above the maximum of 5m"],
    ['audit_retention = "3651d"', "audit_retention", "3651d is above the maximum of 3650d"],
    ['stale_after = "5s"', "stale_after", "5s is below the minimum of 6s"],
    ['stale_after = "2h"', "stale_after", "2h is above the maximum of 1h"],
    ['trusted_proxies = "127.0.0.1"', "trusted_proxies", "must be a list of strings"],
    ["trusted_proxies = [1, 2]", "trusted_proxies", "must be a list of strings"],
    ['trusted_proxies = ["10.0.0.1/8"]', "trusted_proxies", "is not an address or CIDR"],
    ['map_type = "dbm"', "map_type", "is not supported"],
    ['map = "relative/clients"', "map", "must be an absolute path"],
    ['state_dir = "var/lib/relayctl"', "state_dir", "must be an absolute path"],
    ['state_dir = "./state"', "state_dir", "must be an absolute path"],
    ['public_url = "http://mail.example.org:8443"', "public_url", "must be an https:// URL"],
    ['public_url = "mail.example.org"', "public_url", "is not a URL"],
  ];
  for (const [line, key, words] of WRONG) {
    test(`${line} -> error on ${key}`, async () => {
      const path = toml(`# first line\n${line}\n`);
      const err = await relayError(() => loadServerConfig(path));
      expect(err.exitCode).toBe(ExitCode.USAGE);
      expect(err.message).toStartWith(`${path}:2: ${key}: `);
      expect(err.message).toContain(words);
    });
  }

  test("tls_cert without tls_key (and the reverse) is refused, pointing at the line that is set", async () => {
    const a = toml(`tls_cert = "/etc/ssl/c.pem"\n`);
    const errA = await relayError(() => loadServerConfig(a));
    expect(errA.exitCode).toBe(ExitCode.USAGE);
    expect(errA.message).toBe(`${a}:1: tls_cert: tls_cert and tls_key must be set together`);
    const b = toml(`\ntls_key = "/etc/ssl/k.pem"\n`);
    const errB = await relayError(() => loadServerConfig(b));
    expect(errB.message).toBe(`${b}:2: tls_key: tls_cert and tls_key must be set together`);
  });

  test("bad listen values name the line", async () => {
    for (const bad of ['"8443"', '"[::]:0"', '"[::]:65536"', '"0.0.0.0:"', '"[::1]"', '"::1:8443"', '"[fe80::1%eth0]:8443"', '"[::g]:8443"', '"host:123456"']) {
      const path = toml(`\n\nlisten = ${bad}\n`);
      const err = await relayError(() => loadServerConfig(path));
      expect(err.exitCode).toBe(ExitCode.USAGE);
      expect(err.message).toStartWith(`${path}:3: listen: `);
    }
  });
});

describe("parseListen", () => {
  test.each([
    ["[::]:8443", "::", 8443],
    ["0.0.0.0:8443", "0.0.0.0", 8443],
    [":8443", "::", 8443],
    ["127.0.0.1:1", "127.0.0.1", 1],
    ["[::1]:65535", "::1", 65535],
    ["[2001:db8::1]:443", "2001:db8::1", 443],
    ["mail.example.org:8443", "mail.example.org", 8443],
  ])("%s", (input, host, port) => {
    expect(parseListen(input as string)).toEqual({ host: host as string, port: port as number });
  });

  test.each(["", ":", ":0", ":65536", ":99999", "[::]", "[::]:", "[::]:-1", "::8443", "[::]8443", "[::1:8443", "[]:8443", "[::]:84 43", " :8443", ":8443 "])("rejects %p", (bad) => {
    expect(() => parseListen(bad as string)).toThrow(/is not HOST:PORT|invalid IPv6/);
  });
});

describe("validateName / validateHttpsUrl", () => {
  test("names", () => {
    for (const ok of ["a", "0", "host-1", "office.router_2", "a".repeat(63)]) expect(validateName(ok)).toBe(ok);
    for (const bad of ["", "-a", ".a", "_a", "A", "Host", "a b", "a/b", "a".repeat(64), "é", "a\n", "--name"]) {
      expect(() => validateName(bad)).toThrow(/is not a valid client name/);
    }
    expect(() => validateName(undefined)).toThrow(/is not a valid client name/);
  });

  test("https URLs are reduced to their origin", () => {
    expect(validateHttpsUrl("https://Mail.Example.org:8443/x?y", "u")).toBe("https://mail.example.org:8443");
    expect(validateHttpsUrl("https://[2001:db8::1]:8443", "u")).toBe("https://[2001:db8::1]:8443");
    expect(() => validateHttpsUrl("http://mail.example.org", "u")).toThrow(/https/);
    expect(() => validateHttpsUrl("mail.example.org:8443", "u")).toThrow();
    expect(() => validateHttpsUrl("", "u")).toThrow(/not a URL/);
  });
});

describe("client config", () => {
  const PIN = "sha256:" + "ab".repeat(32);

  test("renderClientConfig round-trips through loadClientConfig", () => {
    const c = { server: "https://mail.example.org:8443", name: "office", token: "0123456789abcdef.SECRET_secret-0123456789abcdefghijklmnopqrstu", pin: PIN };
    const path = toml(renderClientConfig(c), "client.toml");
    expect(loadClientConfig(path)).toEqual({ path, ...c });
  });

  test("tokens with TOML- and JSON-special characters survive the round trip", () => {
    for (const token of ['a"b', "back\\slash", "#not-a-comment", "single'quote", "$dollar{}[]=,", "tab\there", "\\u0041", "!~`|<>?*&^%@"]) {
      const path = toml(renderClientConfig({ server: "https://relay.example.org", name: "n1", token }), "client.toml");
      const c = loadClientConfig(path);
      expect(c.token).toBe(token);
      expect(c.pin).toBeUndefined();
    }
  });

  test("pin is omitted when not given", () => {
    const text = renderClientConfig({ server: "https://relay.example.org", name: "n1", token: "t" });
    expect(text).not.toContain("pin");
    expect(text).toContain('server = "https://relay.example.org"\n');
  });

  test("a missing file is a usage error with an enroll hint", async () => {
    const err = await relayError(() => loadClientConfig(join(tempDir(), "client.toml")));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toContain("no client config at");
    expect(err.hint).toContain("enroll");
  });

  for (const key of ["server", "name", "token"]) {
    test(`missing ${key} is named`, async () => {
      const all: Record<string, string> = { server: '"https://relay.example.org"', name: '"n1"', token: '"t"' };
      delete all[key];
      const path = toml(Object.entries(all).map(([k, v]) => `${k} = ${v}`).join("\n") + "\n", "client.toml");
      const err = await relayError(() => loadClientConfig(path));
      expect(err.exitCode).toBe(ExitCode.USAGE);
      expect(err.message).toBe(`${path}: missing key "${key}"`);
    });
  }

  test("unknown keys, bad names and non-https servers are refused with the line", async () => {
    const base = 'server = "https://relay.example.org"\nname = "n1"\ntoken = "t"\n';
    const unknown = toml(base + 'ttl = "20m"\n', "client.toml");
    expect((await relayError(() => loadClientConfig(unknown))).message).toBe(`${unknown}:4: ttl: unknown key "ttl"`);
    const badName = toml(base.replace('"n1"', '"Bad Name"'), "client.toml");
    expect((await relayError(() => loadClientConfig(badName))).message).toStartWith(`${badName}:2: name: `);
    const http = toml(base.replace("https://", "http://"), "client.toml");
    expect((await relayError(() => loadClientConfig(http))).message).toStartWith(`${http}:1: server: `);
    const numeric = toml(base.replace('token = "t"', "token = 12"), "client.toml");
    expect((await relayError(() => loadClientConfig(numeric))).message).toContain("token: must be a non-empty string");
  });
});

describe("loadServerConfig: stale_after", () => {
  test("defaults to 30 s and takes a duration", () => {
    expect(loadServerConfig(toml("")).staleAfter).toBe(30);
    expect(loadServerConfig(toml('stale_after = "6s"\n')).staleAfter).toBe(6);
    expect(loadServerConfig(toml('stale_after = "2m"\n')).staleAfter).toBe(120);
  });

  test("its floor lies above the interval a healthy host refreshes at, so it is never stale between two refreshes", () => {
    expect(DURATION_LIMITS.stale_after.min * 1000).toBeGreaterThan(5 * POLL_MS);
  });
});
