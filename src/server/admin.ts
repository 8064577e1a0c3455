import { loadServerConfig, validateName, type ServerConfig } from "../lib/config.ts";
import { checkDuration, formatDuration } from "../lib/duration.ts";
import { ExitCode, RelayError, usageError } from "../lib/errors.ts";
import { parseCidr, parseIp } from "../lib/ip.ts";
import { leaseAddress } from "./http.ts";
import { certificateExpiry, certificatePin } from "../lib/tls.ts";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { LeaseBook } from "./leases.ts";
import { StateLock } from "./lock.ts";
import { certFor, openCore, resolveMap, statusPath, type ServerStatus } from "./server.ts";
import { StateStore, type AuditRow, type ClientRow, type LeaseRow } from "./state.ts";
import { newToken } from "./tokens.ts";

/** A client with its leases, as `server list` shows it. */
export interface ClientView {
  name: string;
  ttl: number;
  allow: string[];
  created_at: string;
  leases: { ip: string; family: number; renewed_at: string; expires_at: string }[];
}

/** Opens the store, runs fn, closes it: admin commands never keep state open. */
function withStore<T>(config: ServerConfig, fn: (store: StateStore) => T): T {
  const store = new StateStore(config.stateDir);
  try {
    return fn(store);
  } finally {
    store.close();
  }
}

/** The pin and the `relayctl client enroll ...` line for a client and token. */
async function enrollmentLine(config: ServerConfig, name: string, token: string): Promise<{ line: string; pin: string }> {
  const pin = certificatePin((await certFor(config)).certPem);
  return { line: `relayctl client enroll ${config.publicUrl} --name ${name} --token ${token} --pin ${pin}`, pin };
}

/** Normalises --allow entries, refusing anything but an address or a CIDR network with zero host bits. */
function parseAllow(entries: string[]): string[] {
  return entries.map((c) => {
    const net = parseCidr(c);
    if (!net) throw usageError(`--allow ${c}: not an address or CIDR network with zero host bits`, "use e.g. --allow 198.51.100.0/24");
    return net.text;
  });
}

/** Creates a client and returns the enrollment line to paste on the client host. */
export async function addClient(opts: { configPath?: string; name: string; ttl?: number; allow?: string[] }): Promise<{ line: string; token: string; pin: string }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const allow = parseAllow(opts.allow ?? []);
  if (opts.ttl !== undefined) checkDuration(opts.ttl, "ttl", "--ttl");
  const t = newToken();
  // Certificate first: a client row whose enrollment line could not be printed would be useless.
  const { line, pin } = await enrollmentLine(config, name, t.token);
  withStore(config, (store) =>
    store.tx(() => {
      if (store.getClient(name)) {
        throw new RelayError(`client ${name} already exists`, { exitCode: ExitCode.USAGE, hint: `rotate its token (relayctl server rotate ${name}), or revoke it first` });
      }
      const now = Date.now();
      store.insertClient({ name, token_id: t.tokenId, token_hash: t.hash, ttl: opts.ttl ?? null, allow: JSON.stringify(allow), created_at: now });
      store.audit({ ts: now, event: "add", client: name, ip: null, source: null, detail: allow.length ? `allow ${allow.join(" ")}` : null });
    }),
  );
  return { line, token: t.token, pin };
}

/**
 * Gives a client a new token: the old one is refused from the next request
 * on, while the current lease stays until the client re-enrolls and renews.
 */
export async function rotateToken(opts: { configPath?: string; name: string }): Promise<{ line: string; token: string; pin: string }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const t = newToken();
  const { line, pin } = await enrollmentLine(config, name, t.token);
  withStore(config, (store) =>
    store.tx(() => {
      const changed = store.db.query("UPDATE clients SET token_id = ?, token_hash = ? WHERE name = ?").run(t.tokenId, t.hash, name).changes;
      if (!changed) throw usageError(`no client named ${name}`, "see relayctl server list");
      store.audit({ ts: Date.now(), event: "rotate", client: name, ip: null, source: null, detail: null });
    }),
  );
  return { line, token: t.token, pin };
}

/** Lists clients and their current leases. */
export function listClients(opts: { configPath?: string }): ClientView[] {
  const config = loadServerConfig(opts.configPath);
  return withStore(config, (store) => {
    const leases = new Map<string, LeaseRow[]>();
    for (const l of store.allLeases()) leases.set(l.client, [...(leases.get(l.client) ?? []), l]);
    const iso = (ms: number): string => new Date(ms).toISOString();
    return store.listClients().map((c) => ({
      name: c.name,
      ttl: c.ttl ?? config.ttl,
      allow: JSON.parse(c.allow) as string[],
      created_at: iso(c.created_at),
      leases: (leases.get(c.name) ?? []).map((l) => ({ ip: l.ip, family: l.family, renewed_at: iso(l.renewed_at), expires_at: iso(l.expires_at) })),
    }));
  });
}

/**
 * Runs a state change and gets it into the map. A running server notices
 * the commit within a second (data_version) and rebuilds the map itself;
 * with none running, the map is rebuilt here, under the same lock the
 * server takes, so the two never write it at once.
 */
async function changeState<T>(config: ServerConfig, change: (store: StateStore, leases: LeaseBook) => T): Promise<{ result: T; mapUpdatedBy: "server" | "here" }> {
  const lock = StateLock.tryAcquire(config.stateDir);
  if (!lock) return { result: withStore(config, (store) => change(store, new LeaseBook(store, () => config.ttl))), mapUpdatedBy: "server" };
  const core = await openCore(config).catch((err) => {
    lock.release();
    throw err;
  });
  try {
    const result = change(core.store, core.leases);
    await core.map.sync();
    return { result, mapUpdatedBy: "here" };
  } finally {
    core.store.close();
    lock.release();
  }
}

