import { leaseTextOf, maskText, type Ip } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";

/** One live lease as the lookups see it: who, which network (as text), until when. */
export interface LiveLease {
  client: string;
  family: number;
  /** The lease in its canonical text: the bare address, or `NET/LEN` for a prefix. */
  ip: string;
  expires_at: number;
}

/** What the index needs of a lease row. */
export type IndexRow = Pick<LiveLease, "client" | "family" | "ip" | "expires_at">;

/** The same as a full load reads it, one array per row: a million row objects made for one put each cost 0.7 s of a start. */
export type IndexTuple = readonly [client: string, family: number, ip: string, expiresAt: number];

/** A lease as held: with the generation of the last load() that saw it. */
interface Held extends LiveLease {
  seen: number;
}

/** The leases of one address or network: almost always one, rarely several clients sharing it. */
type Holders = LiveLease | LiveLease[];

function anyLive(h: Holders | undefined, now: number): boolean {
  if (h === undefined) return false;
  if (!Array.isArray(h)) return h.expires_at > now;
  for (const l of h) if (l.expires_at > now) return true;
  return false;
}

/**
 * What the lookups read of the live leases: the one seam between the index
 * and Postfix, so a view that answers "no lease is live" (a host whose view
 * of the shared database is stale, runtime/freshness.ts) needs no `if` in
 * any lookup.
 */
export interface LiveView {
  /** True when a lease live at `now` covers the address. */
  covers(ip: Ip, now: number): boolean;
  /** The texts of the leases live at `now`, sorted and distinct; read-only. */
  liveTexts(now: number): readonly string[];
  /** True when every lease held is a single IPv4 address. */
  onlyIPv4Hosts(): boolean;
  /** How many leases are live at `now`. */
  liveCount(now: number): number;
}

/**
 * The live leases in memory, kept in step with state: lookups answer from
 * here (the policy service per RCPT, the map at each rebuild) instead of
 * reading the database. Rows are parsed again on the way in, so a row that
 * was tampered with in the database never reaches Postfix. One small object
 * per lease, keyed by strings the rows already hold: 100,000 leases must fit
 * a small server.
 */
export class LiveIndex implements LiveView {
  /** The lease of each client, one table per family. */
  private readonly v4 = new Map<string, Held>();
  private readonly v6 = new Map<string, Held>();
  /** Exact addresses (/32, /128) → the leases holding them. */
  private readonly exact = new Map<string, Holders>();
  /** Prefix leases by prefix length, then by network text. */
  private readonly prefixes = new Map<number, Map<string, Holders>>();
  /**
   * Every text held (the keys of exact and prefixes), sorted: the map's
   * lines, kept in step with each change so that a rebuild needs no sort
   * (25–46 ms at 100,000 leases). A change costs a binary search and a
   * splice (an address change 2 → 15 µs at 100,000, 1 → 2.4 µs at 10,000;
   * a plain renewal touches nothing here); bulk changes note the texts they
   * touched and are merged in one pass when the list is next read. Null
   * until a lookup first asks (liveTexts): the policy service never does,
   * and at 1,000,000 leases the list cost a sort at start and 8 MB.
   */
  private sorted: string[] | null = null;
  /** While set, put and remove leave `sorted` alone and note the texts they added or dropped in `touched`. */
  private bulk = false;
  private touched = new Set<string>();
  /**
   * No lease held expires before this (a lower bound, lowered by every put,
   * made exact by each full scan): while it lies ahead, every held text is
   * live and `sorted` is the map as it stands, with no per-lease check.
   */
  private floor = Infinity;
  /** Stamped on each lease put by load(), which then drops the leases it did not stamp. */
  private generation = 0;
  /**
   * While a paged load runs: the (family, client) keys changed by anything
   * else (a catch-up, this host's own grant or release). The load's rows for
   * them may have been read before that change, so they are skipped: a
   * revoke applied between two pages is not undone by a page read before it.
   */
  private changedDuringLoad: Set<string> | null = null;
  /** Set while the load itself puts or sweeps, so its own changes are not counted as another's. */
  private loadWriting = false;

  private byFamily(family: number): Map<string, Held> {
    return family === 4 ? this.v4 : this.v6;
  }

  /**
   * Makes the index hold exactly the given rows (tests, and stores that have
   * them at hand). Compared, not rebuilt: a lease already held as it is costs
   * one lookup.
   */
  load(rows: readonly IndexRow[]): void {
    const mark = ++this.generation;
    this.inBulk(() => {
      for (const r of rows) this.put(r);
    });
    this.sweep(mark);
  }

