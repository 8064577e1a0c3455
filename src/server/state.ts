import { Database } from "bun:sqlite";
import { mkdirSync } from "node:fs";
import { ensureOwnedFile, ownerFor, refuseLink } from "../lib/fsutil.ts";
import { join } from "node:path";
import { RelayError, ExitCode } from "../lib/errors.ts";
import { parseAllowList, type AllowList } from "./allow.ts";
import type { IndexTuple } from "./live.ts";
import { foldWatched, LATE_AFTER_INTERVALS, MIN_LEARNED_MS, type OverdueState, type Watched } from "./overdue.ts";

/** A client as stored: the token only as a hash. */
export interface ClientRow {
  name: string;
  token_id: string;
  token_hash: Uint8Array;
  ttl: number | null;
  allow: AllowList;
  created_at: number;
  /** IPv6 prefix length of this client's leases; null = the server's ipv6_prefix. */
  ipv6_prefix: number | null;
  /** Expected renewal interval in seconds (--expect); null or absent = learned from renewals. */
  expect?: number | null;
}

/** The parts of a client row a renewal's admission was decided by. */
export type Checked = Pick<ClientRow, "name" | "allow" | "ttl" | "ipv6_prefix">;

/** A clients row as SQLite returns it: the allow list still column text. */
type RawClient = Omit<ClientRow, "allow"> & { allow: string };

function clientRow(r: RawClient | null): ClientRow | null {
  return r && { ...r, allow: parseAllowList(r.allow) };
}

/** One live lease; times are wall-clock milliseconds. */
export interface LeaseRow {
  client: string;
  family: number;
  ip: string;
  granted_at: number;
  renewed_at: number;
  expires_at: number;
  /** Plain renewals since the lease was granted: kept on the lease, not as audit rows. */
  renewals: number;
}

