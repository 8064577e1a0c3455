import { existsSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { ExitCode, RelayError, usageError } from "./errors.ts";
import { parseDuration, type DurationSetting } from "./duration.ts";
import { parseCidr, parseIp, type Cidr } from "./ip.ts";
import { SERVER_KEY_NAMES } from "./schema.ts";

export const DEFAULT_SERVER_CONFIG = "/etc/relayctl/server.toml";
export const DEFAULT_CLIENT_CONFIG = "/etc/relayctl/client.toml";
export const MAP_TYPES = ["hash", "lmdb", "btree", "cdb"] as const;
export type MapType = (typeof MAP_TYPES)[number];
/** Widest IPv6 prefix lease: a /48 is a whole site. */
export const MIN_IPV6_PREFIX = 48;
const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** Effective server settings after defaults; map_type stays undefined until postconf is asked. */
export interface ServerConfig {
  path: string;
  listen: { host: string; port: number };
  publicUrl: string;
  stateDir: string;
  tlsCert?: string;
  tlsKey?: string;
  map: string;
  mapType?: MapType;
  ttl: number;
  postmap?: string;
  trustedProxies: Cidr[];
  renewalsPerMinute: number;
  postmapTimeout: number;
  metricsAllow: Cidr[];
  logFormat: "text" | "json";
  logLevel: LogLevel;
  auditRetention: number;
  /** How Postfix asks: the postmap map (default) or the policy service. */
  lookup: "map" | "policy";
  policySocket: string;
  /** Default prefix length of IPv6 leases (128 = the address alone). */
  ipv6Prefix: number;
  /** Shared PostgreSQL state (`postgres://...`); undefined = SQLite in state_dir. */
  database?: string;
  /** A 0600 file holding the database password, when the URL has none. */
  databasePasswordFile?: string;
  /** `file:line: database_password_file`, for errors raised when the file is read. */
  databasePasswordWhere?: string;
}

export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** What `relayctl client enroll` writes and `relayctl client` reads. */
export interface ClientConfig {
  path: string;
  server: string;
  name: string;
  token: string;
  pin?: string;
  /** The pinned server's certificate chain, saved at enrollment so a run needs one TLS handshake, not two. */
  serverCert?: string;
}

/** Checks a client name against `[a-z0-9][a-z0-9._-]{0,62}`. */
export function validateName(name: unknown, where = "name"): string {
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw usageError(`${where}: "${String(name)}" is not a valid client name`, "use 1-63 characters: a-z 0-9 . _ - starting with a letter or digit");
  }
  return name;
}

/** Parses `HOST:PORT`, `[V6]:PORT` or `:PORT` (all addresses, dual-stack). */
export function parseListen(value: string, where = "listen"): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]*|[a-z0-9.-]+)):([0-9]{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : 0;
  if (!m || port < 1 || port > 65535) throw usageError(`${where}: "${value}" is not HOST:PORT`, 'use e.g. "[::]:8443" or "0.0.0.0:8443"');
  const host = m[1] ?? (m[2] || "::");
  if (m[1] !== undefined && !parseIp(m[1])) throw usageError(`${where}: "${value}" has an invalid IPv6 address`);
  return { host, port };
}

/** Finds the line a key is set on, so errors can point at it. */
function lineOf(text: string, key: string): number | undefined {
  const re = new RegExp(`^\\s*${key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*=`);
  const idx = text.split("\n").findIndex((l) => re.test(l));
  return idx === -1 ? undefined : idx + 1;
}

/** Reads and parses a TOML file; a missing default file yields `{}` (built-in defaults). */
function readToml(path: string, required: boolean): { data: Record<string, unknown>; text: string } {
  if (!existsSync(path)) {
    if (required) throw usageError(`config file ${path} not found`, "pass --config PATH or create it");
    return { data: {}, text: "" };
  }
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw usageError(`cannot read ${path}: ${(err as Error).message}`, "check the file's owner and mode");
  }
  try {
    return { data: Bun.TOML.parse(text) as Record<string, unknown>, text };
  } catch (err) {
    throw usageError(`${path}: invalid TOML: ${(err as Error).message}`);
  }
}

/** Typed access to TOML keys that names file, key and line in every error. */
class Keys {
  constructor(
    private readonly path: string,
    private readonly text: string,
    private readonly data: Record<string, unknown>,
    allowed: readonly string[],
  ) {
    for (const key of Object.keys(data)) {
      if (!allowed.includes(key)) throw this.error(key, `unknown key "${key}"`, `known keys: ${allowed.join(", ")}`);
    }
  }

