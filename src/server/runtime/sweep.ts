import type { ServerConfig } from "../../lib/config.ts";
import { log } from "../../lib/logging.ts";
import { StateLock } from "../lock.ts";
import { openCore, openLookup, type Core } from "../core.ts";
import { openExports } from "../exports.ts";
import type { LeaseRow } from "../state.ts";

/**
 * Runs fn on the state while no server runs, holding the server's lock, and
 * then makes the lookup Postfix reads (a map outlives the server) equal to
 * the live leases, and the export files with it: nothing installed is
 * trusted to be current. Returns null
 * when a server holds the lock: it sees the change itself within a second.
 */
export async function withoutServer<T>(config: ServerConfig, fn: (core: Core) => Promise<T>): Promise<{ result: T } | null> {
  const lock = StateLock.tryAcquire(config.stateDir);
  if (!lock) return null;
  let core: Core | undefined;
  try {
    core = await openCore(config);
    const result = await fn(core);
    // fn may have changed state directly (server edit): publish what state now holds.
    await core.leases.reload();
    if (core.lookupType.outlivesServer) {
      const lookup = await openLookup(core);
      try {
        await lookup.publish();
      } finally {
        await lookup.close();
      }
    }
    // The export files outlive the server too; a failing one is logged and
    // left for the next run, never in the way of the lookup above.
    await openExports(core.config, core.leases.index, core.clock).sync();
    return { result };
  } finally {
    await core?.store.close();
    lock.release();
  }
}

/**
 * `relayctl server sweep`, from a timer every minute: while the server is
 * stopped, expired leases would otherwise keep relaying from the map. With
 * a server running it does nothing.
 */
export async function sweep(config: ServerConfig): Promise<{ serverRunning: boolean; expired: LeaseRow[] }> {
  const r = await withoutServer(config, (core) => core.leases.expireDue());
  if (!r) return { serverRunning: true, expired: [] };
  for (const l of r.result) log.info(`expired: ${l.client} ${l.ip}`);
  return { serverRunning: false, expired: r.result };
}
