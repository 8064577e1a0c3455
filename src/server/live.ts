import { parseCidr, type Cidr, type Ip } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";
import type { LeaseRow } from "./state.ts";

/** One live lease as the lookups see it: who, which network (as text), until when. */
export interface LiveLease {
  client: string;
  family: number;
  /** The lease in its canonical text: the bare address, or `NET/LEN` for a prefix. */
  ip: string;
  expires_at: number;
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
 * The live leases in memory, kept in step with state: lookups answer from
 * here (the policy service per RCPT, the map at each rebuild) instead of
 * reading the database. Rows are parsed again on the way in, so a row that
 * was tampered with in the database never reaches Postfix. One small object
 * per lease, keyed by strings the rows already hold: 100,000 leases must fit
 * a small server.
 */
export class LiveIndex {
  /** The lease of each client, one table per family. */
  private readonly v4 = new Map<string, LiveLease>();
  private readonly v6 = new Map<string, LiveLease>();
  /** Exact addresses (/32, /128) → the leases holding them. */
  private readonly exact = new Map<string, Holders>();
  /** Prefix leases by prefix length, then by network text. */
  private readonly prefixes = new Map<number, Map<string, Holders>>();

  private byFamily(family: number): Map<string, LiveLease> {
    return family === 4 ? this.v4 : this.v6;
  }

  /** Replaces everything with the given rows (start, and after another process changed state). */
  load(rows: readonly LeaseRow[]): void {
    this.v4.clear();
    this.v6.clear();
    this.exact.clear();
    this.prefixes.clear();
    for (const r of rows) this.put(r);
  }

  /** Adds or replaces the lease of (client, family); a row whose address does not parse is skipped and logged. */
  put(row: LeaseRow): void {
    const table = this.byFamily(row.family);
    const held = table.get(row.client);
    // A plain renewal: same network, new expiry. Updated in place, since
    // re-inserting Map keys was the largest cost of a renewal at 10,000 leases.
    if (held && held.ip === row.ip) {
      held.expires_at = row.expires_at;
      return;
    }
    const net = parseCidr(row.ip);
    if (!net || net.family !== row.family) {
      log.error(`state: lease of ${row.client} holds "${row.ip}", which is not a valid address or network; it is not published to Postfix`);
      this.remove(row.client, row.family);
      return;
    }
    this.remove(row.client, row.family);
    const text = leaseText(net);
    const lease: LiveLease = { client: row.client, family: row.family, ip: text === row.ip ? row.ip : text, expires_at: row.expires_at };
    table.set(row.client, lease);
    const bucket = this.bucket(lease, true)!;
    const cur = bucket.get(lease.ip);
    bucket.set(lease.ip, cur === undefined ? lease : Array.isArray(cur) ? [...cur, lease] : [cur, lease]);
  }

  /** Drops the lease of (client, family), if any. */
  remove(client: string, family: number): void {
    const table = this.byFamily(family);
    const old = table.get(client);
    if (!old) return;
    table.delete(client);
    const bucket = this.bucket(old, false);
    const cur = bucket?.get(old.ip);
    if (!bucket || cur === undefined) return;
    const rest = Array.isArray(cur) ? cur.filter((l) => l !== old) : [];
    if (rest.length === 0) bucket.delete(old.ip);
    else bucket.set(old.ip, rest.length === 1 ? rest[0]! : rest);
    if (bucket.size === 0 && bucket !== this.exact) this.prefixes.delete(prefixOf(old));
  }

  /** Drops every lease of a client (release, revoke). */
  removeClient(client: string): void {
    this.remove(client, 4);
    this.remove(client, 6);
  }

  private bucket(lease: LiveLease, create: boolean): Map<string, Holders> | undefined {
    if (!lease.ip.includes("/")) return this.exact;
    const prefix = prefixOf(lease);
    let table = this.prefixes.get(prefix);
    if (!table && create) this.prefixes.set(prefix, (table = new Map()));
    return table;
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

  /** The leases live at `now` in their text form, sorted and de-duplicated (the map's lines). */
  liveTexts(now: number): string[] {
    const seen = new Set<string>();
    for (const table of [this.v4, this.v6]) for (const l of table.values()) if (l.expires_at > now) seen.add(l.ip);
    return [...seen].sort();
  }

  /** How many leases are live at `now`. */
  liveCount(now: number): number {
    let n = 0;
    for (const table of [this.v4, this.v6]) for (const l of table.values()) if (l.expires_at > now) n++;
    return n;
  }

  /** Drops the leases due at `now` from this view alone (the store could not be reached to expire them); returns them. */
  dropExpired(now: number): LiveLease[] {
    const due = [...this.v4.values(), ...this.v6.values()].filter((l) => l.expires_at <= now);
    for (const l of due) this.remove(l.client, l.family);
    return due;
  }

  /** The earliest expiry among the leases held, or null when there is none. */
  nextExpiry(): number | null {
    let t: number | null = null;
    for (const table of [this.v4, this.v6]) for (const l of table.values()) if (t === null || l.expires_at < t) t = l.expires_at;
    return t;
  }
}

/** The prefix length of a prefix lease's text (`NET/LEN`). */
function prefixOf(lease: LiveLease): number {
  return Number(lease.ip.slice(lease.ip.indexOf("/") + 1));
}

/** The text a lease is stored and shown as: the bare address for a single host, `NET/LEN` for a prefix. */
export function leaseText(net: Cidr): string {
  return net.prefix === (net.family === 4 ? 32 : 128) ? net.text.slice(0, net.text.indexOf("/")) : net.text;
}

/** The network text `ADDR/prefix` that ip falls in, for a prefix-length lookup; null when families differ. */
export function maskText(ip: Ip, prefix: number): string | null {
  const max = ip.family === 4 ? 32 : 128;
  if (prefix > max) return null;
  const bytes = new Uint8Array(ip.bytes);
  for (let bit = prefix; bit < max; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return parseCidr(`${formatBytes(ip.family, bytes)}/${prefix}`)?.text ?? null;
}

function formatBytes(family: 4 | 6, bytes: Uint8Array): string {
  if (family === 4) return Array.from(bytes).join(".");
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return words.join(":");
}
