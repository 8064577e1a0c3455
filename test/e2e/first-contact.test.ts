/**
 * What a new user meets first, against the compiled binary: help and errors
 * without escape codes, the generated man page and completions, the runtime's
 * own error text translated, and "permission denied" for an unreadable config.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { renderClientConfig } from "../../src/lib/config.ts";
import { BIN, ensureBinary } from "./relayctl.ts";

const DIST = resolve(import.meta.dir, "../../dist");
let work: string;

beforeAll(async () => {
  await ensureBinary();
  work = mkdtempSync(join(tmpdir(), "relayctl-first-"));
  chmodSync(work, 0o755);
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Runs the binary with a clean environment plus env. */
function relayctl(args: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(BIN, args, { encoding: "utf8", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe("first contact", () => {
  test("--help of every level and errors carry no escape codes when piped", () => {
    for (const args of [["--help"], ["server", "--help"], ["client", "enroll", "--help"], ["completion", "--help"]]) {
      const r = relayctl(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("USAGE relayctl");
      expect(r.stdout).not.toContain("\x1b");
    }
    const err = relayctl(["server", "add"]);
    expect(err.code).toBe(2);
    expect(err.stderr).not.toContain("\x1b");
  });

  test("the build wrote the man page and completions that `relayctl completion` prints", () => {
    expect(relayctl(["completion", "bash"]).stdout).toBe(readFileSync(join(DIST, "completions/relayctl"), "utf8"));
    expect(relayctl(["completion", "zsh"]).stdout).toBe(readFileSync(join(DIST, "completions/_relayctl"), "utf8"));
    const page = readFileSync(join(DIST, "relayctl.1"), "utf8");
    expect(page).toContain('.SS "relayctl client enroll"');
    expect(page).toContain("\\fB\\-\\-token\\-file\\fR");
    const man = spawnSync("man", ["-l", join(DIST, "relayctl.1")], { encoding: "utf8", env: { ...process.env, MANWIDTH: "80", MAN_KEEP_FORMATTING: "" } });
    if (man.status === 0) expect(man.stdout).toContain("relayctl server add NAME");
  });

  test("an unreachable server is told in relayctl's words, not the runtime's", () => {
    const config = join(work, "unreachable.toml");
    writeFileSync(config, renderClientConfig({ server: "https://127.0.0.1:1", name: "office", token: "0123456789abcdef.x" }));
    const r = relayctl(["client", "status", "--config", config]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("relayctl: cannot reach https://127.0.0.1:1: connection refused: check that the server runs and listens on that port, and that no firewall rejects it\n");
  });

  test("a user who cannot read the client config is told permission denied, not 'no client config'", () => {
    const config = join(work, "client.toml");
    writeFileSync(config, renderClientConfig({ server: "https://127.0.0.1:1", name: "office", token: "0123456789abcdef.x" }));
    chmodSync(config, 0o600);
    // A copy nobody can execute: the checkout may sit under a directory only root can enter.
    const bin = join(work, "relayctl");
    copyFileSync(BIN, bin);
    chmodSync(bin, 0o755);
    const r = spawnSync("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin, "client", "--config", config], { encoding: "utf8", env: { PATH: "/usr/bin:/bin" } });
    expect(r.stderr).toStartWith(`relayctl: permission denied reading ${config}: `);
    expect(r.status).toBe(2);
  });
});