/** Deletes a client and its leases; the map follows at once (see changeState). */
export async function revokeClient(opts: { configPath?: string; name: string }): Promise<{ removed: string[]; mapUpdatedBy: "server" | "here" }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const { result: gone, mapUpdatedBy } = await changeState(config, (_store, leases) => {
    const gone = leases.revoke(name, null);
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

/** Why a lease's address is no longer admitted by a client's allow list, or null when it still is. */
function refusedBy(client: ClientRow, ip: string): string | null {
  try {
    // The same rule a renewal applies, with the leased address as the one observed.
    leaseAddress(client, parseIp(ip)!, undefined);
    return null;
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
export async function editClient(opts: { configPath?: string; name: string; ttl?: number; allow?: string[]; clearAllow?: boolean }): Promise<EditResult> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  if (opts.ttl !== undefined) checkDuration(opts.ttl, "ttl", "--ttl");
  const given = opts.allow ?? [];
  if (opts.clearAllow && given.length) throw usageError("--allow and --clear-allow do not go together", "--allow replaces the whole list; --clear-allow empties it");
  if (opts.ttl === undefined && !given.length && !opts.clearAllow) throw usageError("nothing to change", "give --ttl D, --allow CIDR (repeatable) or --clear-allow");
  const allow = opts.clearAllow ? [] : given.length ? parseAllow(given) : undefined;
  const { result, mapUpdatedBy } = await changeState(config, (store) =>
    store.tx(() => {
      const before = store.getClient(name);
      if (!before) throw usageError(`no client named ${name}`, "see relayctl server list");
      const after: ClientRow = { ...before, ttl: opts.ttl ?? before.ttl, allow: allow === undefined ? before.allow : JSON.stringify(allow) };
      const changes: string[] = [];
      const shownTtl = (t: number | null) => (t === null ? `default (${formatDuration(config.ttl)})` : formatDuration(t));
      if (after.ttl !== before.ttl) changes.push(`ttl ${shownTtl(before.ttl)} -> ${shownTtl(after.ttl)}`);
      const shownAllow = (a: string) => (JSON.parse(a) as string[]).join(" ") || "(none)";
      if (after.allow !== before.allow) changes.push(`allow ${shownAllow(before.allow)} -> ${shownAllow(after.allow)}`);
      const dropped: EditResult["dropped"] = [];
      const shortened: EditResult["shortened"] = [];
      if (!changes.length) return { changes, dropped, shortened };
      store.db.query("UPDATE clients SET ttl = ?, allow = ? WHERE name = ?").run(after.ttl, after.allow, name);
      const now = Date.now();
      const latest = now + (after.ttl ?? config.ttl) * 1000;
      for (const l of store.leasesOf(name)) {
        const why = after.allow === before.allow ? null : refusedBy(after, l.ip);
        if (why) {
          store.db.query("DELETE FROM leases WHERE client = ? AND family = ?").run(name, l.family);
          dropped.push({ ip: l.ip, why });
        } else if (l.expires_at > latest) {
          store.db.query("UPDATE leases SET expires_at = ? WHERE client = ? AND family = ?").run(latest, name, l.family);
          shortened.push({ ip: l.ip, expires_at: new Date(latest).toISOString() });
        }
      }
      const detail = [...changes, ...dropped.map((d) => `dropped ${d.ip}: ${d.why}`), ...shortened.map((x) => `${x.ip} now expires ${x.expires_at}`)];
      store.audit({ ts: now, event: "edit", client: name, ip: dropped.map((d) => d.ip).join(" ") || null, source: null, detail: detail.join("; ") });
      return { changes, dropped, shortened };
    }),
  );
  return { ...result, mapUpdatedBy };
}

/** One audit entry as `server log` shows it. */
export interface AuditView {
  ts: string;
  event: string;
  client: string | null;
  ip: string | null;
  source: string | null;
  detail: string | null;
}

/** Reads the audit log, oldest first: grants, renewals, refusals and the rest, optionally for one client and a recent span. */
export function readAuditLog(opts: { configPath?: string; client?: string; sinceSeconds?: number; limit?: number }): AuditView[] {
  const config = loadServerConfig(opts.configPath);
  const client = opts.client === undefined ? undefined : validateName(opts.client, "--client");
  const since = opts.sinceSeconds === undefined ? 0 : Date.now() - opts.sinceSeconds * 1000;
  const rows: AuditRow[] = withStore(config, (store) => store.auditLog({ client, since, limit: opts.limit }));
  return rows.reverse().map((r) => ({ ts: new Date(r.ts).toISOString(), event: r.event, client: r.client, ip: r.ip, source: r.source, detail: r.detail }));
}

/** What `server status` reports; `status` is the running server's own account. */
export interface StatusView {
  running: boolean;
  public_url: string;
  cert: { path: string; pin: string; expires_at: string; days_left: number } | null;
  map: { path: string; type: string; entries: number };
  clients: number;
  leases: number;
  status: ServerStatus | null;
}

/** Gathers status from the lock, status.json, the certificate file, the map and the state. */
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
  const type = status?.map.type ?? config.mapType ?? (await resolveMap(config).then((m) => m.type, () => "hash"));
  const entries = existsSync(config.map) ? readFileSync(config.map, "utf8").split("\n").filter((l) => l && !l.startsWith("#")).length : 0;
  const counts = withStore(config, (store) => store.counts());
  return { running, public_url: config.publicUrl, cert, map: { path: config.map, type, entries }, ...counts, status };
}
