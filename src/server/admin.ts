import { loadServerConfig, MIN_IPV6_PREFIX, validateName, type ServerConfig } from "../lib/config.ts";
import { checkDuration, formatDuration } from "../lib/duration.ts";
import { ExitCode, formatError, RelayError, usageError } from "../lib/errors.ts";
import { leaseText, parseCidr, parseIp } from "../lib/ip.ts";
import { leaseNetwork } from "./service.ts";
import { certificateExpiry, certificatePin } from "../lib/tls.ts";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { LeaseBook } from "./leases.ts";
import { StateLock } from "./lock.ts";
import { certFor } from "./core.ts";
import { withoutServer } from "./runtime/sweep.ts";
import { statusPath, type ServerStatus } from "./runtime/status.ts";
import { lookupTypeOf, type InstalledView, type LookupName } from "./lookups/index.ts";
import type { AuditRow, ClientRow, LeaseRow } from "./state.ts";
import { systemClock } from "../lib/clock.ts";
import { storeClock, type Store, type StoreTx } from "./stores/index.ts";
import { openStore, storeKindOf } from "./stores/open.ts";
import { newToken } from "./tokens.ts";
import { AddressHistory, auditEntries, exportHeader, exportLines, type AddressView, type ExportFormat } from "./auditlog.ts";
import type { LeaseView } from "../lib/wire.ts";
import { allowListFromFlags, allowText, NO_ALLOW } from "./allow.ts";
import { expectedMs, judge, type OverdueState } from "./overdue.ts";

/** A client with its leases, as `server list` shows it. */
export interface ClientView {
  name: string;
  ttl: number;
  allow: string[];
  created_at: string;
  /** `renewals`: plain renewals since the lease was granted (kept on the lease, not in the audit log). */
  leases: (LeaseView & { renewals: number })[];
  /** The renewal interval it is judged by, in seconds: set with --expect, or learned from its renewals; null while unknown. */
  expect: number | null;
  expect_learned: boolean;
  /** Its last renewal and the address it held, kept after the lease expired; null when never seen. */
  last_seen: string | null;
  last_address: string | null;
  /** ok, late (missed two intervals) or silent (no live lease), as of now. */
  state: OverdueState;
}

