import { leaseText, parseCidr } from "../lib/ip.ts";
import type { AuditRow, LeaseRow, Store } from "./stores/index.ts";

/** Rows one page of a streamed read holds: memory stays bounded whatever the log's size. */
export const AUDIT_PAGE = 5_000;

/** Every audit entry of `client` (all when null) at or after `since`, oldest first, read a page at a time. */
export async function* auditEntries(store: Store, client: string | null, since: number): AsyncGenerator<AuditRow[]> {
  for (let after = 0; ; ) {
    const page = await store.auditPage({ client, since, after, limit: AUDIT_PAGE });
    if (!page.length) return;
    yield page;
    if (page.length < AUDIT_PAGE) return;
    after = page[page.length - 1]!.id;
  }
}

/** The columns of `server log --export`, in order: the same names as `server log --json`, plus the entry's id. */
export const EXPORT_COLUMNS = ["id", "ts", "event", "client", "ip", "source", "count", "detail"] as const;
export type ExportFormat = "jsonl" | "csv";
export const EXPORT_FORMATS: readonly ExportFormat[] = ["jsonl", "csv"];

/** One entry as exported: the time in ISO 8601, every column present (null when unset). */
function exported(r: AuditRow): Record<(typeof EXPORT_COLUMNS)[number], string | number | null> {
  return { id: r.id, ts: new Date(r.ts).toISOString(), event: r.event, client: r.client, ip: r.ip, source: r.source, count: r.count, detail: r.detail };
}

/** One CSV field as RFC 4180 writes it: quoted, with quotes doubled, when it holds a comma, a quote or a line break; null is empty. */
export function csvField(v: string | number | null): string {
  if (v === null) return "";
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** The header line of a CSV export (CRLF-terminated, as RFC 4180 says), or nothing for JSON Lines. */
export function exportHeader(format: ExportFormat): string {
  return format === "csv" ? EXPORT_COLUMNS.join(",") + "\r\n" : "";
}

/** A page of entries as export text: CSV records (CRLF) or one JSON object a line. */
export function exportLines(rows: readonly AuditRow[], format: ExportFormat): string {
  let out = "";
  for (const r of rows) {
    const e = exported(r);
    out += format === "csv" ? EXPORT_COLUMNS.map((c) => csvField(e[c])).join(",") + "\r\n" : JSON.stringify(e) + "\n";
  }
  return out;
}

/** One address a client held, as `server log --addresses` shows it. */
export interface AddressView {
  /** The leased address, or network as CIDR (IPv6 prefix leases). */
  address: string;
  /** The earliest time the audit log (kept for audit_retention) or the live lease shows it held. */
  first_seen: string;
  /** The last renewal of a live lease; for an ended one, when it ended (release, expiry, new address, revoke, edit). */
  last_seen: string;
  /** How often it was granted (a new lease or a new address) in that span. */
  grants: number;
  /** True while a live lease holds it. */
  live: boolean;
}

/** Events whose ip column names addresses a client held; grants and new addresses start a holding. */
const STARTS = new Set(["grant", "replace"]);
const ENDS = new Set(["release", "expire", "revoke", "edit"]);

/**
 * Folds a client's audit entries (oldest first) and live leases into one row
 * per address. The audit log has a row for every change of address (grant,
 * replace with the old one in its detail, release, expire, revoke, edit)
 * and none for a plain renewal, so this is a view: nothing is written for it.
 * Every address is parsed as it leaves the database; one that does not parse is left out.
 */
export class AddressHistory {
  private readonly seen = new Map<string, { first: number; last: number; grants: number; live: boolean }>();

  /** Takes one page of entries. */
  add(rows: Iterable<AuditRow>): void {
    for (const r of rows) {
      if (!r.ip || !(STARTS.has(r.event) || ENDS.has(r.event))) continue;
      for (const text of r.ip.split(" ")) this.note(text, r.ts, STARTS.has(r.event));
      // "was ADDR": the address a replace moved away from ended then.
      const was = r.event === "replace" ? /^was (\S+)$/.exec(r.detail ?? "")?.[1] : undefined;
      if (was) this.note(was, r.ts, false);
    }
  }

  /** The live leases: their grant time and last renewal. */
  addLeases(leases: readonly LeaseRow[], now: number): void {
    for (const l of leases) {
      if (l.expires_at <= now) continue;
      const h = this.note(l.ip, l.granted_at, false);
      if (!h) continue;
      h.last = Math.max(h.last, l.renewed_at);
      h.live = true;
    }
  }

  private note(text: string, ts: number, grant: boolean) {
    const net = parseCidr(text);
    if (!net) return null;
    const key = leaseText(net);
    let h = this.seen.get(key);
    if (!h) this.seen.set(key, (h = { first: ts, last: ts, grants: 0, live: false }));
    h.first = Math.min(h.first, ts);
    h.last = Math.max(h.last, ts);
    if (grant) h.grants++;
    return h;
  }

  /** One row per address: live ones first, then the most recently seen. */
  rows(): AddressView[] {
    return [...this.seen.entries()]
      .sort(([, a], [, b]) => Number(b.live) - Number(a.live) || b.last - a.last)
      .map(([address, h]) => ({ address, first_seen: new Date(h.first).toISOString(), last_seen: new Date(h.last).toISOString(), grants: h.grants, live: h.live }));
  }
}
