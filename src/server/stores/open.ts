import type { ServerConfig } from "../../lib/config.ts";
import { ExitCode, formatError, RelayError } from "../../lib/errors.ts";
import { systemClock, type Clock } from "../../lib/clock.ts";
import { readLeases, type LeaseRow } from "../state.ts";
import type { Store } from "./index.ts";
import { pgTarget, PgStore } from "./postgres.ts";
import { SqliteStore } from "./sqlite.ts";

/**
 * One row per store kind, as lookups have theirs: what a store can do is a
 * column here, so nothing outside this table asks which store a config names.
 */
export interface StoreKind {
  name: "sqlite" | "postgres";
  /** Shared by several relay hosts; Postfix can query it directly (`server postfix-pgsql`). */
  shared: boolean;
  /** Where the state is, for messages: a directory, or the URL without its password. */
  where(config: ServerConfig): string;
  /**
   * Opens it; `tolerant` (the server): an unreachable database is not fatal,
   * the server starts degraded and catches up; `brief` (an admin command):
   * a few statements, then close, so the fewest connections.
   */
  open(config: ServerConfig, clock: Clock, opts: OpenOptions): Promise<Store>;
  /** The leases it holds, read-only (doctor); `error` says why they could not be read. */
  peek(config: ServerConfig): Promise<{ rows: LeaseRow[]; error: string | null }>;
}

/** How a store is opened: by the long-running server (`tolerant`) or by a command that exits soon (`brief`). */
export interface OpenOptions {
  tolerant?: boolean;
  brief?: boolean;
}

/** Every store kind by name. */
export const STORES: Record<StoreKind["name"], StoreKind> = {
  sqlite: {
    name: "sqlite",
    shared: false,
    where: (config) => config.stateDir,
    open: async (config, clock) => SqliteStore.open(config.stateDir, clock),
    peek: async (config) => ({ rows: readLeases(config.stateDir), error: null }),
  },
  postgres: {
    name: "postgres",
    shared: true,
    where: (config) => pgTarget(config.database!).shown,
    open: openPostgres,
    peek: peekPostgres,
  },
};

/** The store kind a config selects: `database` set means the shared PostgreSQL database. */
export function storeKindOf(config: ServerConfig): StoreKind {
  return STORES[config.database === undefined ? "sqlite" : "postgres"];
}

/**
 * Opens the store a config names. Without `tolerant` (admin commands) an
 * unreachable database is an error that says what to check.
 */
export function openStore(config: ServerConfig, clock: Clock, opts: OpenOptions = {}): Promise<Store> {
  return storeKindOf(config).open(config, clock, opts);
}

async function openPostgres(config: ServerConfig, clock: Clock, opts: OpenOptions): Promise<Store> {
  const store = PgStore.fromConfig(config, clock, { brief: opts.brief });
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

/** The leases a config's state holds, read-only (doctor). */
export function peekLeases(config: ServerConfig): Promise<{ rows: LeaseRow[]; error: string | null }> {
  return storeKindOf(config).peek(config);
}

async function peekPostgres(config: ServerConfig): Promise<{ rows: LeaseRow[]; error: string | null }> {
  let store: PgStore | undefined;
  try {
    store = PgStore.fromConfig(config, systemClock, { brief: true });
    return { rows: await store.peekLeases(), error: null };
  } catch (err) {
    return { rows: [], error: formatError(err) };
  } finally {
    await store?.close().catch(() => undefined);
  }
}
