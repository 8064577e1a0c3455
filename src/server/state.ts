import { Database } from "bun:sqlite";
import { chownSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { RelayError, ExitCode } from "../lib/errors.ts";

/** A client as stored: the token only as a hash. */
export interface ClientRow {
  name: string;
  token_id: string;
  token_hash: Uint8Array;
  ttl: number | null;
  allow: string;
  created_at: number;
}

/** One live lease; times are wall-clock milliseconds. */
export interface LeaseRow {
  client: string;
  family: number;
  ip: string;
  granted_at: number;
  renewed_at: number;
  expires_at: number;
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

/** The SQLite state in state_dir: clients, leases and the audit log. */
export class StateStore {
  readonly db: Database;

  constructor(readonly stateDir: string) {
    try {
      mkdirSync(stateDir, { recursive: true, mode: 0o700 });
      this.db = new Database(join(stateDir, "state.db"), { create: true, strict: true });
      // WAL with synchronous=NORMAL: a crash or kill -9 loses nothing committed;
      // a power cut may drop the last renewals, which clients redo on their
      // next run. FULL would cost one disk flush per renewal.
      this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;");
      this.db.exec(SCHEMA);
    } catch (err) {
      throw new RelayError(`cannot open state in ${stateDir}: ${(err as Error).message}`, {
        exitCode: ExitCode.USAGE,
        hint: "check that state_dir exists and is writable by this user (run admin commands as root or as the relayctl user)",
      });
    }
    adoptOwnership(stateDir, ["state.db", "state.db-wal", "state.db-shm"]);
  }

  /** Runs fn in one IMMEDIATE transaction (writers queue instead of failing mid-way). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  /** A counter that changes whenever another process commits (admin commands). */
  dataVersion(): number {
    return (this.db.query("PRAGMA data_version").get() as { data_version: number }).data_version;
  }

  getClient(name: string): ClientRow | null {
    return this.db.query("SELECT * FROM clients WHERE name = ?").get(name) as ClientRow | null;
  }

  getClientByTokenId(tokenId: string): ClientRow | null {
    return this.db.query("SELECT * FROM clients WHERE token_id = ?").get(tokenId) as ClientRow | null;
  }

  listClients(): ClientRow[] {
    return this.db.query("SELECT * FROM clients ORDER BY name").all() as ClientRow[];
  }

  insertClient(c: ClientRow): void {
    this.db.query("INSERT INTO clients (name, token_id, token_hash, ttl, allow, created_at) VALUES ($name, $token_id, $token_hash, $ttl, $allow, $created_at)").run(c as never);
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

  upsertLease(l: LeaseRow): void {
    this.db
      .query(
        `INSERT INTO leases (client, family, ip, granted_at, renewed_at, expires_at) VALUES ($client, $family, $ip, $granted_at, $renewed_at, $expires_at)
         ON CONFLICT (client, family) DO UPDATE SET ip = excluded.ip, granted_at = excluded.granted_at, renewed_at = excluded.renewed_at, expires_at = excluded.expires_at`,
      )
      .run(l as never);
  }

  deleteLeasesOf(client: string): LeaseRow[] {
    return this.db.query("DELETE FROM leases WHERE client = ? RETURNING *").all(client) as LeaseRow[];
  }

  deleteExpired(now: number): LeaseRow[] {
    return this.db.query("DELETE FROM leases WHERE expires_at <= ? RETURNING *").all(now) as LeaseRow[];
  }

  /** Addresses with a lease still live at `now`: exactly what the map must hold. */
  liveAddresses(now: number): string[] {
    return (this.db.query("SELECT DISTINCT ip FROM leases WHERE expires_at > ? ORDER BY ip").all(now) as { ip: string }[]).map((r) => r.ip);
  }

  nextExpiry(): number | null {
    return (this.db.query("SELECT MIN(expires_at) AS t FROM leases").get() as { t: number | null }).t;
  }

  audit(e: Omit<AuditRow, "id">): void {
    this.db.query("INSERT INTO audit (ts, event, client, ip, source, detail) VALUES ($ts, $event, $client, $ip, $source, $detail)").run(e as never);
  }

  auditLog(filter: { client?: string; since?: number; limit?: number } = {}): AuditRow[] {
    return this.db
      .query("SELECT * FROM audit WHERE ($client IS NULL OR client = $client) AND ts >= $since ORDER BY id DESC LIMIT $limit")
      .all({ client: filter.client ?? null, since: filter.since ?? 0, limit: filter.limit ?? 1000 } as never) as AuditRow[];
  }

  /** How many clients and leases there are, without loading the rows (metrics, status). */
  counts(): { clients: number; leases: number } {
    return this.db.query("SELECT (SELECT COUNT(*) FROM clients) AS clients, (SELECT COUNT(*) FROM leases) AS leases").get() as { clients: number; leases: number };
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
 * When root runs an admin command, files it creates in state_dir are handed
 * to state_dir's owner, so the service user can still open them.
 */
export function adoptOwnership(dir: string, names: string[]): void {
  if (process.getuid?.() !== 0) return;
  const { uid, gid } = statSync(dir);
  if (uid === 0) return;
  for (const name of names) {
    try {
      chownSync(join(dir, name), uid, gid);
    } catch {
      // Not created (yet): nothing to hand over.
    }
  }
}
