import { existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { FileLock } from "../lib/lock.ts";
import { log } from "../lib/logging.ts";
import { loadClientConfig, renderClientConfig, validateHttpsUrl, validateName, DEFAULT_CLIENT_CONFIG, type ClientConfig } from "../lib/config.ts";
import { ExitCode, RelayError, usageError } from "../lib/errors.ts";
import { apiError, createApi, isTlsTrouble } from "../lib/http.ts";
import { writeFileAtomic } from "../lib/fsutil.ts";
import { parseIp } from "../lib/ip.ts";
import { parsePin, verifiedPeerChain } from "../lib/tls.ts";

/** The server's answer to a lease request. */
export interface LeaseAnswer {
  client: string;
  ip: string;
  expires_at: string;
  ttl: number;
  event?: string;
}

/** The server's view of this client: the address it sees and current leases. */
export interface LeaseStatus {
  client: string;
  ip: string;
  ttl: number;
  leases: { ip: string; family: number; renewed_at: string; expires_at: string }[];
}

async function call<T>(cfg: Pick<ClientConfig, "server" | "token" | "pin" | "serverCert">, path: string, init: { method: "GET" | "POST" | "DELETE"; body?: unknown }, retries?: number): Promise<T> {
  const api = await createApi({ server: cfg.server, token: cfg.token, pin: cfg.pin, serverCert: cfg.serverCert, retries });
  try {
    return (await api(path, init as never)) as T;
  } catch (err) {
    // The saved chain no longer verifies: fetch the live one, which names the pin mismatch exactly.
    if (cfg.pin && cfg.serverCert && isTlsTrouble(err)) await verifiedPeerChain(new URL(cfg.server), cfg.pin);
    throw apiError(err, cfg.server);
  }
}

/** How long a run waits for an overlapping one (cron firing while the last run still retries). */
const RUN_LOCK_WAIT_MS = 30_000;

/**
 * Runs fn holding a lock beside the client config, so two overlapping runs
 * take turns instead of racing each other's release and renewal.
 */
export async function withRunLock<T>(configPath: string | undefined, fn: () => Promise<T>): Promise<T> {
  const cfg = configPath ?? DEFAULT_CLIENT_CONFIG;
  const path = join(dirname(cfg), `.${basename(cfg)}.lock`);
  let lock: FileLock | null;
  try {
    lock = await FileLock.acquireWithin(path, RUN_LOCK_WAIT_MS);
  } catch (err) {
    // A read-only config directory must not stop renewals; only the overlap guard is lost.
    log.debug(`no run lock at ${path}: ${(err as Error).message}`);
    return fn();
  }
  if (!lock) {
    throw new RelayError(`another relayctl client run has held ${path} for ${RUN_LOCK_WAIT_MS / 1000}s`, {
      hint: "a previous run is stuck retrying; check the network, or run the client less often",
    });
  }
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

/** Renews (or first grants) this host's lease; `ip` names an address other than the observed one. */
export async function renewLease(opts: { configPath?: string; ip?: string }): Promise<LeaseAnswer> {
  const cfg = loadClientConfig(opts.configPath);
  let body: { ip: string } | undefined;
  if (opts.ip !== undefined) {
    const ip = parseIp(opts.ip);
    if (!ip) throw usageError(`--ip ${opts.ip}: not a single IPv4 or IPv6 address`);
    body = { ip: ip.text };
  }
  return withRunLock(opts.configPath, () => call<LeaseAnswer>(cfg, "/v1/lease", { method: "POST", body }));
}

/** Releases every lease this client holds. */
export async function releaseLease(opts: { configPath?: string }): Promise<{ client: string; released: string[] }> {
  const cfg = loadClientConfig(opts.configPath);
  return withRunLock(opts.configPath, () => call(cfg, "/v1/lease", { method: "DELETE" }));
}

/** Shows what the server knows of this client (no change). */
export async function leaseStatus(opts: { configPath?: string }): Promise<LeaseStatus> {
  const cfg = loadClientConfig(opts.configPath);
  return call(cfg, "/v1/lease", { method: "GET" });
}

/** Checks server, pin and token, then writes the client config with mode 0600. */
export async function enroll(opts: { url: string; name: string; token: string; pin?: string; configPath?: string; force?: boolean }): Promise<{ path: string; status: LeaseStatus }> {
  const server = validateHttpsUrl(opts.url, "server URL");
  const name = validateName(opts.name, "--name");
  if (!/^[\x21-\x7e]{1,200}$/.test(opts.token)) throw usageError("--token: not a token", "copy the whole line printed by `relayctl server add`");
  const pin = opts.pin === undefined ? undefined : parsePin(opts.pin);
  const path = opts.configPath ?? DEFAULT_CLIENT_CONFIG;
  // With a pin, fetch and check the chain once here and save it: later runs skip that handshake.
  const serverCert = pin === undefined ? undefined : await verifiedPeerChain(new URL(server), pin);
  const status = await call<LeaseStatus>({ server, token: opts.token, pin, serverCert }, "/v1/lease", { method: "GET" }, 0);
  if (status.client !== name) {
    throw new RelayError(`the token belongs to client ${status.client}, not ${name}`, { exitCode: ExitCode.REFUSED, hint: "paste the enrollment line exactly as printed" });
  }
  if (existsSync(path) && !opts.force) {
    const old = (() => {
      try {
        return loadClientConfig(path);
      } catch {
        return undefined;
      }
    })();
    // Re-running the same enrollment line is harmless; silently replacing another enrollment is not.
    if (old && (old.server !== server || old.name !== name)) {
      throw usageError(`${path} already holds an enrollment for ${old.name} at ${old.server}`, "add --force to replace it, or pass --config for a second one");
    }
  }
  writeFileAtomic(path, renderClientConfig({ server, name, token: opts.token, pin, serverCert }), { mode: 0o600, mkdirMode: 0o750 });
  return { path, status };
}
