// The composed server: what a running server serves from memory.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import { addClient } from "../../../src/server/admin.ts";
import { startServer, type RunningServer } from "../../../src/server/server.ts";
import { fakePostmap, removeTempDirs, silenceLogger, tempDir, writeServerConfig } from "../helpers.ts";

let server: RunningServer;
let configPath: string;

beforeAll(async () => {
  silenceLogger();
  const dir = tempDir("relayctl-server-");
  configPath = writeServerConfig(dir, { postmap: fakePostmap(dir).path });
  server = await startServer({ config: { ...loadServerConfig(configPath), listen: { host: "127.0.0.1", port: 0 } } });
});

afterAll(async () => {
  await server?.stop();
  removeTempDirs();
});

const scrape = async (): Promise<string> => {
  const res = await fetch(`https://127.0.0.1:${server.port}/metrics`, { tls: { rejectUnauthorized: false } } as RequestInit);
  expect(res.status).toBe(200);
  return res.text();
};

describe("GET /metrics", () => {
  test("gauges come from memory: no database query per scrape, and they follow admin changes", async () => {
    await addClient({ configPath, name: "office" });
    await server.core.leases.renew((await server.core.store.getClient("office"))!, parseCidr("198.51.100.7")!, "t");
    // The server notices the admin command's commit and counts clients again.
    const deadline = Date.now() + 5_000;
    while (!(await scrape()).includes("relayctl_clients 1\n") && Date.now() < deadline) await Bun.sleep(50);
    const store = server.core.store;
    const counts = store.counts.bind(store);
    let queries = 0;
    store.counts = () => {
      queries++;
      return counts();
    };
    try {
      for (let i = 0; i < 5; i++) {
        const text = await scrape();
        expect(text).toContain("relayctl_clients 1\n");
        expect(text).toContain("relayctl_leases_active 1\n");
      }
      expect(queries).toBe(0);
    } finally {
      store.counts = counts;
    }
  });
});
