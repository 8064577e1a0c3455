/**
 * Starting the server: never on built-in defaults without a config file, and
 * never locked out of its own state_dir by what root created there first.
 */
import { beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync } from "node:fs";
import { DEFAULT_SERVER_CONFIG } from "../../src/lib/config.ts";
import { ensureBinary, relayctl } from "./relayctl.ts";

setDefaultTimeout(60_000);

describe("relayctl server without a config file", () => {
  beforeAll(ensureBinary);

  // Never where a real default config exists: the bare command would start a server.
  test.skipIf(existsSync(DEFAULT_SERVER_CONFIG))("bare `relayctl server` refuses to start with exit 2 and creates nothing", async () => {
    const stateBefore = existsSync("/var/lib/relayctl");
    const r = await relayctl(["server"], 10_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`relayctl: no server config at ${DEFAULT_SERVER_CONFIG}, so the server does not start: create one with \`install.sh server\`, or pass --config PATH\n`);
    expect(existsSync("/var/lib/relayctl")).toBe(stateBefore);
  });

  test("a missing --config is refused the same way, and --help says the bare form runs the server", async () => {
    const r = await relayctl(["server", "--config", "/nonexistent/relayctl/server.toml"], 10_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith("relayctl: no server config at /nonexistent/relayctl/server.toml, so the server does not start: ");
    const help = await relayctl(["server", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Bare `relayctl server` runs the lease server");
  });
});