  where(key: string): string {
    const line = lineOf(this.text, key);
    return `${this.path}${line ? `:${line}` : ""}: ${key}`;
  }

  error(key: string, message: string, hint?: string): RelayError {
    return usageError(`${this.where(key)}: ${message}`, hint);
  }

  str(key: string): string | undefined {
    const v = this.data[key];
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v === "") throw this.error(key, "must be a non-empty string");
    return v;
  }

  /** A duration within its bounds in DURATION_LIMITS, where the key names its row. */
  duration(key: DurationSetting): number | undefined {
    const v = this.data[key];
    if (v === undefined) return undefined;
    if (typeof v !== "string" && typeof v !== "number") throw this.error(key, "must be a duration like \"20m\"");
    return parseDuration(v, key, this.where(key));
  }

  int(key: string): number | undefined {
    const v = this.data[key];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw this.error(key, "must be a whole number, 0 or more");
    return v;
  }

  list(key: string): string[] {
    const v = this.data[key];
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) throw this.error(key, "must be a list of strings");
    return v as string[];
  }
}

/** Checks that a URL is an https:// URL with a host, as clients and enrollment lines need. */
export function validateHttpsUrl(value: string, where: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw usageError(`${where}: "${value}" is not a URL`, "use e.g. https://mail.example.org:8443");
  }
  if (url.protocol !== "https:" || !url.hostname) throw usageError(`${where}: "${value}" must be an https:// URL`);
  return url.origin;
}

/**
 * The config file `relayctl server` runs with. A missing one is refused: on
 * built-in defaults the server would listen on every address and create
 * state as whoever started it, which is never what an operator meant.
 */
export function serverConfigToRun(path?: string): string {
  const file = path ?? DEFAULT_SERVER_CONFIG;
  if (!existsSync(file)) {
    throw usageError(`no server config at ${file}, so the server does not start`, `create one with \`install.sh server\`, or pass --config PATH`);
  }
  return file;
}

/** Loads server.toml (missing default file = defaults) and validates every key. */
export function loadServerConfig(path?: string): ServerConfig {
  const file = path ?? DEFAULT_SERVER_CONFIG;
  const { data, text } = readToml(file, path !== undefined);
  const k = new Keys(file, text, data, SERVER_KEY_NAMES);
  const listen = parseListen(k.str("listen") ?? "[::]:8443", k.where("listen"));
  const publicUrl = validateHttpsUrl(k.str("public_url") ?? `https://${hostname()}:${listen.port}`, k.where("public_url"));
  const mapType = k.str("map_type");
  if (mapType !== undefined && !(MAP_TYPES as readonly string[]).includes(mapType)) {
    throw k.error("map_type", `"${mapType}" is not supported`, `use one of ${MAP_TYPES.join(", ")}`);
  }
  const map = k.str("map") ?? "/etc/postfix/relayctl/clients";
  if (!map.startsWith("/")) throw k.error("map", "must be an absolute path");
  const stateDir = k.str("state_dir") ?? "/var/lib/relayctl";
  if (!stateDir.startsWith("/")) throw k.error("state_dir", "must be an absolute path");
  // Relative paths would resolve against whatever directory cron or an admin runs from.
  const absolute = (key: string): string | undefined => {
    const v = k.str(key);
    if (v !== undefined && !v.startsWith("/")) throw k.error(key, "must be an absolute path");
    return v;
  };
  const tlsCert = absolute("tls_cert");
  const tlsKey = absolute("tls_key");
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw k.error(tlsCert === undefined ? "tls_key" : "tls_cert", "tls_cert and tls_key must be set together");
  }
  const ttl = k.duration("ttl") ?? 1200;
  const cidrs = (key: string): Cidr[] =>
    k.list(key).map((c) => {
      const net = parseCidr(c);
      if (!net) throw k.error(key, `"${c}" is not an address or CIDR network with zero host bits`);
      return net;
    });
  const trustedProxies = cidrs("trusted_proxies");
  const oneOf = <T extends string>(key: string, allowed: readonly T[], fallback: T): T => {
    const v = k.str(key) ?? fallback;
    if (!(allowed as readonly string[]).includes(v)) throw k.error(key, `"${v}" is not one of ${allowed.join(", ")}`);
    return v as T;
  };
  const renewalsPerMinute = k.int("renewals_per_minute") ?? 20;
  const lookup = oneOf("lookup", ["map", "policy"] as const, "map");
  const ipv6Prefix = k.int("ipv6_prefix") ?? 128;
  if (ipv6Prefix < MIN_IPV6_PREFIX || ipv6Prefix > 128) throw k.error("ipv6_prefix", `must be ${MIN_IPV6_PREFIX} to 128`, "64 covers one LAN with its privacy addresses");
  if (ipv6Prefix < 128 && lookup === "map") throw k.error("ipv6_prefix", `a /${ipv6Prefix} lease cannot be expressed in a Postfix map`, 'set lookup = "policy", which matches prefixes exactly');
  const database = k.str("database");
  if (database !== undefined) checkDatabaseUrl(database, k.where("database"));
  const databasePasswordFile = absolute("database_password_file");
  if (databasePasswordFile !== undefined && database === undefined) throw k.error("database_password_file", "is only used with database", 'set database = "postgres://..." too, or remove it');
  return {
    database, databasePasswordFile, databasePasswordWhere: databasePasswordFile === undefined ? undefined : k.where("database_password_file"),
    path: file, listen, publicUrl, stateDir, tlsCert, tlsKey, map,
    mapType: mapType as MapType | undefined, ttl, postmap: absolute("postmap"), trustedProxies,
    renewalsPerMinute, postmapTimeout: k.duration("postmap_timeout") ?? 10,
    metricsAllow: cidrs("metrics_allow"),
    logFormat: oneOf("log_format", ["text", "json"] as const, "text"),
    logLevel: oneOf("log_level", LOG_LEVELS, "info"),
    auditRetention: k.duration("audit_retention") ?? 90 * 86400,
    lookup,
    policySocket: absolute("policy_socket") ?? "/var/spool/postfix/relayctl/policy",
    ipv6Prefix,
  };
}

