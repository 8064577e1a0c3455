import { leaseText, parseCidr } from "../lib/ip.ts";

/**
 * Overdue rules: whether a client renews as often as it should. Pure
 * functions of what the store holds and the time; the housekeeping chore
 * (runtime/watchdog.ts) and `server list` both decide with these.
 */

/** What the store records of a client: ok, late (missed two intervals) or silent (no live lease). */
export type OverdueState = "ok" | "late" | "silent";
/** A change of state, as alerts name it: "back" is late or silent -> ok. */
export type OverdueEvent = "late" | "silent" | "back";

export const OVERDUE_STATES: readonly OverdueState[] = ["ok", "late", "silent"];

/** One lease's renewal facts (times in ms). */
export interface SeenLease {
  ip: string;
  granted_at: number;
  renewed_at: number;
  expires_at: number;
  renewals: number;
}

/** A client as the overdue rules see it: its setting, its recorded state and its leases (expired ones not yet pruned included). */
export interface Watched {
  name: string;
  /** `--expect` in seconds, or null to learn the interval from renewals. */
  expect: number | null;
  /** The state last recorded (and alerted). */
  state: OverdueState;
  /** Last renewal and address kept on the client row (at prune time and at transitions), for when the lease is gone. */
  last_seen: number | null;
  last_ip: string | null;
  leases: SeenLease[];
}

/** A learned interval shorter than this counts as this: two quick renewals by hand must not make a client late within seconds. */
export const MIN_LEARNED_MS = 60_000;
/** Intervals missed before a client is late. */
export const LATE_AFTER_INTERVALS = 2;

/** A client's expected renewal interval in ms: --expect, else learned from its newest lease, else null (unknown: never late, only silent). */
export function expectedMs(c: Pick<Watched, "expect" | "leases">): { ms: number; learned: boolean } | null {
  if (c.expect !== null) return { ms: c.expect * 1000, learned: false };
  const l = newest(c.leases);
  if (!l || l.renewals < 1) return null;
  return { ms: Math.max(MIN_LEARNED_MS, Math.round((l.renewed_at - l.granted_at) / l.renewals)), learned: true };
}

function newest(leases: SeenLease[]): SeenLease | undefined {
  let best: SeenLease | undefined;
  for (const l of leases) if (!best || l.renewed_at > best.renewed_at) best = l;
  return best;
}

/** What a client is now: its state, when and from where it was last seen. */
export interface Judged {
  state: OverdueState;
  last_seen: number | null;
  last_ip: string | null;
}

/**
 * The state at `now`: silent without a live lease (when it was ever seen),
 * late when its newest renewal is more than two expected intervals old,
 * else ok. A client never seen is ok: it has not started, not stopped.
 */
export function judge(c: Watched, now: number): Judged {
  const l = newest(c.leases);
  const fromLease = l && (c.last_seen === null || l.renewed_at >= c.last_seen);
  const last_seen = fromLease ? l.renewed_at : c.last_seen;
  const last_ip = fromLease ? l.ip : c.last_ip;
  const live = c.leases.filter((x) => x.expires_at > now);
  if (!live.length) return { state: last_seen === null ? "ok" : "silent", last_seen, last_ip };
  const e = expectedMs(c);
  const renewed = newest(live)!.renewed_at;
  return { state: e !== null && now - renewed > LATE_AFTER_INTERVALS * e.ms ? "late" : "ok", last_seen, last_ip };
}

/** The event a move from `from` to `to` raises, or null when nothing changed. */
export function eventOf(from: OverdueState, to: OverdueState): OverdueEvent | null {
  if (from === to) return null;
  return to === "ok" ? "back" : to;
}

/** Reads a state column strictly: anything else (a hand edit) counts as ok, so it is judged afresh. */
export function parseState(v: unknown): OverdueState {
  return (OVERDUE_STATES as readonly unknown[]).includes(v) ? (v as OverdueState) : "ok";
}

/**
 * Folds rows of clients LEFT JOIN leases (name, expect, overdue_state,
 * last_seen, last_ip and the lease's ip, granted_at, renewed_at, expires_at,
 * renewals; times in ms) into one Watched per client, in row order.
 */
export function foldWatched(rows: Record<string, unknown>[]): Watched[] {
  const out = new Map<string, Watched>();
  // Addresses are parsed, never passed on as read: they end up in alert mails and environment variables.
  const ip = (v: unknown): string | null => {
    const net = v === null || v === undefined ? null : parseCidr(String(v));
    return net ? leaseText(net) : null;
  };
  const num = (v: unknown): number | null => (v === null || v === undefined ? null : Math.round(Number(v)));
  for (const r of rows) {
    const name = String(r.name);
    let w = out.get(name);
    if (!w) {
      w = { name, expect: num(r.expect), state: parseState(r.overdue_state), last_seen: num(r.last_seen), last_ip: ip(r.last_ip), leases: [] };
      out.set(name, w);
    }
    const leased = ip(r.ip);
    if (leased !== null) {
      w.leases.push({ ip: leased, granted_at: num(r.granted_at)!, renewed_at: num(r.renewed_at)!, expires_at: num(r.expires_at)!, renewals: Number(r.renewals) });
    }
  }
  return [...out.values()];
}
