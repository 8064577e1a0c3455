/**
 * Map rebuild: the server's own MapWriter.sync() (mapAddresses from the
 * in-memory index, render, write, postmap beside the source's fsync, rename,
 * fsync dir) vs a plain
 * `postmap TYPE:file` of the same file, alternating, in this process.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { LiveIndex } from "../src/server/live.ts";
import { systemClock } from "../src/lib/clock.ts";
import { mapAddresses, MapWriter } from "../src/server/lookups/map.ts";
import { StateStore } from "../src/server/state.ts";
import { benchAddress, median, mmm, ratio, scratch, seedState, toolPath, type Row } from "./lib.ts";

async function timePostmap(postmap: string, type: string, path: string): Promise<number> {
  const t0 = performance.now();
  const p = Bun.spawn([postmap, `${type}:${path}`], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  const timer = setTimeout(() => p.kill("SIGKILL"), 60_000);
  const code = await p.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`postmap ${type}:${path} exited ${code}`);
  return performance.now() - t0;
}

export async function benchMap(o: { sizes: number[]; types: string[]; runs: number }): Promise<{ rows: Row[]; details: string[] }> {
  const postmap = toolPath("postmap");
  const rows: Row[] = [];
  for (const n of o.sizes) {
    const dir = scratch(`map${n}`);
    const stateDir = join(dir, "state");
    seedState(stateDir, { clients: n, leases: true, keepTokens: 0 });
    const store = new StateStore(stateDir);
    try {
      for (const type of o.types) {
        mkdirSync(join(dir, type), { recursive: true });
        const mapPath = join(dir, type, "clients");
        const plain = join(dir, type, "plain");
        const index = new LiveIndex();
        index.load(store.allLeases());
        const first = store.allLeases().find((l) => l.client === "s000000")!;
        const writer = new MapWriter({ path: mapPath, type: type as never, postmap, addresses: () => mapAddresses(index, systemClock) });
        await writer.sync(); // initial build, not timed
        const mine: number[] = [];
        const base: number[] = [];
        for (let i = 0; i < o.runs; i++) {
          // One lease moves to another address, as a grant or replace does, so every sync really rebuilds.
          index.put({ ...first, ip: benchAddress(n + 1 + (i % 2)) });
          const t0 = performance.now();
          const info = await writer.sync();
          const ms = performance.now() - t0;
          // The replaced map is freed in the background: not while the baseline runs.
          await writer.settled();
          if (info.entries !== n) throw new Error(`unexpected rebuild ${JSON.stringify(info)}`);
          if (!info.changed) continue; // nothing rebuilt: not a rebuild sample
          mine.push(ms);
          // The baseline builds exactly the file the server just installed.
          writeFileSync(plain, readFileSync(mapPath));
          base.push(await timePostmap(postmap, type, plain));
        }
        const r = median(mine) / median(base);
        rows.push({
          figure: `map rebuild, ${n.toLocaleString("en-US")} leases, ${type}`,
          relayctl: mmm(mine, "ms"),
          baseline: `postmap ${mmm(base, "ms")}`,
          ratio: ratio(median(mine), median(base)),
          target: "≤ 1.3×",
          verdict: r <= 1.3 ? "met" : "MISSED",
        });
      }
    } finally {
      store.close();
    }
  }
  return {
    rows,
    details: [
      `map rebuild: ${o.runs} rebuilds per size and type, each after one lease moved to another address; relayctl = MapWriter.sync() as the server runs it (the addresses the server's map lookup takes from the in-memory index, render, write of the source in a private directory, postmap with the source's fsync running beside it, two renames, fsync of the directory); baseline = \`postmap TYPE:file\` of a copy of the same source file, timed right after the writer settled (the replaced files it frees in the background included), in the same directory.`,
    ],
  };
}
