/**
 * A stepped system clock must neither expire every lease nor keep them
 * forever. libfaketime moves the server's wall clock (and only it) while it
 * runs; relaying is checked with swaks after each jump.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createNetwork, freePort, requireE2E, startPostfix, swaks, tmpDir, type Host, type Net, type Postfix, type TmpDir } from "./harness.ts";
import { addClient, ensureBinary, onHost, startServer, writeServerConfig, type ServerProc } from "./relayctl.ts";

setDefaultTimeout(60_000);
const FAKETIME = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"].find((p) => existsSync(p));
const enabled = requireE2E();
if (enabled && !FAKETIME && process.env.RELAYCTL_REQUIRE_E2E === "1") throw new Error("libfaketime missing: apt-get install faketime");

describe.skipIf(!enabled || !FAKETIME)("wall clock jumps", () => {
  let tmp: TmpDir;
  let net: Net;
  let h1: Host;
  let h2: Host;
  let postfix: Postfix;
  let server: ServerProc | undefined;
  let smtp: string;
  let third: string[];
  const clockFile = (): string => join(tmp.path, "faketime");
  const relays = async (host: Host): Promise<boolean> => {
    const r = await swaks({ host, server: smtp });
    if (!r.accepted && !r.denied) throw new Error(`swaks gave neither verdict:\n${r.output}`);
    return r.accepted;
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
      await ensureBinary();
      tmp = tmpDir("relayctl-e2e-clock-");
      net = await createNetwork("rck");
      h1 = await net.addHost("h1", "198.18.0.2");
      h2 = await net.addHost("h2", "198.18.0.3");
      mkdirSync(join(tmp.path, "map"));
      const mapPath = join(tmp.path, "map", "clients");
      smtp = `198.18.0.1:${freePort()}`;
      postfix = await startPostfix({ dir: join(tmp.path, "postfix"), mapPath, mapType: "hash", listen: smtp });
      const port = freePort();
      const url = `https://198.18.0.1:${port}`;
      const config = writeServerConfig(tmp.path, { listen: `198.18.0.1:${port}`, public_url: url, state_dir: join(tmp.path, "state"), map: mapPath, map_type: "hash", ttl: "20m" });
      writeFileSync(clockFile(), "+0\n");
      server = await startServer(config, url, {
        LD_PRELOAD: FAKETIME!,
        FAKETIME_TIMESTAMP_FILE: clockFile(),
        FAKETIME_NO_CACHE: "1",
        // Timers run on the monotonic clock, which a real clock step leaves alone too.
        FAKETIME_DONT_FAKE_MONOTONIC: "1",
      });
      for (const [host, name, extra] of [[h1, "long", []], [h2, "short", ["--ttl", "10s"]], [h2, "third", ["--allow", "198.18.0.0/24"]]] as const) {
        const line = await addClient(config, name, [...extra]);
        expect((await onHost(host, [...line, "--config", join(tmp.path, `${name}.toml`)])).code).toBe(0);
        if (name !== "third") expect((await onHost(host, ["client", "--config", join(tmp.path, `${name}.toml`)])).code).toBe(0);
      }
      third = ["client", "--config", join(tmp.path, "third.toml"), "--ip", "198.18.0.9"];
    } catch (err) {
      await cleanup();
      throw err;
    }
  }, 180_000);

  afterAll(cleanup);

  test("a jump forward by two days does not expire live leases", async () => {
    expect(await relays(h1)).toBe(true);
    writeFileSync(clockFile(), "+2d\n");
    // A new grant rebuilds the map from "live" leases: judged by the stepped
    // wall clock, every other lease would be gone from it.
    expect((await onHost(h2, third)).code).toBe(0);
    expect(await relays(h1)).toBe(true);
    expect(await relays(h2)).toBe(true);
  });

  test("a jump back by two days does not keep a lease past its ttl", async () => {
    writeFileSync(clockFile(), "-2d\n");
    // "short" was granted with a 10 s ttl before both jumps.
    await Bun.sleep(11_000);
    expect(await relays(h2)).toBe(false);
    expect(await relays(h1)).toBe(true);
  }, 30_000);
});