  /**
   * Makes the index hold exactly the rows of the pages (start, a full
   * reconcile), one page at a time: the event loop answers Postfix between
   * pages, and no more than a page of rows is in memory besides the index.
   * Changes made between pages (a catch-up, a renewal on this host) win over
   * the pages' rows for the same lease, and are kept. If a page cannot be
   * read, nothing is dropped: the index keeps what it held, with the rows
   * read so far. One load at a time (LeaseBook sees to it).
   */
  async loadPages(pages: AsyncIterable<readonly IndexTuple[]>): Promise<number> {
    const mark = ++this.generation;
    const changed = (this.changedDuringLoad = new Set());
    let n = 0;
    try {
      for await (const page of pages) {
        this.asLoad(() => {
          for (const r of page) if (changed.size === 0 || !changed.has(`${r[1]} ${r[0]}`)) this.putFields(r[0], r[1], r[2], r[3]);
        });
        n += page.length;
      }
      this.asLoad(() => this.sweep(mark));
    } finally {
      this.changedDuringLoad = null;
    }
    return n;
  }

  /** Runs the load's own changes, in bulk, without counting them as changed by another. */
  private asLoad(changes: () => void): void {
    this.loadWriting = true;
    try {
      this.inBulk(changes);
    } finally {
      this.loadWriting = false;
    }
  }

  /** Notes a change to (client, family) made outside a running load. */
  private changedOutsideLoad(client: string, family: number): void {
    if (this.changedDuringLoad !== null && !this.loadWriting) this.changedDuringLoad.add(`${family} ${client}`);
  }

  /** Drops every lease that no load since `mark` began has stamped. */
  private sweep(mark: number): void {
    this.inBulk(() => {
      for (const table of [this.v4, this.v6]) for (const l of table.values()) if (l.seen < mark) this.remove(l.client, l.family);
    });
  }

  /** Makes the named clients' leases exactly those among the rows (a catch-up from the change log): put what is there, drop what is not. */
  setClients(clients: readonly string[], rows: readonly IndexRow[]): void {
    const held = new Map<string, IndexRow[]>();
    for (const r of rows) held.set(r.client, [...(held.get(r.client) ?? []), r]);
    for (const client of clients) {
      const mine = held.get(client) ?? [];
      for (const family of [4, 6]) {
        const row = mine.find((r) => r.family === family);
        if (row) this.put(row);
        else this.remove(client, family);
      }
    }
  }

  /** Runs many changes without a splice each: the texts they touch are merged into `sorted` when it is next read. */
  private inBulk(changes: () => void): void {
    this.bulk = true;
    try {
      changes();
    } finally {
      this.bulk = false;
    }
  }

  /** A text was added to or dropped from the held set: keep `sorted` in step, now or (in bulk) when next read. */
  private touch(text: string, added: boolean): void {
    if (this.sorted === null) return;
    if (this.bulk) {
      this.touched.add(text);
      return;
    }
    const i = this.rank(text);
    if (added) this.sorted.splice(i, 0, text);
    else if (this.sorted[i] === text) this.sorted.splice(i, 1);
  }

  /**
   * The sorted texts held, built on first use and brought up to date with
   * the bulk changes since: each touched text is decided by whether it is
   * held now, so the order of the changes does not matter.
   */
  private sortedTexts(): string[] {
    if (this.sorted === null) {
      const all = [...this.exact.keys()];
      for (const table of this.prefixes.values()) for (const text of table.keys()) all.push(text);
      this.touched.clear();
      return (this.sorted = all.sort());
    }
    if (this.touched.size === 0) return this.sorted;
    const touched = this.touched;
    this.touched = new Set();
    const keep = this.sorted.filter((t) => !touched.has(t));
    const add = [...touched].filter((t) => this.holders(t) !== undefined).sort();
    const merged: string[] = new Array(keep.length + add.length);
    let i = 0;
    let j = 0;
    let k = 0;
    while (i < keep.length || j < add.length) merged[k++] = j >= add.length || (i < keep.length && keep[i]! < add[j]!) ? keep[i++]! : add[j++]!;
    return (this.sorted = merged);
  }

  /** Adds or replaces the lease of (client, family); a row whose address does not parse is skipped and logged. */
  put(row: IndexRow): void {
    this.putFields(row.client, row.family, row.ip, row.expires_at);
  }

  private putFields(client: string, family: number, ip: string, expiresAt: number): void {
    this.changedOutsideLoad(client, family);
    const table = this.byFamily(family);
    const held = table.get(client);
    // A plain renewal: same network, new expiry. Updated in place, since
    // re-inserting Map keys was the largest cost of a renewal at 10,000 leases.
    if (held && held.ip === ip) return this.renewHeld(held, expiresAt);
    const net = leaseTextOf(ip);
    if (!net || net.family !== family) {
      log.error(`state: lease of ${client} holds "${ip}", which is not a valid address or network; it is not published to Postfix`);
      this.remove(client, family);
      return;
    }
    // The database may spell an IPv6 network differently: the same network is still a plain renewal.
    if (held && held.ip === net.text) return this.renewHeld(held, expiresAt);
    this.remove(client, family);
    // net.text is ip itself when ip was written canonically: one string per address, not two.
    const lease: Held = { client, family, ip: net.text, expires_at: expiresAt, seen: this.generation };
    table.set(client, lease);
    if (lease.expires_at < this.floor) this.floor = lease.expires_at;
    const bucket = this.bucket(lease, true)!;
    const cur = bucket.get(lease.ip);
    bucket.set(lease.ip, cur === undefined ? lease : Array.isArray(cur) ? [...cur, lease] : [cur, lease]);
    if (cur === undefined) this.touch(lease.ip, true);
  }

