import { defineCommand } from "citty";
import { loadServerConfig } from "../../lib/config.ts";
import { sweep } from "../../server/runtime/sweep.ts";
import { common } from "../shared.ts";

/** `server sweep`: with no server running, expires due leases and rebuilds the map; with one, does nothing. */
export async function runServerSweep(opts: { config?: string; verbose?: boolean }): Promise<void> {
  const r = await sweep(loadServerConfig(opts.config));
  if (opts.verbose) console.log(r.serverRunning ? "server running: nothing to do" : `expired ${r.expired.length} leases; lookup rebuilt from the live leases`);
}

/** `relayctl server sweep`. */
export const sweepCommand = defineCommand({
  meta: { name: "sweep", description: "With the server stopped, expire due leases and rebuild the map (run every minute from a timer or cron)" },
  args: { ...common },
  run: ({ args }) => runServerSweep({ config: args.config, verbose: args.verbose }),
});
