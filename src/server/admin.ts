import { loadServerConfig, validateName, type ServerConfig } from "../lib/config.ts";
import { checkDuration } from "../lib/duration.ts";
import { ExitCode, RelayError, usageError } from "../lib/errors.ts";
import { parseCidr } from "../lib/ip.ts";
import { certificateExpiry, certificatePin } from "../lib/tls.ts";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { LeaseBook } from "./leases.ts";
import { StateLock } from "./lock.ts";
import { certFor, openCore, resolveMap, statusPath, type ServerStatus } from "./server.ts";
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

/** Creates a client and returns the enrollment line to paste on the client host. */
export async function addClient(opts: { configPath?: string; name: string; ttl?: number; allow?: string[] }): Promise<{ line: string; token: string; pin: string }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const allow = (opts.allow ?? []).map((c) => {
    const net = parseCidr(c);
    if (!net) throw usageError(`--allow ${c}: not an address or CIDR network with zero host bits`, "use e.g. --allow 198.51.100.0/24");
    return net.text;
  });
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
 * Deletes a client and its leases. A running server notices within a second
 * and rebuilds the map; with no server running, the map is rebuilt here,
 * under the same lock the server takes, so the two never write it at once.
 */
export async function revokeClient(opts: { configPath?: string; name: string }): Promise<{ removed: string[]; mapUpdatedBy: "server" | "here" }> {
  const config = loadServerConfig(opts.configPath);
  const name = validateName(opts.name);
  const lock = StateLock.tryAcquire(config.stateDir);
  if (!lock) {
    const gone = withStore(config, (store) => new LeaseBook(store, () => config.ttl).revoke(name, null));
    if (!gone) throw usageError(`no client named ${name}`, "see relayctl server list");
    return { removed: gone.map((l) => l.ip), mapUpdatedBy: "server" };
  }
  const core = await openCore(config).catch((err) => {
    lock.release();
    throw err;
  });
  try {
    const gone = core.leases.revoke(name, null);
    if (!gone) throw usageError(`no client named ${name}`, "see relayctl server list");
    await core.map.sync();
    return { removed: gone.map((l) => l.ip), mapUpdatedBy: "here" };
  } finally {
    core.store.close();
    lock.release();
  }
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