  private renewHeld(held: Held, expiresAt: number): void {
    held.expires_at = expiresAt;
    held.seen = this.generation;
    if (expiresAt < this.floor) this.floor = expiresAt;
  }

  /** Where text is, or would go, in `sorted`. */
  private rank(text: string): number {
    let lo = 0;
    const sorted = this.sorted!;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid]! < text) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Drops the lease of (client, family), if any. */
  remove(client: string, family: number): void {
    this.changedOutsideLoad(client, family);
    const table = this.byFamily(family);
    const old = table.get(client);
    if (!old) return;
    table.delete(client);
    const bucket = this.bucket(old, false);
    const cur = bucket?.get(old.ip);
    if (!bucket || cur === undefined) return;
    const rest = Array.isArray(cur) ? cur.filter((l) => l !== old) : [];
    if (rest.length === 0) {
      bucket.delete(old.ip);
      this.touch(old.ip, false);
    } else bucket.set(old.ip, rest.length === 1 ? rest[0]! : rest);
    if (bucket.size === 0 && bucket !== this.exact) this.prefixes.delete(prefixOf(old.ip));
  }

  /** Drops every lease of a client (release, revoke). */
  removeClient(client: string): void {
    this.remove(client, 4);
    this.remove(client, 6);
  }

  private bucket(lease: LiveLease, create: boolean): Map<string, Holders> | undefined {
    if (!lease.ip.includes("/")) return this.exact;
    const prefix = prefixOf(lease.ip);
    let table = this.prefixes.get(prefix);
    if (!table && create) this.prefixes.set(prefix, (table = new Map()));
    return table;
  }

  /** The leases holding exactly this text. */
  private holders(text: string): Holders | undefined {
    return text.includes("/") ? this.prefixes.get(prefixOf(text))?.get(text) : this.exact.get(text);
  }

  /** True when a lease live at `now` covers the address: the one question Postfix asks. */
  covers(ip: Ip, now: number): boolean {
    if (anyLive(this.exact.get(ip.text), now)) return true;
    for (const [prefix, table] of this.prefixes) {
      const masked = maskText(ip, prefix);
      if (masked !== null && anyLive(table.get(masked), now)) return true;
    }
    return false;
  }

  /**
   * The leases live at `now` in their text form, sorted and de-duplicated
   * (the map's lines). Usually the index's own list, so it is read-only and
   * holds only until the next change; it is filtered (one pass over the
   * leases) only while a lease that is held may have expired.
   */
  liveTexts(now: number): readonly string[] {
    const sorted = this.sortedTexts();
    if (this.floor > now) return sorted;
    const expired = new Set(this.scan(now).due.map((l) => l.ip));
    // A text stays while another client's lease of it lives.
    for (const text of expired) if (anyLive(this.holders(text), now)) expired.delete(text);
    return expired.size ? sorted.filter((t) => !expired.has(t)) : sorted;
  }

  /** The leases held that are due at `now`, and the earliest expiry among the others (Infinity when none). */
  private scan(now: number): { due: LiveLease[]; next: number } {
    const due: LiveLease[] = [];
    let next = Infinity;
    for (const table of [this.v4, this.v6]) {
      for (const l of table.values()) {
        if (l.expires_at <= now) due.push(l);
        else if (l.expires_at < next) next = l.expires_at;
      }
    }
    return { due, next };
  }

  /** True when every lease held is a single IPv4 address (no IPv6, no prefix), which any lookup can hold as is. */
  onlyIPv4Hosts(): boolean {
    return this.v6.size === 0 && this.prefixes.size === 0;
  }

  /** How many leases are live at `now`. */
  liveCount(now: number): number {
    // Every held lease is live while the floor lies ahead: status and metrics ask often, and a count over 1,000,000 leases took 0.3 s.
    if (this.floor > now) return this.v4.size + this.v6.size;
    let n = 0;
    for (const table of [this.v4, this.v6]) for (const l of table.values()) if (l.expires_at > now) n++;
    return n;
  }

  /** Drops the leases due at `now` from this view alone (the store could not be reached to expire them); returns them. */
  dropExpired(now: number): LiveLease[] {
    if (this.floor > now) return [];
    const { due, next } = this.scan(now);
    this.inBulk(() => {
      for (const l of due) this.remove(l.client, l.family);
    });
    this.floor = next;
    return due;
  }

  /** The earliest expiry among the leases held, or null when there is none. */
  nextExpiry(): number | null {
    this.floor = this.scan(-Infinity).next;
    return this.floor === Infinity ? null : this.floor;
  }
}

/** The prefix length of a prefix lease's text (`NET/LEN`). */
function prefixOf(text: string): number {
  return Number(text.slice(text.indexOf("/") + 1));
}
