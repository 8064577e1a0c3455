import { leaseText, type Cidr } from "../lib/ip.ts";
import { LiveIndex, type LiveLease } from "./live.ts";
import { systemClock, type Clock } from "../lib/clock.ts";
import { log } from "../lib/logging.ts";
import type { ClientRow, LeaseRow } from "./state.ts";
import type { ChangePosition, Store, StoreTx } from "./stores/index.ts";

/**
 * Rows per page of a full load: a page is put into the index between two
 * turns of the event loop, so this bounds how long Postfix's policy queries
 * wait during a start or a reconcile (~10 ms for 5,000 rows), at one round
 * trip per page (200 at 1,000,000 leases).
 */
export const LOAD_PAGE = 5_000;

export type RenewEvent = "grant" | "renew" | "replace";

/**
 * Decides a renewal's network again from the client's row as the
 * transaction sees it (null: the client is gone); throws to refuse.
 */
export type Recheck = (client: ClientRow | null) => Cidr;

/** One network a renewal asks for, and how to decide it again inside the transaction. */
export interface RenewRequest {
  net: Cidr;
  recheck?: Recheck;
}

/** What a renewal did, and whether the map must change because of it. */
export interface RenewResult {
  event: RenewEvent;
  lease: LeaseRow;
  replaced?: string;
  lookupChanged: boolean;
}

/**
 * Lease rules: one lease per client and family, replaced at once, expiring
 * ttl after the last renewal. Every committed change is mirrored into the
 * live index, which the lookups answer from.
 */
export class LeaseBook {
  constructor(
    private readonly store: Store,
    private readonly defaultTtl: () => number,
    /** The clock the index's expiry is judged by (the store's own clock decides in transactions). */
    readonly clock: Clock = systemClock,
    readonly index: LiveIndex = new LiveIndex(),
  ) {}

  /** Where the index stands in the store's change log; null: unknown (the next catch-up reloads everything). */
  private position: ChangePosition | null = null;
  /** Full reloads done (start, reconcile, a catch-up the store could not answer in part), for tests and the bench. */
  fullReloads = 0;
  /** The full load running, if any: one at a time, since two interleaved would each take the other's stale rows for news. */
  private loading: Promise<unknown> | null = null;

  /** Reloads every lease from state: at start, on the follower's periodic reconcile, and after an admin command. */
  async reload(): Promise<void> {
    await this.catchUp(true);
  }

  /**
   * Applies what other processes committed since the last catch-up: only the
   * leases of the clients the store names, or every lease when it cannot
   * name them (full, or no position yet). The position is taken before the
   * leases are read and kept only once they are applied, so a change
   * committed meanwhile is read again next time, never missed; a failure
   * keeps the old position. Returns whether the client count may have
   * moved, and whether any lease was read (false: the log named nobody, and
   * the lookups need not be published again).
   */
  async catchUp(full = false): Promise<{ enrolled: boolean; changed: boolean }> {
    const batch = await this.store.changes(full ? null : this.position);
    if (batch.clients === null) {
      await this.loadAll();
    } else if (batch.clients.length) {
      this.index.setClients(batch.clients, await this.store.leasesOfClients(batch.clients));
    }
    this.position = batch.next;
    return { enrolled: batch.enrolled, changed: batch.clients === null || batch.clients.length > 0 };
  }

  /**
   * The periodic safety net: reads every lease again and compares, while
   * catch-ups go on beside it, so a revoke is never held up behind a million
   * rows (the index keeps a catch-up's change over an older page's row).
   * The change-log position is left to the catch-ups.
   */
  async reconcile(): Promise<void> {
    await this.loadAll();
  }

  /** Loads every lease into the index, after any full load already running (whose rows may predate the caller's position). */
  private async loadAll(): Promise<void> {
    while (this.loading) await this.loading.catch(() => undefined);
    const run = (this.loading = this.index.loadPages(this.store.leasePages(LOAD_PAGE)));
    try {
      await run;
      this.fullReloads++;
    } finally {
      if (this.loading === run) this.loading = null;
    }
  }

  /** The ttl in seconds that applies to a client. */
  ttlOf(client: ClientRow): number {
    return client.ttl ?? this.defaultTtl();
  }

  /** Grants, renews or replaces the client's lease for the network's family (an address, or an IPv6 prefix). */
  async renew(client: ClientRow, net: Cidr, source: string, recheck?: Recheck): Promise<RenewResult> {
    return (await this.renewAll(client, [{ net, recheck }], source))[0]!;
  }

  /**
   * Renews every requested network in one transaction, all or nothing:
   * a throw for any of them (a recheck refusing) leaves none changed.
   */
  async renewAll(client: ClientRow, requests: RenewRequest[], source: string): Promise<RenewResult[]> {
    const results = await this.store.tx(async (t) => {
      const done: RenewResult[] = [];
      for (const r of requests) done.push(await this.renewIn(t, client, r, source));
      return done;
    });
    for (const r of results) this.index.put(r.lease);
    return results;
  }

