import type { Clock } from "../leases.ts";
import { StateStore, type ClientRow, type LeaseRow } from "../state.ts";
import type { AuditEntry, Store, StoreChange, StoreTx } from "./index.ts";

/** How often a server looks for commits by other processes (admin commands). */
const POLL_MS = 250;

/**
 * The Store over the SQLite state in state_dir. Every call is synchronous
 * underneath; transactions are queued one after another in this process,
 * since they share one connection and SQLite has one writer anyway.
 */
export class SqliteStore implements Store {
  readonly kind = "sqlite" as const;
  readonly where: string;
  private queue: Promise<unknown> = Promise.resolve();
  private written = -1;

  constructor(
    readonly state: StateStore,
    private readonly clock: Clock,
  ) {
    this.where = state.stateDir;
  }

  /** Opens state_dir's SQLite state. */
  static open(stateDir: string, clock: Clock): SqliteStore {
    return new SqliteStore(new StateStore(stateDir), clock);
  }

  tx<T>(fn: (t: StoreTx) => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      const s = this.state;
      s.db.exec("BEGIN IMMEDIATE");
      const t: StoreTx = {
        now: this.clock.now(),
        getClient: async (name) => s.getClient(name),
        lockClient: async () => undefined,
        insertClient: async (c) => s.insertClient(c),
        updateClient: async (name, ttl, allow, p) => s.updateClient(name, ttl, allow, p),
        setToken: async (name, id, hash) => s.setToken(name, id, hash),
        deleteClient: async (name) => s.deleteClient(name),
        leasesOf: async (client) => s.leasesOf(client),
        upsertLease: async (l) => s.upsertLease(l),
        setLeaseExpiry: async (client, family, at) => s.setLeaseExpiry(client, family, at),
        deleteLeasesOf: async (client, family) => s.deleteLeasesOf(client, family),
        deleteExpired: async (now) => s.deleteExpired(now),
        audit: async (e) => void s.audit(e),
      };
      try {
        const r = await fn(t);
        s.db.exec("COMMIT");
        return r;
      } catch (err) {
        if (s.db.inTransaction) s.db.exec("ROLLBACK");
        throw err;
      }
    };
    // One transaction at a time on this connection; a failed one does not stop the next.
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  async getClientByTokenId(tokenId: string): Promise<ClientRow | null> {
    return this.state.getClientByTokenId(tokenId);
  }
  async getClient(name: string): Promise<ClientRow | null> {
    return this.state.getClient(name);
  }
  async listClients(): Promise<ClientRow[]> {
    return this.state.listClients();
  }
  async allLeases(): Promise<LeaseRow[]> {
    return this.state.allLeases();
  }
  async leasesOfClients(names: string[]): Promise<LeaseRow[]> {
    return names.flatMap((n) => this.state.leasesOf(n));
  }
  async auditLog(filter?: { client?: string; since?: number; limit?: number }) {
    return this.state.auditLog(filter);
  }
  async counts() {
    return this.state.counts();
  }
  async pruneAudit(before: number): Promise<number> {
    return this.state.pruneAudit(before);
  }

  refusalSink() {
    return {
      audit: (e: AuditEntry) => this.state.audit(e),
      setAuditCount: (id: number, count: number, detail?: string) => this.state.setAuditCount(id, count, detail),
    };
  }

  watch(onChange: (change: StoreChange) => void): () => void {
    // data_version moves when another connection commits: an admin command changed state.
    let seen = this.state.dataVersion();
    const timer = setInterval(() => {
      const v = this.state.dataVersion();
      if (v === seen) return;
      seen = v;
      onChange(null);
    }, POLL_MS);
    return () => clearInterval(timer);
  }

  maintain(): void {
    // total_changes counts this connection's writes: fold the WAL only after some.
    const n = this.state.totalChanges();
    if (n === this.written) return;
    this.written = n;
    this.state.checkpoint();
  }

  problems(): string[] {
    return [];
  }

  skew(): number {
    return 0;
  }

  async close(): Promise<void> {
    this.state.close();
  }
}
