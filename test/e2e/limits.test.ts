/**
 * Durations beyond their documented maximum are refused with exit 2, at
 * `server add` and at config load, before they can reach state or a timer.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { tmpDir, type TmpDir } from "./harness.ts";
import { addClient, ensureBinary, relayctl, writeServerConfig } from "./relayctl.ts";

describe("duration limits", () => {
  let tmp: TmpDir;
  let config: string;
  const base = (): Record<string, string> => ({ listen: "127.0.0.1:1", public_url: "https://127.0.0.1:1", state_dir: join(tmp.path, "state"), map: join(tmp.path, "map", "clients") });

  beforeAll(async () => {
    await ensureBinary();
    tmp = tmpDir("relayctl-e2e-limits-");
    config = writeServerConfig(tmp.path, base());
  });
  afterAll(() => tmp?.remove());

  test("server add --ttl 99999999d is refused with exit 2 and server list keeps working", async () => {
    await addClient(config, "sane", ["--ttl", "400d"]);
    const r = await relayctl(["server", "add", "huge", "--ttl", "99999999d", "--config", config]);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith("relayctl: --ttl: 99999999d is above the maximum of 400d: use 400d or less (");
    expect(r.stdout).toBe("");
    const list = await relayctl(["server", "list", "--json", "--config", config]);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout).clients.map((c: { name: string; ttl: number }) => [c.name, c.ttl])).toEqual([["sane", 400 * 86400]]);
  });

  test("server add --ttl below the minimum is refused too", async () => {
    const r = await relayctl(["server", "add", "tiny", "--ttl", "9s", "--config", config]);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith("relayctl: --ttl: 9s is below the minimum of 10s: ");
  });

  const tooLarge: [string, string, string][] = [
    ["postmap_timeout", "25d", "5m"],
    ["ttl", "401d", "400d"],
    ["audit_retention", "3651d", "3650d"],
  ];
  for (const [key, value, max] of tooLarge) {
    test(`${key} = "${value}" stops the server and admin commands with exit 2 naming file:line`, async () => {
      const dir = join(tmp.path, key);
      mkdirSync(dir);
      const path = writeServerConfig(dir, { ...base(), [key]: value });
      // writeServerConfig puts keys in insertion order: the extra key is on line 5.
      const expected = `relayctl: ${path}:5: ${key}: ${value} is above the maximum of ${max}: use ${max} or less (`;
      const run = await relayctl(["server", "--config", path], 10_000);
      expect(run.code).toBe(2);
      expect(run.stderr).toStartWith(expected);
      const list = await relayctl(["server", "list", "--config", path]);
      expect(list.code).toBe(2);
      expect(list.stderr).toStartWith(expected);
    });
  }
});
