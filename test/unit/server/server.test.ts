// The composed server: what a running server serves from memory.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import { ExitCode } from "../../../src/lib/errors.ts";
import { addClient } from "../../../src/server/admin.ts";
import { StateLock } from "../../../src/server/lock.ts";
import { startServer, type RunningServer } from "../../../src/server/server.ts";
import { existsSync, readFileSync } from "node:fs";
import { STATUS_DELAY_MS } from "../../../src/server/runtime/publisher.ts";
import { statusPath } from "../../../src/server/runtime/status.ts";
import { join } from "node:path";
import { FakeClock, FakeTimers, fakePostmap, relayError, removeTempDirs, silenceLogger, tempDir, writeServerConfig } from "../helpers.ts";

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

describe("GET /metrics names", () => {
  test("the lookup's entries under the lookup-neutral name, and under the old map name until the next release", async () => {
    const text = await scrape();
    const entries = server.lookup.status().entries;
    expect(text).toContain(`relayctl_lookup_entries ${entries}\n`);
    expect(text).toContain(`relayctl_map_entries ${entries}\n`);
  });
});

describe("the listen port", () => {
  test("held by another listener, even one that shares ports: the server refuses at once, naming it, touching nothing", async () => {
    // What another relayctl server (another state_dir) looks like: SO_REUSEPORT set.
    const other = Bun.serve({ hostname: "127.0.0.1", port: 0, reusePort: true, fetch: () => new Response("other") });
    try {
      const dir = tempDir("relayctl-server-");
      const config = { ...loadServerConfig(writeServerConfig(dir, { postmap: fakePostmap(dir).path })), listen: { host: "127.0.0.1", port: other.port! } };
      const err = await relayError(() => startServer({ config }));
      expect(err.exitCode).toBe(ExitCode.USAGE);
      expect(err.message).toBe(`cannot listen on 127.0.0.1:${other.port}: another process already listens on port ${other.port}`);
      expect(StateLock.isHeld(config.stateDir)).toBe(false);
      expect(existsSync(join(dir, "postfix", "clients"))).toBe(false);
    } finally {
      other.stop(true);
    }
  });
});

describe("status.json", () => {
  test("a renewal's answer does not wait for status.json: it is written STATUS_DELAY_MS later, once for many changes", async () => {
    const dir = tempDir("relayctl-server-");
    const path = writeServerConfig(dir, { postmap: fakePostmap(dir).path });
    const config = { ...loadServerConfig(path), listen: { host: "127.0.0.1", port: 0 } };
    const timers = new FakeTimers(new FakeClock());
    const s = await startServer({ config, timers });
    try {
      const status = (): { lookup: { rebuilds: number } } => JSON.parse(readFileSync(statusPath(config.stateDir), "utf8"));
      const before = status().lookup.rebuilds;
      const added = await addClient({ configPath: path, name: "laptop", allow: ["192.0.2.0/24"] });
      const renew = (ip: string): Promise<Response> =>
        fetch(`https://127.0.0.1:${s.port}/v1/lease`, {
          method: "POST",
          headers: { authorization: `Bearer ${added.token}`, "content-type": "application/json" },
          body: JSON.stringify({ ip }),
          tls: { rejectUnauthorized: false },
        } as RequestInit);
      expect((await renew("192.0.2.7")).status).toBe(200);
      expect((await renew("192.0.2.8")).status).toBe(200);
      expect(s.lookup.status().entries).toBe(1);
      expect(timers.delays()).toContain(STATUS_DELAY_MS);
      // Published, answered, and status.json not yet touched.
      expect(status().lookup.rebuilds).toBe(before);
      await timers.advance(STATUS_DELAY_MS);
      expect(status().lookup.rebuilds).toBe(s.lookup.status().rebuilds as number);
      expect(status().lookup.rebuilds).toBeGreaterThan(before);
    } finally {
      await s.stop();
    }
  });
});