/**
 * Checks a `database` value: a postgres:// or postgresql:// URL with a
 * database name. A unix socket directory goes in `?host=/var/run/postgresql`.
 */
export function checkDatabaseUrl(value: string, where: string): URL {
  const hint = 'use e.g. "postgres://relayctl@localhost/relayctl?host=/var/run/postgresql" (unix socket) or "postgres://relayctl@db.example.org/relayctl?sslmode=verify-full"';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw usageError(`${where}: not a URL`, hint);
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") throw usageError(`${where}: must be a postgres:// URL`, hint);
  if (url.pathname.length < 2) throw usageError(`${where}: names no database (the path after the host)`, hint);
  const host = url.searchParams.get("host");
  if (host !== null && !host.startsWith("/")) throw usageError(`${where}: ?host= must be an absolute socket directory`, hint);
  return url;
}

/** Loads client.toml; every key is required except pin. */
export function loadClientConfig(path?: string): ClientConfig {
  const file = path ?? DEFAULT_CLIENT_CONFIG;
  if (!existsSync(file)) {
    throw new RelayError(`no client config at ${file}`, {
      exitCode: ExitCode.USAGE,
      hint: "enroll first with the line `relayctl server add NAME` printed on the mail host",
    });
  }
  const { data, text } = readToml(file, true);
  const k = new Keys(file, text, data, ["server", "name", "token", "pin", "server_cert"]);
  const need = (key: string): string => {
    const v = k.str(key);
    if (v === undefined) throw usageError(`${file}: missing key "${key}"`, "re-run relayctl client enroll");
    return v;
  };
  return {
    path: file,
    server: validateHttpsUrl(need("server"), k.where("server")),
    name: validateName(need("name"), k.where("name")),
    token: need("token"),
    pin: k.str("pin"),
    serverCert: k.str("server_cert"),
  };
}

/** Renders client.toml; values are JSON-quoted, which is valid TOML for plain strings. */
export function renderClientConfig(c: Omit<ClientConfig, "path">): string {
  const lines = [
    "# relayctl client configuration, written by `relayctl client enroll`.",
    "# Holds a secret token: keep this file mode 0600.",
    `server = ${JSON.stringify(c.server)}`,
    `name = ${JSON.stringify(c.name)}`,
    `token = ${JSON.stringify(c.token)}`,
  ];
  if (c.pin) lines.push(`pin = ${JSON.stringify(c.pin)}`);
  if (c.serverCert) lines.push("# The server's certificate chain as enrolled (matches pin); saves a TLS handshake per run.", `server_cert = ${JSON.stringify(c.serverCert)}`);
  return lines.join("\n") + "\n";
}
