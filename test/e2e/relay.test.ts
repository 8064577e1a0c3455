/**
 * The core promise, proven with a real Postfix and real SMTP: after
 * `relayctl client` exits 0 the host may relay; any other address, a released,
 * expired, replaced or revoked lease gets "Relay access denied".
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { postfixMapTypes, requireE2E, run, type Host } from "./harness.ts";
import { onHost, relayctl, stage, type Stage } from "./relayctl.ts";

setDefaultTimeout(60_000);
const enabled = requireE2E();
const types = enabled ? ["hash", "lmdb"].filter((t) => postfixMapTypes().includes(t)) : ["hash", "lmdb"];

for (const mapType of types) {
  describe.skipIf(!enabled)(`relay through a real Postfix (${mapType} map)`, () => {
    let s: Stage;

    const renew = async (host: Host, name: string, extra: string[] = []): Promise<void> => {
      const r = await onHost(host, ["client", "--config", s.cfg(name), ...extra]);
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 0, stdout: "", stderr: "" });
    };

    const expiresAt = async (name: string): Promise<number> => {
      const r = await relayctl(["server", "list", "--json", "--config", s.config]);
      const c = (JSON.parse(r.stdout).clients as { name: string; leases: { expires_at: string }[] }[]).find((x) => x.name === name)!;
      return Date.parse(c.leases[0]!.expires_at);
    };

    beforeAll(async () => {
      s = await stage({
        prefix: "rce",
        mapType,
        prepare: async (st) => st.writeConfig({ ttl: "20m" }),
        ready: async (st) => {
          await st.enroll(st.h1, "h1");
          await st.enroll(st.h2, "short", ["--ttl", "10s"]);
        },
      });
    }, 180_000);

    afterAll(() => s?.cleanup());

    test("relay is accepted from the leased address as soon as the client exits, denied from others", async () => {
      expect(await s.relays(s.h1)).toBe(false);
      await renew(s.h1, "h1");
      expect(await s.relays(s.h1)).toBe(true);
      expect(await s.relays(s.h2)).toBe(false);
    });

    test("a new address replaces the old one at once", async () => {
      await renew(s.h1, "h1");
      await s.h1.setIp("198.18.0.4");
      await renew(s.h1, "h1");
      expect(await s.relays(s.h1)).toBe(true);
      // Someone else now holding the old address must not relay.
      await s.h2.addIp("198.18.0.2");
      // The bridge still maps .2 to h1's MAC; forget it, as a real ISP's ARP would.
      await run(["ip", "neigh", "flush", "dev", s.net.bridge, "to", "198.18.0.2"]);
      expect(await s.relays(s.h2, "198.18.0.2")).toBe(false);
      expect(readFileSync(join(s.tmp.path, "map", "clients"), "utf8")).not.toContain("198.18.0.2 ");
    });

    test("release drops the lease before the client exits", async () => {
      await renew(s.h1, "h1", ["--release"]);
      expect(await s.relays(s.h1)).toBe(false);
      await renew(s.h1, "h1");
      expect(await s.relays(s.h1)).toBe(true);
    });

    test("a lease leaves the map within a second of expiring", async () => {
      await renew(s.h2, "short");
      expect(await s.relays(s.h2)).toBe(true);
      const due = await expiresAt("short");
      await Bun.sleep(Math.max(0, due - Date.now()) + 1000);
      expect(await s.relays(s.h2)).toBe(false);
    }, 30_000);

    test("leases survive kill -9; what fell due while down expires at start", async () => {
      await renew(s.h2, "short");
      const due = await expiresAt("short");
      await s.server!.kill9();
      s.server = undefined;
      // Postfix keeps relaying from the last good map while the server is down.
      expect(await s.relays(s.h1)).toBe(true);
      await Bun.sleep(Math.max(0, due - Date.now()) + 200);
      await s.start();
      expect(await s.relays(s.h1)).toBe(true);
      expect(await s.relays(s.h2)).toBe(false);
      const list = JSON.parse((await relayctl(["server", "list", "--json", "--config", s.config])).stdout);
      expect(list.clients.find((c: { name: string }) => c.name === "h1").leases.map((l: { ip: string }) => l.ip)).toEqual(["198.18.0.4"]);
    }, 40_000);

    test("a wrong token or a wrong pin is refused with exit 3 and one line", async () => {
      const good = readFileSync(s.cfg("h1"), "utf8");
      writeFileSync(s.cfg("badtoken"), good.replace(/token = "([0-9a-f]{16})\.[^"]+"/, 'token = "$1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"'), { mode: 0o600 });
      writeFileSync(s.cfg("badpin"), good.replace(/pin = "sha256:[0-9a-f]+"/, `pin = "sha256:${"ab".repeat(32)}"`), { mode: 0o600 });
      for (const name of ["badtoken", "badpin"]) {
        const r = await onHost(s.h1, ["client", "--config", s.cfg(name)]);
        expect(r.code).toBe(3);
        expect(r.stdout).toBe("");
        expect(r.stderr.trim().split("\n")).toHaveLength(1);
      }
      expect(await s.relays(s.h1)).toBe(true);
    });

    test("revoke removes the lease from the map and refuses the token", async () => {
      const r = await relayctl(["server", "revoke", "h1", "--config", s.config]);
      expect(r.code).toBe(0);
      const deadline = Date.now() + 1500;
      while ((await s.relays(s.h1)) && Date.now() < deadline) await Bun.sleep(100);
      expect(await s.relays(s.h1)).toBe(false);
      expect((await onHost(s.h1, ["client", "--config", s.cfg("h1")])).code).toBe(3);
    });

    test("revoke with the server stopped updates the map itself", async () => {
      await s.enroll(s.h1, "again");
      await renew(s.h1, "again");
      expect(await s.relays(s.h1)).toBe(true);
      expect(await s.server!.stop()).toBe(0);
      s.server = undefined;
      expect((await relayctl(["server", "revoke", "again", "--config", s.config])).code).toBe(0);
      expect(await s.relays(s.h1)).toBe(false);
      await s.start();
    });
  });
}
