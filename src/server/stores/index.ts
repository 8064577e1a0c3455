import type { Clock } from "../../lib/clock.ts";
import type { AllowList } from "../allow.ts";
import type { IndexTuple } from "../live.ts";
import type { OverdueState, Watched } from "../overdue.ts";
import type { AuditRow, Checked, ClientRow, LeaseRow } from "../state.ts";

export type { AuditRow, Checked, ClientRow, LeaseRow };

/** Which page of the audit log auditPage reads: entries of `client` (all when null) at or after `since` (ms), with ids above `after`. */
export interface AuditPageFilter {
  client: string | null;
  since: number;
  after: number;
  limit: number;
}

/** An audit entry as written; the store assigns id, count defaults to 1. */
export type AuditEntry = Omit<AuditRow, "id" | "count"> & { count?: number };

/**
 * The statements a lease or admin change runs inside one transaction. Every
 * method is async so one interface fits SQLite (resolved at once) and
 * PostgreSQL (a round trip each).
 */
export interface StoreTx {
  /** The time this transaction decides expiry by, in ms: the injected clock (SQLite) or the database's now() (PostgreSQL). */
  readonly now: number;
  getClient(name: string): Promise<ClientRow | null>;
  /**
   * Holds the client's row until commit, so two hosts renewing one client at
   * once do not both see "no lease", and returns it as it is now (null when
   * gone): an edit committed since the request was checked is seen here.
   */
  lockClient(name: string): Promise<ClientRow | null>;
  insertClient(c: ClientRow): Promise<void>;
  updateClient(name: string, ttl: number | null, allow: AllowList, ipv6Prefix: number | null): Promise<void>;
  setToken(name: string, tokenId: string, hash: Uint8Array): Promise<boolean>;
  deleteClient(name: string): Promise<boolean>;
  leasesOf(client: string): Promise<LeaseRow[]>;
  /**
   * Extends the client's lease of this family to expiresAt when it is live
   * at `now` and holds exactly ip, and the client's row still has the allow
   * list, ttl and prefix the renewal was checked against: a plain renewal in
   * one statement. Null when it holds none or another, or the row changed
   * (server edit); the caller then takes the full path and checks again.
   */
  extendLease(client: Checked, family: number, ip: string, now: number, expiresAt: number): Promise<LeaseRow | null>;
  upsertLease(l: LeaseRow): Promise<void>;
  setLeaseExpiry(client: string, family: number, expiresAt: number): Promise<void>;
  /** Deletes the client's lease of one family, or all of them; returns what went. */
  deleteLeasesOf(client: string, family?: number): Promise<LeaseRow[]>;
  /** Deletes leases due at `now`; a row deleted by another host first is not returned again. */
  deleteExpired(now: number): Promise<LeaseRow[]>;
  audit(e: AuditEntry): Promise<void>;
  /** Sets a client's expected renewal interval in seconds (null: learn it from renewals). */
  setExpect(name: string, expect: number | null): Promise<void>;
  /** Records a change of overdue state only if the row still holds `from` (one host of several wins and alerts); true when this call changed it. */
  moveOverdue(name: string, from: OverdueState, to: OverdueState, lastSeen: number | null, lastIp: string | null): Promise<boolean>;
  /** Keeps the last renewal and address of pruned leases on their clients' rows. */
  keepSeen(gone: LeaseRow[]): Promise<void>;
}

/**
 * Where clients, leases and the audit log live: SQLite in state_dir (one
 * host) or PostgreSQL (several relay hosts sharing leases).
 */
export interface Store {
  /** "sqlite" or "postgres", for status and messages. */
  readonly kind: "sqlite" | "postgres";
  /** Where the state is, for messages: a directory or a URL without its password. */
  readonly where: string;
  /** Runs fn in one transaction; a throw rolls back. */
  tx<T>(fn: (t: StoreTx) => Promise<T>): Promise<T>;
  getClientByTokenId(tokenId: string): Promise<ClientRow | null>;
  getClient(name: string): Promise<ClientRow | null>;
  listClients(): Promise<ClientRow[]>;
  allLeases(): Promise<LeaseRow[]>;
  /**
   * Every lease, as the live index needs it (expiry in whole ms), in pages
   * of up to `size` rows in (client, family) order, each page its own read:
   * a full load never holds every row at once, and the event loop runs
   * between pages.
   */
  leasePages(size: number): AsyncIterable<IndexTuple[]>;
  /** The leases of these clients. */
  leasesOfClients(names: string[]): Promise<LeaseRow[]>;
  auditLog(filter?: { client?: string; since?: number; limit?: number }): Promise<AuditRow[]>;
  /** Up to `limit` audit entries with ids above `after`, oldest first: one page of a streamed export or history. */
  auditPage(filter: AuditPageFilter): Promise<AuditRow[]>;
  counts(): Promise<{ clients: number; leases: number }>;
  /** Clients for the overdue rules: all of them, or only those whose state could change at `now` (ms, the store's clock). */
  watched(all: boolean, now: number): Promise<Watched[]>;
  /** Deletes audit entries older than `before` (ms); returns how many went. */
  pruneAudit(before: number): Promise<number>;
  /** Where refusal rows go: synchronous ids, written in order behind the scenes where the store is remote. */
  refusalSink(): { audit(e: AuditEntry): number; setAuditCount(id: number, count: number, detail?: string): void };
  /**
   * Calls onChange when another process (an admin command, another relay
   * host) may have committed a change, naming nothing: the caller then asks
   * changes(). PostgreSQL also calls it every POLL_MS, so a lost notice
   * delays a change by at most that. Returns a stop function.
   */
  watch(onChange: () => void): () => void;
  /**
   * What changed since `since` (null: nothing read yet): the clients whose
   * leases to read again, or null when the store cannot tell (SQLite, a
   * follower cut off longer than the log is kept, a switch to another
   * database host), and the position to ask from next. The position is taken
   * before anything is read, so a full reload that follows misses nothing.
   */
  changes(since: ChangePosition | null): Promise<ChangeBatch>;
  /** Periodic upkeep while serving (SQLite: fold the WAL; PostgreSQL: prune the change log). */
  maintain(): void | Promise<void>;
  /** Why the store cannot be reached right now; empty when it answers. */
  problems(): string[];
  /**
   * Milliseconds to add to this host's clock to get the store's: 0 for
   * SQLite, the database clock's lead for PostgreSQL, so the local lookup
   * expires leases when the database does, whatever this host's clock says.
   */
  skew(): number;
  close(): Promise<void>;
}

/** Where a follower has read a store's changes up to: opaque to everyone but the store. */
declare const opaque: unique symbol;
export type ChangePosition = { readonly [opaque]: true };

/** The answer to Store.changes(). */
export interface ChangeBatch {
  /** Clients whose leases changed (each once), or null: reload every lease. */
  clients: string[] | null;
  /** Whether clients were enrolled or removed (the client count may have moved). */
  enrolled: boolean;
  next: ChangePosition | null;
}

/** Raised when the store cannot be reached: renewals answer 503 and the client retries. */
export class StoreUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoreUnavailable";
  }
}

/** A clock that follows the store's: the base clock plus the store's skew. */
export function storeClock(base: Clock, store: Store): Clock {
  return { now: () => Math.floor(base.now() + store.skew()) };
}
