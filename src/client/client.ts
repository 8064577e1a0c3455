import { accessSync, constants, existsSync, readFileSync, readSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { FileLock } from "../lib/lock.ts";
import { log } from "../lib/logging.ts";
import { loadClientConfig, renderClientConfig, validateHttpsUrl, validateName, DEFAULT_CLIENT_CONFIG, type ClientConfig } from "../lib/configfile.ts";
import { ExitCode, RelayError, usageError } from "../lib/errors.ts";
import { apiFailure, createApi, isTlsTrouble } from "../lib/http.ts";
import { writeFileAtomic } from "../lib/fsutil.ts";
import { cidrContains, parseCidr, parseIp, specialAddressKind } from "../lib/ip.ts";
import { parsePin, verifiedPeerChain } from "../lib/pin.ts";

/** The server's answer to a lease request, and its view of this client (the wire types both ends share). */
export type { LeaseAnswerBody as LeaseAnswer, LeaseStatusBody as LeaseStatus } from "../lib/wire.ts";
import type { LeaseAnswerBody as LeaseAnswer, LeaseStatusBody as LeaseStatus, ReleaseBody } from "../lib/wire.ts";

async function call<T>(cfg: Pick<ClientConfig, "server" | "token" | "pin" | "serverCert">, path: string, init: { method: "GET" | "POST" | "DELETE"; body?: unknown }, retries?: number): Promise<T> {
  const api = await createApi({ server: cfg.server, token: cfg.token, pin: cfg.pin, serverCert: cfg.serverCert, retries });
  try {
    return (await api(path, init as never)) as T;
  } catch (err) {
    // The saved chain no longer verifies: fetch the live one, which names the pin mismatch exactly.
    if (cfg.pin && cfg.serverCert && isTlsTrouble(err)) await verifiedPeerChain(new URL(cfg.server), cfg.pin);
    throw await apiFailure(err, cfg.server);
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

/**
 * Loads the client config, saying "permission denied" when it exists but this
 * user cannot read it (it is root's, mode 0600), rather than "no client config".
 */
export function readClientConfig(path?: string): ClientConfig {
  const file = path ?? DEFAULT_CLIENT_CONFIG;
  try {
    accessSync(file, constants.R_OK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EACCES") {
      throw new RelayError(`permission denied reading ${file}`, {
        exitCode: ExitCode.USAGE,
        hint: "it holds the token and is readable by root only: run relayctl client as root (sudo), or enroll this user with --config",
      });
    }
  }
  return loadClientConfig(path);
}

/** Renews (or first grants) this host's lease; `ip` names an address other than the observed one. */
export async function renewLease(opts: { configPath?: string; ip?: string }): Promise<LeaseAnswer> {
  const cfg = readClientConfig(opts.configPath);
  let body: { ip: string } | undefined;
  if (opts.ip !== undefined) {
    const ip = parseIp(opts.ip);
    if (!ip) throw usageError(`--ip ${opts.ip}: not a single IPv4 or IPv6 address`);
    body = { ip: ip.text };
  }
  return withRunLock(opts.configPath, () => call<LeaseAnswer>(cfg, "/v1/lease", { method: "POST", body }));
}

/** Releases every lease this client holds. */
export async function releaseLease(opts: { configPath?: string }): Promise<ReleaseBody> {
  const cfg = readClientConfig(opts.configPath);
  return withRunLock(opts.configPath, () => call(cfg, "/v1/lease", { method: "DELETE" }));
}

/** Shows what the server knows of this client (no change). */
export async function leaseStatus(opts: { configPath?: string }): Promise<LeaseStatus> {
  const cfg = readClientConfig(opts.configPath);
  return call(cfg, "/v1/lease", { method: "GET" });
}

/** A token as `relayctl server add` prints it: printable ASCII without spaces. */
const TOKEN_RE = /^[\x21-\x7e]{1,200}$/;

/** Checks a token's shape, naming where it came from (`--token`, `--token-file F`, stdin). */
export function checkToken(token: string, where: string): string {
  if (!TOKEN_RE.test(token)) {
    const what = token === "" ? "is empty" : /\s/.test(token) ? "holds more than one word or line" : "is not a token";
    throw usageError(`${where}: ${what}`, "give the token from the `token:` line `relayctl server add` printed, and nothing else");
  }
  return token;
}

/**
 * Reads one line from stdin: on a terminal, after asking on stderr, so that
 * pasting the enrollment line and then the token is all it takes; from a
 * pipe or file, the first line.
 */
export function readTokenLine(name = "this client"): string {
  const tty = process.stdin.isTTY === true;
  if (tty) process.stderr.write(`token for ${name} (the token: line relayctl server add printed): `);
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(256);
  // A terminal returns each line as typed; stop at the first newline or end of input, bounded.
  for (let total = 0; total < 4096; ) {
    const n = readSync(0, buf, 0, buf.length, null);
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
    total += n;
    if (buf.subarray(0, n).includes(10)) break;
  }
  return Buffer.concat(chunks).toString("utf8").split("\n")[0]!;
}

/**
 * The token for enroll from exactly one of `--token T`, `--token -` (stdin:
 * the token alone or the `token: T` line as printed) or `--token-file F`, so
 * it can stay out of shell history and `ps`. Errors name the source.
 */
export function readToken(opts: { token?: string; tokenFile?: string; name?: string; stdin?: () => string }): string {
  if (opts.token !== undefined && opts.tokenFile !== undefined) throw usageError("--token and --token-file do not go together", "give the token one way");
  if (opts.tokenFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(opts.tokenFile, "utf8");
    } catch (err) {
      throw usageError(`cannot read --token-file ${opts.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, "put the token printed by `relayctl server add` in that file");
    }
    return checkToken(text.trim(), `--token-file ${opts.tokenFile}`);
  }
  if (opts.token === "-") {
    const line = (opts.stdin ?? (() => readTokenLine(opts.name)))().trim();
    return checkToken(line.replace(/^token:\s*/, ""), "--token - (stdin)");
  }
  if (opts.token === undefined) throw usageError("no token", "give --token - (then the token on stdin), --token-file FILE or --token TOKEN");
  return checkToken(opts.token, "--token");
}

// Addresses a relay client is rarely seen from directly: the server then usually
// sees a proxy or NAT, and Postfix will see something else again.
const PRIVATE_NETS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"];

/**
 * Why the address the server sees would not work as this client's lease, or
 * null: a loopback-like address the server refuses without an allow list, or a
 * private one that is usually a proxy's or NAT's.
 */
export function seenAddressProblem(seen: string): string | null {
  const ip = parseIp(seen);
  if (!ip) return null;
  const kind = specialAddressKind(ip);
  if (kind) {
    return `the server sees this host as ${seen}, a ${kind} address: it refuses to lease that unless this client's allow list names it (relayctl server add --allow); if the server sits behind a proxy, list it in trusted_proxies`;
  }
  // Parsed here rather than at load: only enrollment asks, and every cron run loads this module.
  if (PRIVATE_NETS.some((n) => cidrContains(parseCidr(n)!, ip))) {
    return `the server sees this host as ${seen}, a private address: relaying works only if Postfix sees this host at that same address; if the server sits behind a proxy or NAT, list it in trusted_proxies or lease the public address with --allow and --ip`;
  }
  return null;
}

/** Checks server, pin and token, then writes the client config with mode 0600. */
export async function enroll(opts: { url: string; name: string; token: string; pin?: string; configPath?: string; force?: boolean }): Promise<{ path: string; status: LeaseStatus }> {
  const server = validateHttpsUrl(opts.url, "server URL");
  const name = validateName(opts.name, "--name");
  checkToken(opts.token, "--token");
  const pin = opts.pin === undefined ? undefined : parsePin(opts.pin);
  const path = opts.configPath ?? DEFAULT_CLIENT_CONFIG;
  // With a pin, fetch and check the chain once here and save it: later runs skip that handshake.
  const serverCert = pin === undefined ? undefined : await verifiedPeerChain(new URL(server), pin);
  const status = await call<LeaseStatus>({ server, token: opts.token, pin, serverCert }, "/v1/lease", { method: "GET" }, 0);
  if (status.client !== name) {
    throw new RelayError(`the token belongs to client ${status.client}, not ${name}`, { exitCode: ExitCode.REFUSED, hint: "paste the enrollment line exactly as printed" });
  }
  const problem = seenAddressProblem(status.ip);
  if (problem) log.warn(problem);
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
