import { loadServerConfig, MIN_IPV6_PREFIX, MIN_TTL, validateName, type ServerConfig } from "../lib/config.ts";
import { ExitCode, RelayError, usageError } from "../lib/errors.ts";
import { parseCidr } from "../lib/ip.ts";
import { certificateExpiry, certificatePin } from "../lib/tls.ts";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { LeaseBook } from "./leases.ts";
import { StateLock } from "./lock.ts";
import { certFor } from "./server.ts";
import { withoutServer } from "./runtime/sweep.ts";
import { statusPath, type ServerStatus } from "./runtime/status.ts";
import { lookupTypeOf, type LookupName } from "./lookups/index.ts";
import { frozenEntries, installedKeys, resolveMap, type Frozen } from "./lookups/map.ts";
import { mapDbSuffix } from "./postfix.ts";
import { StateStore, type AuditRow, type LeaseRow } from "./state.ts";
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

/** Creates a client and returns the enrollment line to paste on the client host. */
export async function addClient(opts: { configPath?: string; name: string; ttl?: number; allow?: string[]; ipv6Prefix?: number }): Promise<{ line: string; token: string; pin: string }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const allow = (opts.allow ?? []).map((c) => {
    const net = parseCidr(c);
    if (!net) throw usageError(`--allow ${c}: not an address or CIDR network with zero host bits`, "use e.g. --allow 198.51.100.0/24");
    return net.text;
  });
  if (opts.ttl !== undefined && opts.ttl < MIN_TTL) throw usageError(`--ttl must be at least ${MIN_TTL}s`);
  const ipv6Prefix = opts.ipv6Prefix === undefined ? null : checkIpv6Prefix(config, opts.ipv6Prefix);
  const t = newToken();
  // Certificate first: a client row whose enrollment line could not be printed would be useless.
  const { line, pin } = await enrollmentLine(config, name, t.token);
  withStore(config, (store) =>
    store.tx(() => {
      if (store.getClient(name)) {
        throw new RelayError(`client ${name} already exists`, { exitCode: ExitCode.USAGE, hint: `rotate its token (relayctl server rotate ${name}), or revoke it first` });
      }
      const now = Date.now();
      store.insertClient({ name, token_id: t.tokenId, token_hash: t.hash, ttl: opts.ttl ?? null, allow: JSON.stringify(allow), created_at: now, ipv6_prefix: ipv6Prefix });
      const detail = [allow.length ? `allow ${allow.join(" ")}` : "", ipv6Prefix !== null ? `ipv6-prefix /${ipv6Prefix}` : ""].filter(Boolean).join(", ");
      store.audit({ ts: now, event: "add", client: name, ip: null, source: null, detail: detail || null });
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
      if (!store.setToken(name, t.tokenId, t.hash)) throw usageError(`no client named ${name}`, "see relayctl server list");
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
 * Deletes a client and its leases. A running server notices within a second
 * and rebuilds the map; with no server running, the map is rebuilt here,
 * under the same lock the server takes, so the two never write it at once.
 */
export async function revokeClient(opts: { configPath?: string; name: string }): Promise<{ removed: string[]; mapUpdatedBy: "server" | "here" }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const revoke = (leases: LeaseBook): string[] => {
    const gone = leases.revoke(name, null);
    if (!gone) throw usageError(`no client named ${name}`, "see relayctl server list");
    return gone.map((l) => l.ip);
  };
  const here = await withoutServer(config, (core) => revoke(core.leases));
  if (here) return { removed: here.result, mapUpdatedBy: "here" };
  return { removed: withStore(config, (store) => revoke(new LeaseBook(store, () => config.ttl))), mapUpdatedBy: "server" };
}

/** One audit entry as `server log` shows it. */
export interface AuditView {
  ts: string;
  event: string;
  client: string | null;
  ip: string | null;
  source: string | null;
  detail: string | null;
  /** How often it happened: a burst of refusals from one source is one entry. */
  count: number;
}

/** Reads the audit log, oldest first: grants, renewals, refusals and the rest, optionally for one client and a recent span. */
export function readAuditLog(opts: { configPath?: string; client?: string; sinceSeconds?: number; limit?: number }): AuditView[] {
  const config = loadServerConfig(opts.configPath);
  const client = opts.client === undefined ? undefined : validateName(opts.client, "--client");
  const since = opts.sinceSeconds === undefined ? 0 : Date.now() - opts.sinceSeconds * 1000;
  const rows: AuditRow[] = withStore(config, (store) => store.auditLog({ client, since, limit: opts.limit }));
  return rows.reverse().map((r) => ({ ts: new Date(r.ts).toISOString(), event: r.event, client: r.client, ip: r.ip, source: r.source, detail: r.detail, count: r.count }));
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
  map: { path: string; type: string; entries: number; frozen: Frozen } | null;
  /** The policy socket (lookup = "policy"). */
  policy: { socket: string; listening: boolean } | null;
  clients: number;
  leases: number;
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
  const { counts, rows } = withStore(config, (store) => ({ counts: store.counts(), rows: store.allLeases() }));
  let map: StatusView["map"] = null;
  let policy: StatusView["policy"] = null;
  if (config.lookup === "map") {
    const m = await resolveMap(config).catch(() => null);
    const type = m?.type ?? config.mapType ?? "hash";
    const keys = m ? await installedKeys(m) : null;
    const dbPath = config.map + mapDbSuffix(type);
    const installedAt = existsSync(dbPath) ? statSync(dbPath).mtimeMs : now;
    map = { path: config.map, type, entries: keys?.length ?? 0, frozen: frozenEntries(keys ?? [], rows, now, installedAt) };
  } else {
    policy = { socket: config.policySocket, listening: running && existsSync(config.policySocket) };
  }
  const live = rows.filter((l) => l.expires_at > now).length;
  const healthy = running && (status?.degraded.length ?? 0) === 0 && (map?.frozen.entries ?? 0) === 0;
  return { running, healthy, public_url: config.publicUrl, cert, lookup: config.lookup, map, policy, clients: counts.clients, leases: live, status };
}
