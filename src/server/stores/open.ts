import type { ServerConfig } from "../../lib/config.ts";
import { ExitCode, formatError, RelayError } from "../../lib/errors.ts";
import { systemClock, type Clock } from "../../lib/clock.ts";
import { readLeases, type LeaseRow } from "../state.ts";
import type { Store } from "./index.ts";
import { PgStore } from "./postgres.ts";
import { SqliteStore } from "./sqlite.ts";

/**
 * Opens the store a config names: SQLite in state_dir, or the shared
 * PostgreSQL database. `tolerant` (the server): an unreachable database is
 * not fatal, the server starts degraded and catches up. Otherwise (admin
 * commands) it is an error that says what to check.
 */
export async function openStore(config: ServerConfig, clock: Clock, opts: { tolerant?: boolean } = {}): Promise<Store> {
  if (config.database === undefined) return SqliteStore.open(config.stateDir, clock);
  const store = PgStore.fromConfig(config, clock);
  try {
    await store.ready();
  } catch (err) {
    if (opts.tolerant && !(err instanceof RelayError)) {
      return store;
    }
    await store.close().catch(() => undefined);
    throw unavailableError(store.where, err);
  }
  return store;
}

/** The admin-facing error for a database that could not be opened. */
export function unavailableError(where: string, err: unknown): RelayError {
  if (err instanceof RelayError) return err;
  return new RelayError(`cannot open the shared database ${where}: ${(err as Error).message}`, {
    exitCode: ExitCode.FAILED,
    hint: "check that PostgreSQL runs, the URL in database (server.toml), the user's password and the role's grants (docs/several-relays.md, Roles and grants)",
    cause: err,
  });
}

/**
 * The leases a config's state holds, read-only (doctor): SQLite's state.db,
 * or the shared database; `error` says why the database could not be read.
 */
export async function peekLeases(config: ServerConfig): Promise<{ rows: LeaseRow[]; error: string | null }> {
  if (config.database === undefined) return { rows: readLeases(config.stateDir), error: null };
  let store: PgStore | undefined;
  try {
    store = PgStore.fromConfig(config, systemClock);
    return { rows: await store.peekLeases(), error: null };
  } catch (err) {
    return { rows: [], error: formatError(err) };
  } finally {
    await store?.close().catch(() => undefined);
  }
}