/** Opens the store (SQLite or the shared database), runs fn, closes it: admin commands never keep state open. */
async function withStore<T>(config: ServerConfig, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStore(config, systemClock, { brief: true });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** The server certificate a client must trust: its file, its pin, and whether relayctl generated it (self-signed). */
export interface EnrollmentCert {
  path: string;
  pin: string;
  generated: boolean;
}

/**
 * The pin and the `relayctl client enroll ...` line for a client, with the
 * certificate behind the pin. The line reads the token from stdin (`--token -`):
 * pasted as printed, it keeps the token out of shell history and `ps`.
 */
async function enrollmentLine(config: ServerConfig, name: string): Promise<{ line: string; pin: string; cert: EnrollmentCert }> {
  const c = await certFor(config);
  const pin = certificatePin(c.certPem);
  return { line: `relayctl client enroll ${config.publicUrl} --name ${name} --token - --pin ${pin}`, pin, cert: { path: c.certPath, pin, generated: config.tlsCert === undefined } };
}

/**
 * Why hosts elsewhere may fail to reach the enrollment URL, or null: a host
 * name without a dot (public_url unset falls back to this host's short name)
 * resolves, if at all, only on the local network.
 */
export function publicUrlProblem(config: Pick<ServerConfig, "publicUrl" | "path">): string | null {
  const url = new URL(config.publicUrl);
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (host.includes(".") || parseIp(host)) return null;
  return `${config.publicUrl} names "${host}", a host name without a dot (public_url, or this host's name when it is unset): clients on other hosts cannot resolve it: set public_url = "https://${host}.example.org:${url.port || 443}" (this host's name in DNS) in ${config.path}`;
}

/**
 * Lease lifetime of a `--dyndns` client without `--ttl`: a day plus slack,
 * since Synology and OPNsense re-send only daily with an unchanged address.
 */
export const DYNDNS_TTL = 26 * 3600;

/**
 * Checks an IPv6 prefix length for a client: 48..128, and below 128 only
 * with a lookup that matches prefixes exactly (the map cannot).
 */
export function checkIpv6Prefix(config: ServerConfig, n: number): number {
  if (!Number.isInteger(n) || n < MIN_IPV6_PREFIX || n > 128) throw usageError(`--ipv6-prefix ${n}: must be a whole number from ${MIN_IPV6_PREFIX} to 128`, "64 covers one LAN with its privacy addresses");
  if (n < 128 && !lookupTypeOf(config).prefixes) {
    throw usageError(`--ipv6-prefix ${n}: lookup = "${config.lookup}" cannot express a /${n} lease exactly`, 'set lookup = "policy" in server.toml (and hook it into Postfix, see relayctl doctor) for prefix leases');
  }
  return n;
}

/** What `server add` or `server rotate` made: the enrollment line (token on stdin) and its parts, the client's ttl and the certificate to trust. */
export interface Added {
  line: string;
  token: string;
  /** Why clients elsewhere may not reach publicUrl (see publicUrlProblem), or null. */
  urlProblem: string | null;
  pin: string;
  /** The client's own ttl in seconds, or null for the server default. */
  ttl: number | null;
  cert: EnrollmentCert;
  publicUrl: string;
}

/** Creates a client and returns the enrollment line to paste on the client host; `dyndns` defaults the ttl to DYNDNS_TTL. */
export async function addClient(opts: { configPath?: string; name: string; ttl?: number; allow?: string[]; ipv6Prefix?: number; dyndns?: boolean; expect?: number }): Promise<Added> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  if (opts.expect !== undefined) checkDuration(opts.expect, "expect", "--expect");
  const allow = allowListFromFlags(opts.allow ?? []);
  if (opts.ttl !== undefined) checkDuration(opts.ttl, "ttl", "--ttl");
  const ttl = opts.ttl ?? (opts.dyndns ? DYNDNS_TTL : null);
  const ipv6Prefix = opts.ipv6Prefix === undefined ? null : checkIpv6Prefix(config, opts.ipv6Prefix);
  const t = newToken();
  // Certificate first: a client row whose enrollment line could not be printed would be useless.
  const { line, pin, cert } = await enrollmentLine(config, name);
  await withStore(config, (store) =>
    store.tx(async (x) => {
      if (await x.getClient(name)) {
        throw new RelayError(`client ${name} already exists`, { exitCode: ExitCode.USAGE, hint: `rotate its token (relayctl server rotate ${name}), or revoke it first` });
      }
      const now = Date.now();
      await x.insertClient({ name, token_id: t.tokenId, token_hash: t.hash, ttl, allow, created_at: now, ipv6_prefix: ipv6Prefix });
      if (opts.expect !== undefined) await x.setExpect(name, opts.expect);
      const detail = [allow.nets.length ? `allow ${allowText(allow)}` : "", ipv6Prefix !== null ? `ipv6-prefix /${ipv6Prefix}` : "", opts.dyndns ? "dyndns" : "", opts.expect !== undefined ? `expect ${formatDuration(opts.expect)}` : ""].filter(Boolean).join(", ");
      await x.audit({ ts: now, event: "add", client: name, ip: null, source: null, detail: detail || null });
    }),
  );
  return { line, token: t.token, urlProblem: publicUrlProblem(config), pin, ttl, cert, publicUrl: config.publicUrl };
}

/**
 * Gives a client a new token: the old one is refused from the next request
 * on, while the current lease stays until the client re-enrolls and renews.
 */
export async function rotateToken(opts: { configPath?: string; name: string }): Promise<Added> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const t = newToken();
  const { line, pin, cert } = await enrollmentLine(config, name);
  const ttl = await withStore(config, (store) =>
    store.tx(async (x) => {
      if (!(await x.setToken(name, t.tokenId, t.hash))) throw usageError(`no client named ${name}`, "see relayctl server list");
      await x.audit({ ts: Date.now(), event: "rotate", client: name, ip: null, source: null, detail: null });
      return (await x.getClient(name))!.ttl;
    }),
  );
  return { line, token: t.token, urlProblem: publicUrlProblem(config), pin, ttl, cert, publicUrl: config.publicUrl };
}

