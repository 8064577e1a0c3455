/**
 * Proves the e2e harness against a real Postfix: the relay decision follows the map,
 * and replacing the map by rename takes effect on the very next connection.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  cleanupStale,
  createNetwork,
  freePort,
  indexedMapPath,
  postmap,
  requireE2E,
  startPostfix,
  swaks,
  tmpDir,
  type Host,
  type Net,
  type Postfix,
  type TmpDir,
} from "./harness.ts";

const PREFIX = "rlch";

describe.skipIf(!requireE2E())("e2e harness", () => {
  let net: Net;
  let h2: Host;
  let h3: Host;
  const instances: Postfix[] = [];
  const dirs: TmpDir[] = [];

  beforeAll(async () => {
    await cleanupStale(PREFIX);
    net = await createNetwork(PREFIX);
    h2 = await net.addHost("h2", "198.18.0.2");
    h3 = await net.addHost("h3", "198.18.0.3");
    // Long enough to wait out another e2e run holding the host-wide test network lock.
  }, 150_000);

  afterAll(async () => {
    // Each step is independent so one failure does not leak the rest.
    for (const p of instances) await p.stop().catch(() => {});
    await net?.destroy().catch(() => {});
    for (const d of dirs) d.remove();
  }, 30_000);

  async function instance(mapType: string, hook: "mynetworks" | "check_client_access", listenIp = "198.18.0.1") {
    const dir = tmpDir(`${PREFIX}-${mapType}-`);
    dirs.push(dir);
    const mapPath = join(dir.path, "relay_clients");
    writeFileSync(mapPath, "198.18.0.2 OK\n");
    await postmap(mapType, mapPath);
    const server = `${listenIp}:${freePort()}`;
    const pf = await startPostfix({ dir: dir.path, mapPath, mapType, listen: server, hook });
    instances.push(pf);
    return { mapPath, server, pf };
  }

  for (const mapType of ["hash", "lmdb"]) {
    describe(`mynetworks = ${mapType}:map`, () => {
      let mapPath: string;
      let server: string;

      beforeAll(async () => {
        ({ mapPath, server } = await instance(mapType, "mynetworks"));
      }, 30_000);

      test("listed client may relay, unlisted client is denied", async () => {
        const ok = await swaks({ host: h2, server });
        expect(ok.accepted, ok.output).toBe(true);
        expect(ok.denied, ok.output).toBe(false);
        const no = await swaks({ host: h3, server });
        expect(no.accepted, no.output).toBe(false);
        expect(no.denied, no.output).toBe(true);
      });

      test("replacing the map by rename applies on the next connection", async () => {
        const tmp = `${mapPath}.tmp`;
        writeFileSync(tmp, "198.18.0.3 OK\n");
        await postmap(mapType, tmp);
        // Index first, then source: the same order relayctl uses so the pair is never torn.
        renameSync(indexedMapPath(mapType, tmp)!, indexedMapPath(mapType, mapPath)!);
        renameSync(tmp, mapPath);
        const now = await swaks({ host: h3, server });
        expect(now.accepted, now.output).toBe(true);
        const gone = await swaks({ host: h2, server });
        expect(gone.denied, gone.output).toBe(true);
      });

      test("a host whose address changes is judged by its new address", async () => {
        await h3.setIp("198.18.0.4");
        try {
          const r = await swaks({ host: h3, server });
          expect(r.denied, r.output).toBe(true);
        } finally {
          await h3.setIp("198.18.0.3");
        }
      });
    });
  }

  test("check_client_access hook relays only for listed clients", async () => {
    const { server } = await instance("hash", "check_client_access");
    const ok = await swaks({ host: h2, server });
    expect(ok.accepted, ok.output).toBe(true);
    const no = await swaks({ host: h3, server });
    expect(no.denied, no.output).toBe(true);
  }, 30_000);

  test("loopback listener in the root namespace, with a bound source address", async () => {
    const dir = tmpDir(`${PREFIX}-lo-`);
    dirs.push(dir);
    const mapPath = join(dir.path, "relay_clients");
    writeFileSync(mapPath, "127.0.0.1 OK\n");
    await postmap("hash", mapPath);
    const server = `127.0.0.1:${freePort()}`;
    instances.push(await startPostfix({ dir: dir.path, mapPath, mapType: "hash", listen: server }));
    const ok = await swaks({ server, bind: "127.0.0.1" });
    expect(ok.accepted, ok.output).toBe(true);
    const no = await swaks({ server, bind: "127.0.0.2" });
    expect(no.denied, no.output).toBe(true);
  }, 30_000);
});
