import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, forStream, plainContext } from "../../src/cli.ts";
import { DEFAULT_SERVER_CONFIG, renderClientConfig } from "../../src/lib/config.ts";
import { log } from "../../src/lib/logging.ts";
import { capture, fakePostmap, removeTempDirs, tempDir, writeServerConfig } from "./helpers.ts";

afterAll(removeTempDirs);
afterEach(() => {
  log.level = -999;
});

async function run(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await capture(() => cli(argv));
  if (r.error) throw r.error;
  return { code: r.value!, stdout: r.stdout, stderr: r.stderr };
}

/** A client config pointing at a closed loopback port: any network use would fail with exit 1. */
function clientConfig(): string {
  const path = join(tempDir("relayctl-cli-"), "client.toml");
  writeFileSync(path, renderClientConfig({ server: "https://127.0.0.1:1", name: "office", token: "0123456789abcdef.x" }));
  return path;
}

describe("cli", () => {
  test("--version prints one version line and exits 0", async () => {
    for (const flag of ["--version", "-v"]) {
      const r = await run(flag);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^relayctl \S+ \(commit \S+, \S+\)\n$/);
      expect(r.stderr).toBe("");
    }
  });

  test("no arguments prints usage and exits 2; --help exits 0", async () => {
    const none = await run();
    expect(none.code).toBe(2);
    expect(none.stdout).toContain("relayctl");
    const help = await run("--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("server");
    expect(help.stdout).toContain("client");
    const sub = await run("client", "--help");
    expect(sub.code).toBe(0);
    expect(sub.stdout).toContain("--release");
  });

  test("--help names the whole command and carries no escape codes off a terminal or with NO_COLOR", async () => {
    const r = await run("client", "enroll", "--help");
    expect(r.stdout).toContain("USAGE relayctl client enroll [OPTIONS] <URL>");
    expect(r.stdout).not.toMatch(/\x1b|[ \t]$/m);
    const tty = { isTTY: true };
    const saved = process.env.NO_COLOR;
    try {
      delete process.env.NO_COLOR;
      expect(forStream("\x1b[36mx\x1b[39m", tty)).toBe("\x1b[36mx\x1b[39m");
      expect(forStream("\x1b[36mx\x1b[39m", { isTTY: false })).toBe("x");
      process.env.NO_COLOR = "yes";
      expect(forStream("\x1b[36mx\x1b[39m", tty)).toBe("x");
    } finally {
      if (saved === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = saved;
    }
  });

  test("citty's own errors are one plain line", async () => {
    const r = await run("server", "add");
    expect(r.code).toBe(2);
    expect(r.stderr).toBe("relayctl: Missing required positional argument: NAME (see relayctl --help)\n");
    const fish = await run("completion", "fish");
    expect(fish.stderr).toBe("relayctl: unknown command fish: see relayctl --help\n");
  });

  test("an unknown option is exit 2 with one stderr line, at any level", async () => {
    for (const argv of [["--bogus"], ["client", "--relase"], ["server", "add", "x", "--alow", "1.2.3.4"], ["client", "--config=/x", "--frobnicate=1"]]) {
      const r = await run(...argv);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/^relayctl: unknown option --\w+: see relayctl --help\n$/);
      expect(r.stdout).toBe("");
    }
  });

  test("an unknown command is exit 2", async () => {
    const r = await run("frobnicate");
    expect(r.code).toBe(2);
    expect(r.stderr).toBe("relayctl: unknown command frobnicate: see relayctl --help\n");
  });

  test("a mistyped subcommand of `client` does not renew instead", async () => {
    const r = await run("client", "statuss", "--config", clientConfig());
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown command statuss");
  });

  test("the client without a config is exit 2 with an enroll hint", async () => {
    const missing = join(tempDir("relayctl-cli-"), "client.toml");
    for (const argv of [["client", "--config", missing], ["client", "status", "--config", missing], ["client", "--release", "--config", missing]]) {
      const r = await run(...argv);
      expect(r.code).toBe(2);
      expect(r.stderr).toStartWith(`relayctl: no client config at ${missing}: `);
      expect(r.stderr).toContain("enroll");
    }
  });

  test("an invalid --ip is exit 2 before any network use", async () => {
    const r = await run("client", "--ip", "010.1.1.1", "--config", clientConfig());
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--ip 010.1.1.1");
  });

  test("missing required arguments are usage errors", async () => {
    const enroll = await run("client", "enroll", "https://127.0.0.1:1", "--name", "x");
    expect(enroll.code).toBe(2);
    const dir = tempDir("relayctl-cli-");
    const cfg = writeServerConfig(dir, { postmap: fakePostmap(dir).path });
    const add = await run("server", "add", "--config", cfg);
    expect(add.code).toBe(2);
  });

  test("server add / list / revoke through the CLI", async () => {
    const dir = tempDir("relayctl-cli-");
    const cfg = writeServerConfig(dir, { postmap: fakePostmap(dir).path });
    const add = await run("server", "add", "office", "--allow", "192.0.2.0/24", "--allow", "2001:db8::/32", "--ttl", "10m", "--config", cfg);
    expect(add.code).toBe(0);
    // The token goes on a line of its own, for stdin: never into the enroll line, so never into argv or shell history.
    expect(add.stdout).toMatch(/^relayctl client enroll https:\/\/127\.0\.0\.1:8443 --name office --token - --pin sha256:[0-9a-f]{64}\ntoken: [0-9a-f]{16}\.[A-Za-z0-9_-]{43}\n$/);
    expect(add.stderr).toBe("");
    const dup = await run("server", "add", "office", "--config", cfg);
    expect(dup.code).toBe(2);
    expect(dup.stderr).toStartWith("relayctl: client office already exists: ");
    const bad = await run("server", "add", "Bad_Name", "--config", cfg);
    expect(bad.code).toBe(2);
    const badTtl = await run("server", "add", "x", "--ttl", "1.5m", "--config", cfg);
    expect(badTtl.code).toBe(2);
    const list = await run("server", "list", "--json", "--config", cfg);
    expect(list.code).toBe(0);
    const clients = JSON.parse(list.stdout).clients;
    expect(clients).toHaveLength(1);
    expect(clients[0]).toMatchObject({ name: "office", ttl: 600, allow: ["192.0.2.0/24", "2001:db8::/32"], leases: [] });
    const table = await run("server", "list", "--config", cfg);
    expect(table.stdout.split("\n")[0]).toMatch(/^NAME\s+ADDRESS\s+RENEWED\s+EXPIRES IN\s+TTL\s+ALLOW\s+STATE\s+LAST SEEN\s+LAST ADDRESS\s+EXPECT$/);
    expect(table.stdout).toContain("192.0.2.0/24,2001:db8::/32");
    // Without --verbose too: an admin command says what it did.
    const revoke = await run("server", "revoke", "office", "--config", cfg);
    expect(revoke.code).toBe(0);
    expect(revoke.stdout).toBe("revoked office: no leases removed, token refused; map updated now\n");
    expect(existsSync(join(dir, "postfix", "clients.db"))).toBe(true);
    const again = await run("server", "revoke", "office", "--config", cfg);
    expect(again.code).toBe(2);
  });

  test("server add warns on stderr when the enrollment URL's host has no dot, and still prints the enrollment", async () => {
    const dir = tempDir("relayctl-cli-");
    const cfg = writeServerConfig(dir, { postmap: fakePostmap(dir).path });
    writeFileSync(cfg, readFileSync(cfg, "utf8").replace(/^public_url = .*$/m, 'public_url = "https://relayhost:8443"'));
    const add = await run("server", "add", "office", "--config", cfg);
    expect(add.code).toBe(0);
    expect(add.stderr).toStartWith('warn: https://relayhost:8443 names "relayhost", a host name without a dot');
    expect(add.stderr).toContain(`set public_url = "https://relayhost.example.org:8443" (this host's name in DNS) in ${cfg}`);
    expect(add.stdout).toStartWith("relayctl client enroll https://relayhost:8443 --name office --token - --pin ");
  });

  test("a bad server config is exit 2 naming file and key", async () => {
    const dir = tempDir("relayctl-cli-");
    const cfg = join(dir, "server.toml");
    writeFileSync(cfg, 'ttl = "forever"\n');
    const r = await run("server", "list", "--config", cfg);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith(`relayctl: ${cfg}:1: ttl: `);
  });

  test("`relayctl server` refuses to run without a config file, and --help says the bare form runs it", async () => {
    const missing = join(tempDir("relayctl-cli-"), "server.toml");
    const r = await run("server", "--config", missing);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`relayctl: no server config at ${missing}, so the server does not start: create one with \`install.sh server\`, or pass --config PATH\n`);
    const help = await run("server", "--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Bare `relayctl server` runs the lease server");
  });

  // Never run where a real default config exists: the bare command would start a server.
  test.skipIf(existsSync(DEFAULT_SERVER_CONFIG))("bare `relayctl server` with no default config is exit 2", async () => {
    const r = await run("server");
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith(`relayctl: no server config at ${DEFAULT_SERVER_CONFIG}, so the server does not start: `);
  });

  test("server status of a stopped server prints its JSON and exits 1", async () => {
    const dir = tempDir("relayctl-cli-");
    const cfg = writeServerConfig(dir, { postmap: fakePostmap(dir).path });
    const r = await run("server", "status", "--json", "--config", cfg);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ running: false, status: null });
    expect(r.stderr).toBe("relayctl: server is not running: start it: systemctl start relayctl (or relayctl server --config PATH)\n");
  });
});