/** Lists clients and their current leases. */
export async function listClients(opts: { configPath?: string }): Promise<ClientView[]> {
  const config = loadServerConfig(opts.configPath);
  return withStore(config, async (store) => {
    const leases = new Map<string, LeaseRow[]>();
    for (const l of await store.allLeases()) leases.set(l.client, [...(leases.get(l.client) ?? []), l]);
    const iso = (ms: number): string => new Date(ms).toISOString();
    // The same rules the server's overdue check applies, at this moment.
    const now = storeClock(systemClock, store).now();
    const watched = new Map((await store.watched(true, now)).map((w) => [w.name, w]));
    return (await store.listClients()).map((c) => {
      const w = watched.get(c.name);
      const j = w ? judge(w, now) : { state: "ok" as const, last_seen: null, last_ip: null };
      const e = w ? expectedMs(w) : null;
      return {
      name: c.name,
      ttl: c.ttl ?? config.ttl,
      allow: c.allow.broken ? [allowText(c.allow)] : c.allow.nets.map((n) => n.text),
      created_at: iso(c.created_at),
      leases: (leases.get(c.name) ?? []).map((l) => ({ ip: l.ip, family: l.family, renewed_at: iso(l.renewed_at), expires_at: iso(l.expires_at), renewals: l.renewals })),
        expect: e && Math.round(e.ms / 1000),
        expect_learned: e?.learned ?? false,
        last_seen: j.last_seen === null ? null : iso(j.last_seen),
        last_address: j.last_ip,
        state: j.state,
      };
    });
  });
}

/**
 * Runs a state change and gets it into the map. A running server notices
 * the commit within a second (data_version, or the database's change
 * notice on every relay host) and rebuilds the map itself; with none
 * running here, the map is rebuilt here, under the same lock the server
 * takes, so the two never write it at once.
 */
async function changeState<T>(config: ServerConfig, change: (store: Store, leases: LeaseBook) => Promise<T>): Promise<{ result: T; mapUpdatedBy: "server" | "here" }> {
  const here = await withoutServer(config, (core) => change(core.store, core.leases));
  if (here) return { result: here.result, mapUpdatedBy: "here" };
  return { result: await withStore(config, (store) => change(store, new LeaseBook(store, () => config.ttl))), mapUpdatedBy: "server" };
}

/** Deletes a client and its leases; the map follows at once (see changeState). */
export async function revokeClient(opts: { configPath?: string; name: string }): Promise<{ removed: string[]; mapUpdatedBy: "server" | "here" }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const { result: gone, mapUpdatedBy } = await changeState(config, async (_store, leases) => {
    const gone = await leases.revoke(name, null);
    if (!gone) throw usageError(`no client named ${name}`, "see relayctl server list");
    return gone;
  });
  return { removed: gone.map((l) => l.ip), mapUpdatedBy };
}

/** What `server edit` changed: settings as `what old -> new`, leases dropped or cut short, and who updated the map. */
export interface EditResult {
  changes: string[];
  dropped: { ip: string; why: string }[];
  shortened: { ip: string; expires_at: string }[];
  mapUpdatedBy: "server" | "here";
}

