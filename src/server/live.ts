import { parseCidr, type Cidr, type Ip } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";
import type { LeaseRow } from "./state.ts";

/** One live lease as the lookups see it: who, which network, until when. */
export interface LiveLease {
  client: string;
  family: number;
  net: Cidr;
  /** The lease as stored, to tell a renewal of the same network from a move. */
  ip: string;
  expires_at: number;
}

const key = (client: string, family: number): string => `${family} ${client}`;

/**
 * The live leases in memory, kept in step with state: lookups answer from
 * here (the policy service per RCPT, the map at each rebuild) instead of
 * reading the database. Rows are parsed again on the way in, so a row that
 * was tampered with in the database never reaches Postfix.
 */
export class LiveIndex {
  private readonly byClient = new Map<string, LiveLease>();
  /** Exact addresses (/32, /128) → the leases holding them. */
  private readonly exact = new Map<string, Set<LiveLease>>();
  /** Prefix leases by prefix length, then by network text. */
  private readonly prefixes = new Map<number, Map<string, Set<LiveLease>>>();

  /** Replaces everything with the given rows (start, and after another process changed state). */
  load(rows: readonly LeaseRow[]): void {
    this.byClient.clear();
    this.exact.clear();
    this.prefixes.clear();
    for (const r of rows) this.put(r);
  }

  /** Adds or replaces the lease of (client, family); a row whose address does not parse is skipped and logged. */
  put(row: LeaseRow): void {
    const held = this.byClient.get(key(row.client, row.family));
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
    const lease: LiveLease = { client: row.client, family: row.family, ip: row.ip, net, expires_at: row.expires_at };
    this.byClient.set(key(row.client, row.family), lease);
    this.bucket(net, true)!.add(lease);
  }

  /** Drops the lease of (client, family), if any. */
  remove(client: string, family: number): void {
    const k = key(client, family);
    const old = this.byClient.get(k);
    if (!old) return;
    this.byClient.delete(k);
    const set = this.bucket(old.net, false);
    set?.delete(old);
    if (set && set.size === 0) this.dropBucket(old.net);
  }

  /** Drops every lease of a client (release, revoke). */
  removeClient(client: string): void {
    this.remove(client, 4);
    this.remove(client, 6);
  }

  private bucket(net: Cidr, create: boolean): Set<LiveLease> | undefined {
    const whole = net.prefix === (net.family === 4 ? 32 : 128);
    const text = whole ? net.text.slice(0, net.text.indexOf("/")) : net.text;
    let table = whole ? this.exact : this.prefixes.get(net.prefix);
    if (!table) {
      if (!create) return undefined;
      table = new Map();
      this.prefixes.set(net.prefix, table);
    }
    let set = table.get(text);
    if (!set && create) table.set(text, (set = new Set()));
    return set;
  }

  private dropBucket(net: Cidr): void {
    const whole = net.prefix === (net.family === 4 ? 32 : 128);
    if (whole) this.exact.delete(net.text.slice(0, net.text.indexOf("/")));
    else {
      const table = this.prefixes.get(net.prefix);
      table?.delete(net.text);
      if (table && table.size === 0) this.prefixes.delete(net.prefix);
    }
  }

  /** True when a lease live at `now` covers the address: the one question Postfix asks. */
  covers(ip: Ip, now: number): boolean {
    const live = (set: Set<LiveLease> | undefined): boolean => {
      if (set) for (const l of set) if (l.expires_at > now) return true;
      return false;
    };
    if (live(this.exact.get(ip.text))) return true;
    for (const [prefix, table] of this.prefixes) {
      const masked = maskText(ip, prefix);
      if (masked !== null && live(table.get(masked))) return true;
    }
    return false;
  }

  /** Networks with a lease live at `now`, sorted and de-duplicated (the map's lines). */
  liveNets(now: number): Cidr[] {
    const seen = new Map<string, Cidr>();
    for (const l of this.byClient.values()) if (l.expires_at > now) seen.set(l.net.text, l.net);
    return [...seen.keys()].sort().map((k) => seen.get(k)!);
  }

  /** How many leases are live at `now`. */
  liveCount(now: number): number {
    let n = 0;
    for (const l of this.byClient.values()) if (l.expires_at > now) n++;
    return n;
  }

  /** Drops the leases due at `now` from this view alone (the store could not be reached to expire them); returns them. */
  dropExpired(now: number): LiveLease[] {
    const due = [...this.byClient.values()].filter((l) => l.expires_at <= now);
    for (const l of due) this.remove(l.client, l.family);
    return due;
  }

  /** The earliest expiry among the leases held, or null when there is none. */
  nextExpiry(): number | null {
    let t: number | null = null;
    for (const l of this.byClient.values()) if (t === null || l.expires_at < t) t = l.expires_at;
    return t;
  }
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
