/**
 * `server edit` changes a live client without a new token, and `server
 * status` exits 0 only while the server runs healthy; driven through
 * dist/relayctl with a real Postfix deciding what relays.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync } from "node:fs";
import { e2eRequired, requireE2E, run } from "./harness.ts";
import { BIN, onHost, relayctl, stage, type Stage } from "./relayctl.ts";
import { postgresBinDir } from "../pgcluster.ts";

setDefaultTimeout(60_000);
const enabled = requireE2E();
const FAKETIME = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"].find((p) => existsSync(p));
if (enabled && (!FAKETIME || !postgresBinDir()) && e2eRequired()) throw new Error("libfaketime or PostgreSQL missing: as root, test/prereqs.sh installs them");

describe.skipIf(!enabled)("server edit and server status", () => {
  let s: Stage;
  const renew = (name = "h1") => onHost(s.h1, ["client", "--config", s.cfg(name)]);
  const edit = (...args: string[]) => relayctl(["server", "edit", "h1", ...args, "--config", s.config]);
  const clientOf = async (name: string): Promise<{ ttl: number; allow: string[]; leases: { ip: string; expires_at: string }[] }> =>
    JSON.parse((await relayctl(["server", "list", "--json", "--config", s.config])).stdout).clients.find((c: { name: string }) => c.name === name);
  const waitFor = async (what: string, ok: () => boolean, ms = 5_000): Promise<void> => {
    for (const deadline = Date.now() + ms; !ok(); await Bun.sleep(50)) if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
  };

  beforeAll(async () => {
    s = await stage({
      prefix: "rce",
      ready: async (st) => {
        await st.enroll(st.h1, "h1", ["--allow", "198.18.0.0/24"]);
        expect((await onHost(st.h1, ["client", "--config", st.cfg("h1")])).code).toBe(0);
      },
    });
  }, 180_000);
  afterAll(() => s?.cleanup());

  test("server status of the healthy server exits 0", async () => {
    const r = await relayctl(["server", "status", "--json", "--config", s.config]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ running: true, status: { degraded: [] } });
  });

  test("an allow list that leaves the lease out drops it at once; the same token renews once allowed again", async () => {
    expect(await s.relays(s.h1)).toBe(true);
    const r = await edit("--allow", "198.18.0.3/32");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(
      ["h1: allow 198.18.0.0/24 -> 198.18.0.3/32", "dropped lease 198.18.0.2: 198.18.0.2 is outside the allow list of client h1", "map updated by the running server", ""].join("\n"),
    );
    await waitFor("the map to drop 198.18.0.2", () => s.mapEntries().length === 0);
    expect(await s.relays(s.h1)).toBe(false);
    const refused = await renew();
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain("outside the allow list of client h1");

    const back = await edit("--allow", "198.18.0.2", "--allow", "2001:db8::/32");
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toBe("h1: allow 198.18.0.3/32 -> 198.18.0.2/32 2001:db8::/32\n");
    expect((await renew()).code).toBe(0);
    await waitFor("the map to hold 198.18.0.2 again", () => s.mapEntries().includes("198.18.0.2 OK"));
    expect(await s.relays(s.h1)).toBe(true);
  });

  test("a shorter ttl cuts the current lease and applies to the next renewal", async () => {
    const r = await edit("--ttl", "30s");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^h1: ttl default \(20m\) -> 30s\nlease 198\.18\.0\.2 now expires \S+ \(the new ttl from now\)\n$/);
    const c = await clientOf("h1");
    expect(c.ttl).toBe(30);
    expect(Date.parse(c.leases[0]!.expires_at) - Date.now()).toBeLessThanOrEqual(30_000);
    expect((await renew()).code).toBe(0);
    expect(Date.parse((await clientOf("h1")).leases[0]!.expires_at) - Date.now()).toBeLessThanOrEqual(30_000);
  });

  test("bad edits are exit 2 and change nothing", async () => {
    for (const args of [[], ["--ttl", "401d"], ["--allow", "10.0.0.1/8"], ["--allow", "198.18.0.2", "--clear-allow"]]) {
      const r = await edit(...args);
      expect(r.code, args.join(" ")).toBe(2);
    }
    const unknown = await relayctl(["server", "edit", "nobody", "--ttl", "1h", "--config", s.config]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toBe("relayctl: no client named nobody: see relayctl server list\n");
    expect(await clientOf("h1")).toMatchObject({ ttl: 30, allow: ["198.18.0.2/32", "2001:db8::/32"] });
  });

  test("the audit log names each edit and what it changed", async () => {
    const log = await relayctl(["server", "log", "--client", "h1", "--json", "--config", s.config]);
    const edits = JSON.parse(log.stdout).events.filter((e: { event: string }) => e.event === "edit");
    expect(edits.map((e: { detail: string }) => e.detail.split("; ")[0])).toEqual([
      "allow 198.18.0.0/24 -> 198.18.0.3/32",
      "allow 198.18.0.3/32 -> 198.18.0.2/32 2001:db8::/32",
      "ttl default (20m) -> 30s",
    ]);
    expect(edits[0].ip).toBe("198.18.0.2");
  });

  test("with the server stopped, edit rebuilds the map itself and status exits 1 with its JSON", async () => {
    expect(await s.server!.stop()).toBe(0);
    s.server = undefined;
    const status = await relayctl(["server", "status", "--json", "--config", s.config]);
    expect(status.code).toBe(1);
    expect(JSON.parse(status.stdout).running).toBe(false);
    expect(status.stderr).toStartWith("relayctl: server is not running: ");
    const text = await relayctl(["server", "status", "--config", s.config]);
    expect(text.code).toBe(1);
    expect(text.stdout).toStartWith("server: not running\n");

    expect(s.mapEntries()).toEqual(["198.18.0.2 OK"]);
    const r = await edit("--allow", "198.18.0.3");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split("\n").at(-2)).toBe("map updated now");
    expect(s.mapEntries()).toEqual([]);
    expect(await s.relays(s.h1)).toBe(false);

    await s.start();
    expect((await relayctl(["server", "status", "--config", s.config])).code).toBe(0);
  });
});

describe.skipIf(!enabled || !FAKETIME || !postgresBinDir())("server edit on a shared PostgreSQL database", () => {
  let s: Stage;

  beforeAll(async () => {
    s = await stage({
      prefix: "rct",
      postgres: true,
      prepare: async (st) => st.writeConfig({ database: st.pg!.url }),
      ready: async (st) => {
        await st.enroll(st.h1, "h1");
        expect((await onHost(st.h1, ["client", "--config", st.cfg("h1")])).code).toBe(0);
      },
    });
  }, 180_000);
  afterAll(() => s?.cleanup());

  test("--ttl from an admin host whose clock is an hour slow cuts the lease by the database's clock: it keeps relaying", async () => {
    expect(await s.relays(s.h1)).toBe(true);
    const r = await run([BIN, "server", "edit", "h1", "--ttl", "5m", "--config", s.config], { env: { LD_PRELOAD: FAKETIME!, FAKETIME: "-1h", FAKETIME_DONT_FAKE_MONOTONIC: "1" } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("lease 198.18.0.2 now expires");
    const { leases } = JSON.parse((await relayctl(["server", "list", "--json", "--config", s.config])).stdout).clients.find((c: { name: string }) => c.name === "h1");
    // Cut by the admin host's clock it would have ended 55 minutes ago, and be gone.
    expect(leases).toHaveLength(1);
    const left = Date.parse(leases[0].expires_at) - Date.now();
    expect(left).toBeGreaterThan(290_000);
    expect(left).toBeLessThanOrEqual(300_000);
    // Long enough for the server to hear of the change and expire anything due.
    await Bun.sleep(1_500);
    expect(await s.relays(s.h1)).toBe(true);
  });
});