  private async renewIn(t: StoreTx, checked: ClientRow, req: RenewRequest, source: string): Promise<RenewResult> {
    const now = t.now;
    // Most renewals keep their address: one statement, no read, no audit, no
    // lookup change, and only while the client's row is as it was checked.
    const extended = await t.extendLease(checked, req.net.family, leaseText(req.net), now, now + this.ttlOf(checked) * 1000);
    if (extended) return { event: "renew", lease: extended, lookupChanged: false };
    // The row as the transaction sees it decides: a server edit committed
    // since the request was checked (narrower allow list, shorter ttl) wins.
    const client = await t.lockClient(checked.name);
    const net = req.recheck ? req.recheck(client) : req.net;
    if (!client) throw new Error(`client ${checked.name} no longer exists`);
    const text = leaseText(net);
    const old = (await t.leasesOf(client.name)).find((l) => l.family === net.family && l.expires_at > now);
    const same = old?.ip === text;
    const lease: LeaseRow = {
      client: client.name,
      family: net.family,
      ip: text,
      granted_at: same ? old!.granted_at : now,
      renewed_at: now,
      expires_at: now + this.ttlOf(client) * 1000,
      renewals: same ? old!.renewals + 1 : 0,
    };
    await t.upsertLease(lease);
    const event: RenewEvent = !old ? "grant" : same ? "renew" : "replace";
    // A plain renewal is state on the lease (renewed_at, renewals), not an
    // audit row: 10,000 clients renewing every 4 minutes would add 220 MB a day.
    if (event !== "renew") await t.audit({ ts: now, event, client: lease.client, ip: text, source, detail: event === "replace" ? `was ${old!.ip}` : null });
    // Only a new or different address can change the lookup.
    return { event, lease, replaced: event === "replace" ? old!.ip : undefined, lookupChanged: event !== "renew" };
  }

  /** Drops the client's lease of one family, or every lease it holds. */
  async release(client: string, source: string | null, family?: 4 | 6): Promise<LeaseRow[]> {
    const gone = await this.store.tx(async (t) => {
      const gone = await t.deleteLeasesOf(client, family);
      const ts = t.now;
      for (const l of gone) await t.audit({ ts, event: "release", client, ip: l.ip, source, detail: null });
      return gone;
    });
    for (const l of gone) this.index.remove(l.client, l.family);
    return gone;
  }

  /** Removes client and leases; its token is refused from then on. */
  async revoke(client: string, source: string | null): Promise<LeaseRow[] | null> {
    const gone = await this.store.tx(async (t) => {
      if (!(await t.getClient(client))) return null;
      const gone = await t.deleteLeasesOf(client);
      await t.deleteClient(client);
      await t.audit({ ts: t.now, event: "revoke", client, ip: gone.map((l) => l.ip).join(" ") || null, source, detail: null });
      return gone;
    });
    this.index.removeClient(client);
    return gone;
  }

  /** Deletes leases whose expiry has passed and logs each as expired. */
  async expireDue(): Promise<LeaseRow[]> {
    const gone = await this.store.tx(async (t) => {
      const now = t.now;
      const gone = await t.deleteExpired(now);
      for (const l of gone) await t.audit({ ts: now, event: "expire", client: l.client, ip: l.ip, source: null, detail: null });
      // The lease row goes; its last renewal stays on the client for the overdue watch and server list.
      await t.keepSeen(gone);
      return gone;
    });
    for (const l of gone) this.index.remove(l.client, l.family);
    return gone;
  }

  /**
   * Drops the due leases from the local index at once, so the lookup stops
   * relaying for them whatever the store does (onChanged publishes), then
   * expires them in the store. When the store cannot be reached, what the
   * index dropped is what went; the store catches up on a later pass. A
   * lease the store did not expire was renewed by another host (a plain
   * renewal is not in the change log, so this host knew the old expiry): it
   * is read back and returns to the index, and onChanged publishes again.
   */
  async expireDueOrLocally(onChanged: () => void = () => undefined): Promise<{ gone: { client: string; ip: string }[]; local: boolean }> {
    const due = this.index.dropExpired(this.clock.now());
    if (due.length) onChanged();
    let gone: LeaseRow[];
    try {
      gone = await this.expireDue();
    } catch (err) {
      if (due.length) log.warn(`state unavailable (${(err as Error).message}); expired ${due.length} lease(s) in the local lookup only`);
      return { gone: due.map((l) => ({ client: l.client, ip: l.ip })), local: true };
    }
    if (await this.readBackRenewed(due, gone)) onChanged();
    return { gone, local: false };
  }

  /** Puts back the due leases the store still holds live (renewed elsewhere); true when any returned. A failed read leaves them out: the next catch-up brings them. */
  private async readBackRenewed(due: readonly LiveLease[], gone: readonly LeaseRow[]): Promise<boolean> {
    const expired = new Set(gone.map((l) => `${l.family} ${l.client}`));
    const clients = [...new Set(due.filter((l) => !expired.has(`${l.family} ${l.client}`)).map((l) => l.client))];
    if (!clients.length) return false;
    let rows: LeaseRow[];
    try {
      rows = await this.store.leasesOfClients(clients);
    } catch {
      return false;
    }
    // Only what is live by this host's clock: a row the store's slower clock
    // has not expired yet would be due again at once, and fire the timer in a loop.
    const now = this.clock.now();
    this.index.setClients(clients, rows.filter((r) => r.expires_at > now));
    return rows.some((r) => r.expires_at > now);
  }

  /** Milliseconds until the next lease expires, or null when there is none. */
  msUntilNextExpiry(): number | null {
    const t = this.index.nextExpiry();
    return t === null ? null : Math.max(0, t - this.clock.now());
  }
}