describe("plainContext (the renewal's way round citty)", () => {
  const defs = {
    config: { type: "string" },
    verbose: { type: "boolean" },
    release: { type: "boolean" },
    ip: { type: "string" },
    "token-file": { type: "string" },
    url: { type: "positional", required: true },
  } as const;
  const { url: _positional, ...flagDefs } = defs;
  const cmd = { meta: { name: "client" }, args: flagDefs, run: () => undefined } as never;

  test("plain forms give exactly the args citty parses", async () => {
    const { parseArgs } = await import("citty");
    for (const argv of [[], ["--config", "/etc/relayctl/client.toml"], ["--verbose", "--ip", "192.0.2.1", "--config", "c.toml"], ["--release"], ["--config", ""]]) {
      const ctx = await plainContext(cmd, argv);
      expect(ctx).not.toBeNull();
      const cittys = parseArgs(argv, flagDefs);
      for (const key of ["_", ...Object.keys(flagDefs)]) expect([key, ctx!.args[key]]).toEqual([key, cittys[key]]);
      expect(ctx!.rawArgs).toBe(argv);
      expect(ctx!.cmd).toBe(cmd);
    }
  });

  test("anything else is left to citty", async () => {
    for (const argv of [
      ["--config=c.toml"],
      ["--no-verbose"],
      ["--verbose=false"],
      ["--config"],
      ["--config", "--verbose"],
      ["--ip", "-1"],
      ["--verbose", "--verbose"],
      ["--token-file", "t"],
      ["-h"],
      ["status"],
      ["--", "x"],
      ["--unknown"],
      ["--constructor"],
    ]) {
      expect([argv, await plainContext(cmd, argv)]).toEqual([argv, null]);
    }
    // Definitions with rules of their own: positionals, defaults, aliases, enums, required flags.
    for (const args of [defs, { ...flagDefs, ip: { type: "string", default: "x" } }, { ...flagDefs, verbose: { type: "boolean", alias: "V" } }, { mode: { type: "enum", options: ["a"] } }, { ...flagDefs, ip: { type: "string", required: true } }]) {
      expect(await plainContext({ args, run: () => undefined } as never, ["--config", "c"])).toBeNull();
    }
  });

  test("the client renewal takes the plain way and citty is then never loaded", async () => {
    const r = spawnSync(process.execPath, ["-e", `import { cli } from ${JSON.stringify(join(import.meta.dir, "../../src/cli.ts"))}; const code = await cli(["client", "--config", ${JSON.stringify(join(tempDir("relayctl-cli-"), "none.toml"))}]); console.log(code, Object.keys(require.cache).some((k) => k.includes("/citty/")));`], { encoding: "utf8" });
    expect(r.stdout.trim()).toBe("2 false");
  });
});
