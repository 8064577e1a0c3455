/**
 * The core promise, proven with a real Postfix and real SMTP: after
 * `relayctl client` exits 0 the host may relay; any other address, a released,
 * expired, replaced or revoked lease gets "Relay access denied".
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createNetwork, freePort, run, postfixMapTypes, requireE2E, startPostfix, swaks, tmpDir, type Host, type Net, type Postfix, type TmpDir } from "./harness.ts";
import { addClient, ensureBinary, onHost, relayctl, startServer, writeServerConfig, type ServerProc } from "./relayctl.ts";

setDefaultTimeout(60_000);
const enabled = requireE2E();
const types = enabled ? ["hash", "lmdb"].filter((t) => postfixMapTypes().includes(t)) : ["hash", "lmdb"];

for (const mapType of types) {
  describe.skipIf(!enabled)(`relay through a real Postfix (${mapType} map)`, () => {
    let tmp: TmpDir;
    let net: Net;
    let h1: Host;
    let h2: Host;
    let postfix: Postfix;
    let server: ServerProc | undefined;
    let config: string;
    let url: string;
    let smtp: string;
    const cfg = (name: string): string => join(tmp.path, `${name}.toml`);

    const relays = async (host: Host, bind?: string): Promise<boolean> => {
      const r = await swaks({ host, server: smtp, bind });
      if (!r.accepted && !r.denied) throw new Error(`swaks gave neither verdict:\n${r.output}`);
      return r.accepted;
    };

    const enroll = async (host: Host, name: string, extra: string[] = []): Promise<void> => {
      const line = await addClient(config, name, extra);
      const r = await onHost(host, [...line, "--config", cfg(name)]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
    };

    const renew = async (host: Host, name: string, extra: string[] = []): Promise<void> => {
      const r = await onHost(host, ["client", "--config", cfg(name), ...extra]);
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 0, stdout: "", stderr: "" });
    };

    const expiresAt = async (name: string): Promise<number> => {
      const r = await relayctl(["server", "list", "--json", "--config", config]);
      const c = (JSON.parse(r.stdout).clients as { name: string; leases: { expires_at: string }[] }[]).find((x) => x.name === name)!;
      return Date.parse(c.leases[0]!.expires_at);
    };

    const cleanup = async (): Promise<void> => {
      await server?.stop();
      server = undefined;
      await postfix?.stop();
      await net?.destroy();
      tmp?.remove();
    };

    beforeAll(async () => {
      try {
        await setUp();
      } catch (err) {
        // bun skips afterAll when beforeAll throws: clean up here instead.
        await cleanup();
        throw err;
      }
    }, 180_000);

    afterAll(cleanup);

    const setUp = async (): Promise<void> => {
      await ensureBinary();
      tmp = tmpDir(`relayctl-e2e-${mapType}-`);
      net = await createNetwork("rce");
      h1 = await net.addHost("h1", "198.18.0.2");
      h2 = await net.addHost("h2", "198.18.0.3");
      const mapPath = join(tmp.path, "map", "clients");
      mkdirSync(join(tmp.path, "map"));
      smtp = `198.18.0.1:${freePort()}`;
      postfix = await startPostfix({ dir: join(tmp.path, "postfix"), mapPath, mapType, listen: smtp });
      const port = freePort();
      url = `https://198.18.0.1:${port}`;
      config = writeServerConfig(tmp.path, {
        listen: `198.18.0.1:${port}`,
        public_url: url,
        state_dir: join(tmp.path, "state"),
        map: mapPath,
        map_type: mapType,
        ttl: "20m",
      });
      server = await startServer(config, url);
      await enroll(h1, "h1");
      await enroll(h2, "short", ["--ttl", "10s"]);
    };

    test("relay is accepted from the leased address as soon as the client exits, denied from others", async () => {
      expect(await relays(h1)).toBe(false);
      await renew(h1, "h1");
      expect(await relays(h1)).toBe(true);
      expect(await relays(h2)).toBe(false);
    });

    test("a new address replaces the old one at once", async () => {
      await renew(h1, "h1");
      await h1.setIp("198.18.0.4");
      await renew(h1, "h1");
      expect(await relays(h1)).toBe(true);
      // Someone else now holding the old address must not relay.
      await h2.addIp("198.18.0.2");
      // The bridge still maps .2 to h1's MAC; forget it, as a real ISP's ARP would.
      await run(["ip", "neigh", "flush", "dev", net.bridge, "to", "198.18.0.2"]);
      expect(await relays(h2, "198.18.0.2")).toBe(false);
      expect(readFileSync(join(tmp.path, "map", "clients"), "utf8")).not.toContain("198.18.0.2 ");
    });

    test("release drops the lease before the client exits", async () => {
      await renew(h1, "h1", ["--release"]);
      expect(await relays(h1)).toBe(false);
      await renew(h1, "h1");
      expect(await relays(h1)).toBe(true);
    });

    test("a lease leaves the map within a second of expiring", async () => {
      await renew(h2, "short");
      expect(await relays(h2)).toBe(true);
      const due = await expiresAt("short");
      await Bun.sleep(Math.max(0, due - Date.now()) + 1000);
      expect(await relays(h2)).toBe(false);
    }, 30_000);

    test("leases survive kill -9; what fell due while down expires at start", async () => {
      await renew(h2, "short");
      const due = await expiresAt("short");
      await server!.kill9();
      server = undefined;
      // Postfix keeps relaying from the last good map while the server is down.
      expect(await relays(h1)).toBe(true);
      await Bun.sleep(Math.max(0, due - Date.now()) + 200);
      server = await startServer(config, url);
      expect(await relays(h1)).toBe(true);
      expect(await relays(h2)).toBe(false);
      const list = JSON.parse((await relayctl(["server", "list", "--json", "--config", config])).stdout);
      expect(list.clients.find((c: { name: string }) => c.name === "h1").leases.map((l: { ip: string }) => l.ip)).toEqual(["198.18.0.4"]);
    }, 40_000);

    test("a wrong token or a wrong pin is refused with exit 3 and one line", async () => {
      const good = readFileSync(cfg("h1"), "utf8");
      writeFileSync(cfg("badtoken"), good.replace(/token = "([0-9a-f]{16})\.[^"]+"/, 'token = "$1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"'), { mode: 0o600 });
      writeFileSync(cfg("badpin"), good.replace(/pin = "sha256:[0-9a-f]+"/, `pin = "sha256:${"ab".repeat(32)}"`), { mode: 0o600 });
      for (const name of ["badtoken", "badpin"]) {
        const r = await onHost(h1, ["client", "--config", cfg(name)]);
        expect(r.code).toBe(3);
        expect(r.stdout).toBe("");
        expect(r.stderr.trim().split("\n")).toHaveLength(1);
      }
      expect(await relays(h1)).toBe(true);
    });

    test("revoke removes the lease from the map and refuses the token", async () => {
      const r = await relayctl(["server", "revoke", "h1", "--config", config]);
      expect(r.code).toBe(0);
      const deadline = Date.now() + 1500;
      while ((await relays(h1)) && Date.now() < deadline) await Bun.sleep(100);
      expect(await relays(h1)).toBe(false);
      expect((await onHost(h1, ["client", "--config", cfg("h1")])).code).toBe(3);
    });

    test("revoke with the server stopped updates the map itself", async () => {
      await enroll(h1, "again");
      await renew(h1, "again");
      expect(await relays(h1)).toBe(true);
      expect(await server!.stop()).toBe(0);
      server = undefined;
      expect((await relayctl(["server", "revoke", "again", "--config", config])).code).toBe(0);
      expect(await relays(h1)).toBe(false);
      server = await startServer(config, url);
    });
  });
}