/** Why a lease is no longer admitted by a client's allow list, or null when it still is. */
function refusedBy(client: ClientRow, ip: string, ipv6Prefix: number): string | null {
  const net = parseCidr(ip);
  if (!net) return `"${ip}" is not a valid address or network`;
  try {
    // The same rule a renewal applies, with the leased network's first address as the one observed.
    const now = leaseText(leaseNetwork(client, { family: net.family, bytes: net.bytes, text: ip.split("/")[0]! }, undefined, ipv6Prefix));
    return now === ip ? null : `the client's leases are now ${now.includes("/") ? `/${ipv6Prefix} prefixes` : "single addresses"}`;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Changes a client's ttl and allow list in place, keeping its token. A lease
 * outside the new allow list is dropped now; one that would outlive the new
 * ttl is cut to end a ttl from now. Either way the next renewal follows the
 * new settings. An empty allow list admits only the address the client
 * connects from, which only a renewal can tell, so clearing keeps leases.
 */
export async function editClient(opts: { configPath?: string; name: string; ttl?: number; allow?: string[]; clearAllow?: boolean; ipv6Prefix?: number; expect?: number; clearExpect?: boolean }): Promise<EditResult> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  if (opts.ttl !== undefined) checkDuration(opts.ttl, "ttl", "--ttl");
  if (opts.expect !== undefined) checkDuration(opts.expect, "expect", "--expect");
  if (opts.expect !== undefined && opts.clearExpect) throw usageError("--expect and --clear-expect do not go together", "--expect sets the interval; --clear-expect goes back to learning it from renewals");
  const given = opts.allow ?? [];
  if (opts.clearAllow && given.length) throw usageError("--allow and --clear-allow do not go together", "--allow replaces the whole list; --clear-allow empties it");
  const expect = opts.clearExpect ? null : opts.expect;
  if (opts.ttl === undefined && !given.length && !opts.clearAllow && opts.ipv6Prefix === undefined && expect === undefined) {
    throw usageError("nothing to change", "give --ttl D, --allow CIDR (repeatable), --clear-allow, --ipv6-prefix N, --expect D or --clear-expect");
  }
  const ipv6Prefix = opts.ipv6Prefix === undefined ? undefined : checkIpv6Prefix(config, opts.ipv6Prefix);
  const allow = opts.clearAllow ? NO_ALLOW : given.length ? allowListFromFlags(given) : undefined;
  const { result, mapUpdatedBy } = await changeState(config, (store) =>
    store.tx(async (t: StoreTx) => {
      const before = await t.getClient(name);
      if (!before) throw usageError(`no client named ${name}`, "see relayctl server list");
      const after: ClientRow = { ...before, ttl: opts.ttl ?? before.ttl, allow: allow ?? before.allow, ipv6_prefix: ipv6Prefix ?? before.ipv6_prefix };
      const changes: string[] = [];
      const shownTtl = (t: number | null) => (t === null ? `default (${formatDuration(config.ttl)})` : formatDuration(t));
      if (after.ttl !== before.ttl) changes.push(`ttl ${shownTtl(before.ttl)} -> ${shownTtl(after.ttl)}`);
      if (after.allow.stored !== before.allow.stored) changes.push(`allow ${allowText(before.allow)} -> ${allowText(after.allow)}`);
      const shownPrefix = (p: number | null) => (p === null ? `default (/${config.ipv6Prefix})` : `/${p}`);
      if (after.ipv6_prefix !== before.ipv6_prefix) changes.push(`ipv6-prefix ${shownPrefix(before.ipv6_prefix)} -> ${shownPrefix(after.ipv6_prefix)}`);
      const dropped: EditResult["dropped"] = [];
      const shortened: EditResult["shortened"] = [];
      const shownExpect = (e: number | null | undefined) => (e == null ? "learned" : formatDuration(e));
      // The interval changes nothing a lease is admitted by: set on its own, no lease is looked at.
      if (expect !== undefined && expect !== (before.expect ?? null)) {
        await t.setExpect(name, expect);
        changes.push(`expect ${shownExpect(before.expect)} -> ${shownExpect(expect)}`);
      }
      if (!changes.length) return { changes, dropped, shortened };
      await t.updateClient(name, after.ttl, after.allow, after.ipv6_prefix);
      // The store's clock, as renewals use: PostgreSQL's now(), not this admin host's clock.
      const now = t.now;
      const latest = now + (after.ttl ?? config.ttl) * 1000;
      for (const l of await t.leasesOf(name)) {
        const prefix = after.ipv6_prefix ?? config.ipv6Prefix;
        const why = after.allow.stored === before.allow.stored && after.ipv6_prefix === before.ipv6_prefix ? null : refusedBy(after, l.ip, prefix);
        if (why) {
          await t.deleteLeasesOf(name, l.family);
          dropped.push({ ip: l.ip, why });
        } else if (l.expires_at > latest) {
          await t.setLeaseExpiry(name, l.family, latest);
          shortened.push({ ip: l.ip, expires_at: new Date(latest).toISOString() });
        }
      }
      const detail = [...changes, ...dropped.map((d) => `dropped ${d.ip}: ${d.why}`), ...shortened.map((x) => `${x.ip} now expires ${x.expires_at}`)];
      await t.audit({ ts: now, event: "edit", client: name, ip: dropped.map((d) => d.ip).join(" ") || null, source: null, detail: detail.join("; ") });
      return { changes, dropped, shortened };
    }),
  );
  return { ...result, mapUpdatedBy };
}

/** One audit entry as `server log` shows it: the row without its id, the time in ISO 8601. */
export type AuditView = Omit<AuditRow, "id" | "ts"> & { ts: string };

/** Reads the audit log, oldest first: grants, renewals, refusals and the rest, optionally for one client and a recent span. */
export async function readAuditLog(opts: { configPath?: string; client?: string; sinceSeconds?: number; limit?: number }): Promise<AuditView[]> {
  const config = loadServerConfig(opts.configPath);
  const client = opts.client === undefined ? undefined : validateName(opts.client, "--client");
  const since = opts.sinceSeconds === undefined ? 0 : Date.now() - opts.sinceSeconds * 1000;
  const rows: AuditRow[] = await withStore(config, (store) => store.auditLog({ client, since, limit: opts.limit }));
  return rows.reverse().map((r) => ({ ts: new Date(r.ts).toISOString(), event: r.event, client: r.client, ip: r.ip, source: r.source, detail: r.detail, count: r.count }));
}

/** The start of what `server log --export` and `--addresses` read: --since, never further back than audit_retention. */
function auditSince(config: ServerConfig, sinceSeconds: number | undefined, now: number): number {
  const retained = now - config.auditRetention * 1000;
  return sinceSeconds === undefined ? retained : Math.max(retained, now - sinceSeconds * 1000);
}

/**
 * Streams the audit log, oldest first, as CSV or JSON Lines to `write`,
 * a page at a time (a large log is never held whole); returns how many
 * entries went out.
 */
export async function exportAuditLog(opts: { configPath?: string; client?: string; sinceSeconds?: number; format: ExportFormat; write: (chunk: string) => Promise<void> }): Promise<number> {
  const config = loadServerConfig(opts.configPath);
  const client = opts.client === undefined ? null : validateName(opts.client, "--client");
  return withStore(config, async (store) => {
    let n = 0;
    await opts.write(exportHeader(opts.format));
    for await (const page of auditEntries(store, client, auditSince(config, opts.sinceSeconds, Date.now()))) {
      await opts.write(exportLines(page, opts.format));
      n += page.length;
    }
    return n;
  });
}

/** The addresses a client held within audit_retention (or --since), most recent first: a view over the audit log and its live leases. */
export async function readAddressHistory(opts: { configPath?: string; client: string; sinceSeconds?: number }): Promise<AddressView[]> {
  const config = loadServerConfig(opts.configPath);
  const client = validateName(opts.client, "--client");
  return withStore(config, async (store) => {
    const now = Date.now();
    const history = new AddressHistory();
    for await (const page of auditEntries(store, client, auditSince(config, opts.sinceSeconds, now))) history.add(page);
    history.addLeases(await store.leasesOfClients([client]), now);
    return history.rows();
  });
}

/** What `server status` reports; `status` is the running server's own account. */
export interface StatusView {
  running: boolean;
  /** Running and nothing degraded or frozen: `server status` exits 0 only then. */
  healthy: boolean;
  public_url: string;
  cert: { path: string; pin: string; expires_at: string; days_left: number } | null;
  lookup: LookupName;
  /** The map Postfix reads (lookup = "map"), read from its database, with entries no live lease backs. */
  map: NonNullable<InstalledView["map"]> | null;
  /** The policy socket (lookup = "policy"). */
  policy: NonNullable<InstalledView["policy"]> | null;
  clients: number;
  leases: number;
  /** Where state lives: "sqlite" in state_dir, or the shared PostgreSQL database (URL without password). */
  state: { kind: "sqlite" | "postgres"; where: string };
  /** Why state could not be read (the shared database is down), or null. */
  state_error: string | null;
  status: ServerStatus | null;
}

/** Gathers status from the lock, status.json, the certificate file, the installed lookup and the state. */
export async function serverStatus(opts: { configPath?: string }): Promise<StatusView> {
  const config = loadServerConfig(opts.configPath);
  const running = StateLock.isHeld(config.stateDir);
  let status: ServerStatus | null = null;
  if (running && existsSync(statusPath(config.stateDir))) status = JSON.parse(readFileSync(statusPath(config.stateDir), "utf8")) as ServerStatus;
  const certPath = config.tlsCert ?? join(config.stateDir, "tls", "cert.pem");
  let cert: StatusView["cert"] = null;
  if (existsSync(certPath)) {
    const pem = readFileSync(certPath, "utf8");
    const expires = certificateExpiry(pem);
    cert = { path: certPath, pin: certificatePin(pem), expires_at: expires.toISOString(), days_left: Math.floor((expires.getTime() - Date.now()) / 86_400_000) };
  }
  const now = Date.now();
  let stateError: string | null = null;
  // A database outage is what status is asked about, not a reason to fail: report it.
  const { counts, rows } = await withStore(config, async (store) => ({ counts: await store.counts(), rows: await store.allLeases() })).catch((err) => {
    stateError = formatError(err);
    return { counts: { clients: 0, leases: 0 }, rows: [] as LeaseRow[] };
  });
  const installed = await lookupTypeOf(config).installed(config, { leases: rows, now, running });
  const map = installed.map ?? null;
  const policy = installed.policy ?? null;
  const live = rows.filter((l) => l.expires_at > now).length;
  const healthy = running && stateError === null && (status?.degraded.length ?? 0) === 0 && (map?.frozen.entries ?? 0) === 0;
  const kind = storeKindOf(config);
  const state = { kind: kind.name, where: kind.where(config) };
  return { running, healthy, state, state_error: stateError, public_url: config.publicUrl, cert, lookup: config.lookup, map, policy, clients: counts.clients, leases: live, status };
}
