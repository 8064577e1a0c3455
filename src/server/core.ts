import type { ServerConfig } from "../lib/config.ts";
import { log } from "../lib/logging.ts";
import { ensureServerCertificate, type ServerCertificate } from "../lib/tls.ts";
import { systemClock, type Clock } from "../lib/clock.ts";
import { LeaseBook } from "./leases.ts";
import type { LiveView } from "./live.ts";
import { lookupTypeOf, type Lookup, type LookupType } from "./lookups/index.ts";
import { storeClock, type Store } from "./stores/index.ts";
import { openStore } from "./stores/open.ts";

/** State, lease rules and the lookup type of a config: what server, admin commands and sweep share. */
export interface Core {
  config: ServerConfig;
  store: Store;
  leases: LeaseBook;
  lookupType: LookupType;
  clock: Clock;
}

/**
 * Opens state (SQLite, or the shared PostgreSQL database) and loads the live
 * index; the caller decides whether it holds the lock. `tolerant`: a server
 * starts even when the database cannot be reached, with an empty index, and
 * catches up when it answers. `store` swaps in an already open store (tests).
 */
export async function openCore(config: ServerConfig, base: Clock = systemClock, opts: { tolerant?: boolean; store?: Store } = {}): Promise<Core> {
  const store = opts.store ?? (await openStore(config, base, opts));
  // Leases expire by the store's clock: PostgreSQL's now() on every host alike.
  const clock = storeClock(base, store);
  // Read through the holder so a SIGHUP reload changes the default ttl in place.
  const core: Core = { config, store, leases: new LeaseBook(store, () => core.config.ttl, clock), lookupType: lookupTypeOf(config), clock };
  try {
    await core.leases.reload();
  } catch (err) {
    if (!opts.tolerant) {
      await store.close();
      throw err;
    }
    log.error(`state: cannot read leases from ${store.where} (${(err as Error).message}); starting empty, catching up when it answers`);
  }
  return core;
}

/** Opens the configured lookup over a core's live index, or over a view of it (the server's, which may withhold every lease). */
export function openLookup(core: Core, onPublish?: (r: { ms: number; entries: number } | Error) => void, index: LiveView = core.leases.index): Promise<Lookup> {
  return core.lookupType.open({ config: core.config, index, clock: core.clock, onPublish });
}

/** The server certificate for a config: the configured files, or the generated pair in state_dir. */
export function certFor(config: ServerConfig): Promise<ServerCertificate> {
  return ensureServerCertificate({
    stateDir: config.stateDir,
    host: new URL(config.publicUrl).hostname.replace(/^\[|\]$/g, ""),
    certPath: config.tlsCert,
    keyPath: config.tlsKey,
  });
}