/** One audit log entry. */
export interface AuditRow {
  id: number;
  ts: number;
  event: string;
  client: string | null;
  ip: string | null;
  source: string | null;
  detail: string | null;
  /** How many times this happened: refusals from one source in one burst share a row. */
  count: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS clients (
  name TEXT PRIMARY KEY,
  token_id TEXT NOT NULL UNIQUE,
  token_hash BLOB NOT NULL,
  ttl INTEGER,
  allow TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS leases (
  client TEXT NOT NULL REFERENCES clients(name) ON DELETE CASCADE,
  family INTEGER NOT NULL,
  ip TEXT NOT NULL,
  granted_at INTEGER NOT NULL,
  renewed_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (client, family)
) STRICT;
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires_at);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts INTEGER NOT NULL,
  event TEXT NOT NULL,
  client TEXT,
  ip TEXT,
  source TEXT,
  detail TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
`;

/**
 * Schema changes after the first release, in order; PRAGMA user_version
 * counts how many have run. Each runs once, in the same transaction as the
 * version bump, so a crash leaves the old or the new schema, never half.
 */
const MIGRATIONS: string[] = [
  // 1: renewal counters on the lease, per-client IPv6 prefix, aggregated audit rows.
  `ALTER TABLE leases ADD COLUMN renewals INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE clients ADD COLUMN ipv6_prefix INTEGER;
   ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;`,
  // 2: overdue watch: the expected interval (--expect), the state last alerted, and the
  // last renewal and address kept for when the lease is pruned. Written at transitions
  // and expiries only, never per renewal.
  `ALTER TABLE clients ADD COLUMN expect INTEGER;
   ALTER TABLE clients ADD COLUMN overdue_state TEXT NOT NULL DEFAULT 'ok';
   ALTER TABLE clients ADD COLUMN last_seen INTEGER;
   ALTER TABLE clients ADD COLUMN last_ip TEXT;`,
];

/** The schema version this build writes; a newer database is refused rather than misread. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/** The SQLite state in state_dir: clients, leases and the audit log. */
export class StateStore {
  readonly db: Database;

  constructor(readonly stateDir: string) {
    try {
      mkdirSync(stateDir, { recursive: true, mode: 0o700 });
      // Ownership is settled before SQLite opens anything: handing a file over
      // afterwards closes a descriptor of it, which drops this connection's
      // locks (an admin command run by root could then lose its WAL to a
      // process that believed itself the last). Run as root, SQLite gives a
      // new -wal and -shm the database's owner itself.
      const owner = ownerFor(stateDir);
      ensureOwnedFile(join(stateDir, "state.db"), owner, true);
      for (const f of ["state.db-wal", "state.db-shm"]) ensureOwnedFile(join(stateDir, f), owner, false);
      this.db = new Database(join(stateDir, "state.db"), { create: true, strict: true });
      // WAL with synchronous=NORMAL: a crash or kill -9 loses nothing committed;
      // a power cut may drop the last renewals, which clients redo on their
      // next run. FULL would cost one disk flush per renewal.
      // journal_size_limit: the WAL is truncated back to 4 MB after each checkpoint instead of keeping its peak size.
      this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA journal_size_limit = 4194304;");
      this.migrate();
    } catch (err) {
      if (err instanceof RelayError) throw err;
      throw new RelayError(`cannot open state in ${stateDir}: ${(err as Error).message}`, {
        exitCode: ExitCode.USAGE,
        hint: "check that state_dir exists and is writable by this user (run admin commands as root or as the relayctl user)",
      });
    }
  }

  /** Creates the tables, then runs the migrations this database has not seen yet. */
  private migrate(): void {
    const current = (): number => (this.db.query("PRAGMA user_version").get() as { user_version: number }).user_version;
    // Checked before a write transaction, so a read-only state_dir still opens for reading.
    if (current() === SCHEMA_VERSION) return;
    this.tx(() => {
      const version = current();
      if (version > SCHEMA_VERSION) {
        throw new RelayError(`state.db has schema version ${version}, newer than this relayctl knows (${SCHEMA_VERSION})`, {
          exitCode: ExitCode.USAGE,
          hint: "run the relayctl version that wrote it, or restore a backup",
        });
      }
      if (version === SCHEMA_VERSION) return;
      // A new database has no tables yet: the base schema, then every migration.
      this.db.exec(SCHEMA);
      for (let v = version; v < SCHEMA_VERSION; v++) this.db.exec(MIGRATIONS[v]!);
      this.db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    });
  }

  /**
   * Copies the WAL into the database and truncates it to zero bytes: run
   * while the server is quiet, so state_dir does not keep the WAL's peak
   * size (journal_size_limit caps it in between).
   */
  checkpoint(): void {
    this.db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  }

  /** Runs fn in one IMMEDIATE transaction (writers queue instead of failing mid-way). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  /** How many rows this connection has changed since it opened. */
  totalChanges(): number {
    return (this.db.query("SELECT total_changes() AS n").get() as { n: number }).n;
  }

  /** A counter that changes whenever another process commits (admin commands). */
  dataVersion(): number {
    return (this.db.query("PRAGMA data_version").get() as { data_version: number }).data_version;
  }

  getClient(name: string): ClientRow | null {
    return clientRow(this.db.query("SELECT * FROM clients WHERE name = ?").get(name) as RawClient | null);
  }

  getClientByTokenId(tokenId: string): ClientRow | null {
    return clientRow(this.db.query("SELECT * FROM clients WHERE token_id = ?").get(tokenId) as RawClient | null);
  }

  listClients(): ClientRow[] {
    return (this.db.query("SELECT * FROM clients ORDER BY name").all() as RawClient[]).map((r) => clientRow(r)!);
  }

  insertClient(c: ClientRow): void {
    this.db
      .query("INSERT INTO clients (name, token_id, token_hash, ttl, allow, created_at, ipv6_prefix) VALUES ($name, $token_id, $token_hash, $ttl, $allow, $created_at, $ipv6_prefix)")
      .run({ ...c, allow: c.allow.stored } as never);
  }

  /** Changes a client's ttl, allow list and IPv6 prefix in place (server edit). */
  updateClient(name: string, ttl: number | null, allow: AllowList, ipv6Prefix: number | null): void {
    this.db.query("UPDATE clients SET ttl = ?, allow = ?, ipv6_prefix = ? WHERE name = ?").run(ttl, allow.stored, ipv6Prefix, name);
  }

  /** Moves a lease's expiry (server edit cutting it to a shorter ttl). */
  setLeaseExpiry(client: string, family: number, expiresAt: number): void {
    this.db.query("UPDATE leases SET expires_at = ? WHERE client = ? AND family = ?").run(expiresAt, client, family);
  }

  /** Gives a client a new token; false when there is no such client. */
  setToken(name: string, tokenId: string, hash: Uint8Array): boolean {
    return this.db.query("UPDATE clients SET token_id = ?, token_hash = ? WHERE name = ?").run(tokenId, hash, name).changes > 0;
  }

  deleteClient(name: string): boolean {
    return this.db.query("DELETE FROM clients WHERE name = ?").run(name).changes > 0;
  }

  leasesOf(client: string): LeaseRow[] {
    return this.db.query("SELECT * FROM leases WHERE client = ? ORDER BY family").all(client) as LeaseRow[];
  }

  allLeases(): LeaseRow[] {
    return this.db.query("SELECT * FROM leases ORDER BY client, family").all() as LeaseRow[];
  }

  /** Up to `size` leases after (client, family) `after` in that order, as arrays of the columns the live index reads. */
  leasePage(after: IndexTuple | null, size: number): IndexTuple[] {
    // STRICT columns: TEXT, INTEGER, TEXT, INTEGER arrive as string, number, string, number.
    return (
      after === null
        ? this.db.query("SELECT client, family, ip, expires_at FROM leases ORDER BY client, family LIMIT ?").values(size)
        : this.db.query("SELECT client, family, ip, expires_at FROM leases WHERE (client, family) > (?, ?) ORDER BY client, family LIMIT ?").values(after[0], after[1], size)
    ) as unknown as IndexTuple[];
  }

  /**
   * Extends a live lease that holds exactly ip, while the client's row still
   * has the allow list, ttl and prefix the caller checked; returns it, or
   * null when there is none such (or the row changed since).
   */
  extendLease(client: Checked, family: number, ip: string, now: number, expiresAt: number): LeaseRow | null {
    return this.db
      .query(
        `UPDATE leases SET renewed_at = ?1, expires_at = ?2, renewals = renewals + 1 WHERE client = ?3 AND family = ?4 AND ip = ?5 AND expires_at > ?1
         AND EXISTS (SELECT 1 FROM clients WHERE name = ?3 AND allow = ?6 AND ttl IS ?7 AND ipv6_prefix IS ?8) RETURNING *`,
      )
      .get(now, expiresAt, client.name, family, ip, client.allow.stored, client.ttl, client.ipv6_prefix) as LeaseRow | null;
  }

  upsertLease(l: LeaseRow): void {
    this.db
      .query(
        `INSERT INTO leases (client, family, ip, granted_at, renewed_at, expires_at, renewals) VALUES ($client, $family, $ip, $granted_at, $renewed_at, $expires_at, $renewals)
         ON CONFLICT (client, family) DO UPDATE SET ip = excluded.ip, granted_at = excluded.granted_at, renewed_at = excluded.renewed_at, expires_at = excluded.expires_at, renewals = excluded.renewals`,
      )
      .run(l as never);
  }

  /** Deletes the client's lease of one family, or all of them; returns what went. */
  deleteLeasesOf(client: string, family?: number): LeaseRow[] {
    return this.db.query("DELETE FROM leases WHERE client = ? AND (? IS NULL OR family = ?) RETURNING *").all(client, family ?? null, family ?? null) as LeaseRow[];
  }

  deleteExpired(now: number): LeaseRow[] {
    return this.db.query("DELETE FROM leases WHERE expires_at <= ? RETURNING *").all(now) as LeaseRow[];
  }

  /** Appends an audit entry; returns its id (refusal bursts raise its count later). */
  audit(e: Omit<AuditRow, "id" | "count"> & { count?: number }): number {
    return Number(
      this.db.query("INSERT INTO audit (ts, event, client, ip, source, detail, count) VALUES ($ts, $event, $client, $ip, $source, $detail, $count)").run({ ...e, count: e.count ?? 1 } as never).lastInsertRowid,
    );
  }

  /** Sets the count (and, for summaries, the text) of an aggregated audit entry. */
  setAuditCount(id: number, count: number, detail?: string): void {
    this.db.query("UPDATE audit SET count = ?, detail = COALESCE(?, detail) WHERE id = ?").run(count, detail ?? null, id);
  }

  auditLog(filter: { client?: string; since?: number; limit?: number } = {}): AuditRow[] {
    return this.db
      .query("SELECT * FROM audit WHERE ($client IS NULL OR client = $client) AND ts >= $since ORDER BY id DESC LIMIT $limit")
      .all({ client: filter.client ?? null, since: filter.since ?? 0, limit: filter.limit ?? 1000 } as never) as AuditRow[];
  }

  /** Up to `limit` audit entries with ids above `after`, oldest first (the id index pages it; no OFFSET). */
  auditPage(f: { client: string | null; since: number; after: number; limit: number }): AuditRow[] {
    return this.db
      .query("SELECT * FROM audit WHERE id > $after AND ($client IS NULL OR client = $client) AND ts >= $since ORDER BY id LIMIT $limit")
      .all({ after: f.after, client: f.client, since: f.since, limit: f.limit } as never) as AuditRow[];
  }

  /** How many clients and leases there are, without loading the rows (metrics, status). */
  counts(): { clients: number; leases: number } {
    return this.db.query("SELECT (SELECT COUNT(*) FROM clients) AS clients, (SELECT COUNT(*) FROM leases) AS leases").get() as { clients: number; leases: number };
  }

  /** Sets a client's expected renewal interval in seconds (null: learn it). */
  setExpect(name: string, expect: number | null): void {
    this.db.query("UPDATE clients SET expect = ? WHERE name = ?").run(expect, name);
  }

  /**
   * Records a change of overdue state, only if the row still holds `from`:
   * of several processes deciding the same change, one sees true and alerts.
   */
  moveOverdue(name: string, from: OverdueState, to: OverdueState, lastSeen: number | null, lastIp: string | null): boolean {
    return (
      this.db.query("UPDATE clients SET overdue_state = ?, last_seen = COALESCE(?, last_seen), last_ip = COALESCE(?, last_ip) WHERE name = ? AND overdue_state = ?").run(to, lastSeen, lastIp, name, from)
        .changes > 0
    );
  }

  /** Keeps the last renewal and address of pruned leases on their clients' rows, so a silent client still shows them. */
  keepSeen(gone: LeaseRow[]): void {
    const q = this.db.query("UPDATE clients SET last_seen = ?1, last_ip = ?2 WHERE name = ?3 AND (last_seen IS NULL OR last_seen < ?1)");
    for (const l of gone) q.run(l.renewed_at, l.ip, l.client);
  }

  /**
   * Clients for the overdue rules with their leases: every client (`all`),
   * or only those whose state could change at `now` (recorded not ok, no
   * live lease though seen before, or a renewal older than two intervals),
   * so a large site's check returns a handful of rows.
   */
  watched(all: boolean, now: number): Watched[] {
    const rows = this.db
      .query(
        `SELECT c.name, c.expect, c.overdue_state, c.last_seen, c.last_ip, l.ip, l.granted_at, l.renewed_at, l.expires_at, l.renewals
         FROM clients c LEFT JOIN leases l ON l.client = c.name
         WHERE ?1 OR c.overdue_state <> 'ok'
           OR (c.last_seen IS NOT NULL AND NOT EXISTS (SELECT 1 FROM leases x WHERE x.client = c.name AND x.expires_at > ?2))
           OR EXISTS (SELECT 1 FROM leases x WHERE x.client = c.name AND x.renewed_at < ?2 - ?3 * COALESCE(c.expect * 1000, CASE WHEN x.renewals > 0 THEN MAX(?4, (x.renewed_at - x.granted_at) / x.renewals) END))
         ORDER BY c.name`,
      )
      .all(all ? 1 : 0, now, LATE_AFTER_INTERVALS, MIN_LEARNED_MS) as Record<string, unknown>[];
    return foldWatched(rows);
  }

  /** Deletes audit entries older than `before` (ms); returns how many went. */
  pruneAudit(before: number): number {
    return this.db.query("DELETE FROM audit WHERE ts < ?").run(before).changes;
  }

  close(): void {
    this.db.close();
  }
}

/**
 * Every lease in a state directory, read-only and without creating or
 * migrating anything (doctor looks, never touches); empty when there is no
 * readable state.
 */
export function readLeases(stateDir: string): LeaseRow[] {
  const path = join(stateDir, "state.db");
  try {
    refuseLink(path);
    const db = new Database(path, { readonly: true });
    try {
      return db.query("SELECT * FROM leases ORDER BY expires_at DESC").all() as LeaseRow[];
    } finally {
      db.close();
    }
  } catch {
    return [];
  }
}
