// server.toml: every key's rules and defaults. Reading TOML and the client's
// config live in configfile.ts, re-exported here for existing importers.
import { existsSync } from "node:fs";
import { hostname } from "node:os";
import { Keys, parseUrlSetting, readToml, validateHttpsUrl } from "./configfile.ts";
import { usageError } from "./errors.ts";
import { parseCidr, parseIp, type Cidr } from "./ip.ts";
import { CLIENT_METRICS_AUTO_MAX, SERVER_KEY_NAMES } from "./schema.ts";

export { DEFAULT_CLIENT_CONFIG, loadClientConfig, renderClientConfig, validateHttpsUrl, validateName, type ClientConfig } from "./configfile.ts";

export const DEFAULT_SERVER_CONFIG = "/etc/relayctl/server.toml";
export const MAP_TYPES = ["hash", "lmdb", "btree", "cdb"] as const;
export type MapType = (typeof MAP_TYPES)[number];
/** Widest IPv6 prefix lease: a /48 is a whole site. */
export const MIN_IPV6_PREFIX = 48;

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
  /** How the MTA asks: the postmap map (default), the policy service, or a line file Exim or OpenSMTPD reads. */
  lookup: LookupKind;
  /** The net-iplsearch file Exim reads (lookup = "exim"). */
  eximHosts: string;
  /** The file: table OpenSMTPD reads (lookup = "opensmtpd"). */
  smtpdTable: string;
  /** smtpctl to run after each rewrite of smtpd_table (undefined: found on PATH or in /usr/sbin). */
  smtpctl?: string;
  /** The socket of relayctl-smtpctl.socket, which runs `smtpctl update table relayctl` as root (undefined: run smtpctl directly, as root only). */
  smtpctlSocket?: string;
  policySocket: string;
  /** Default prefix length of IPv6 leases (128 = the address alone). */
  ipv6Prefix: number;
  /** Shared PostgreSQL state (`postgres://...`); undefined = SQLite in state_dir. */
  database?: string;
  /** A 0600 file holding the database password, when the URL has none. */
  databasePasswordFile?: string;
  /** `file:line: database_password_file`, for errors raised when the file is read. */
  databasePasswordWhere?: string;
  /** Seconds after the last successful read of the shared database from which this host withholds every lease (runtime/freshness.ts). */
  staleAfter: number;
  /** Seconds between overdue checks. */
  overdueCheck: number;
  /** Where overdue events go; empty or undefined: only the log and server list. */
  alerts: AlertTargets;
  /** Per-client series on /metrics: on, off, or "auto" (on up to CLIENT_METRICS_AUTO_MAX clients). */
  clientMetrics: boolean | "auto";
  /** Files of the live leases for the rest of the mail stack (OpenDKIM, rspamd), kept in step like the lookup. */
  exports: ExportSpec[];
}

/** Where overdue events are sent (server.toml alert_*). */
export interface AlertTargets {
  /** argv of alert_command; empty when unset. */
  command: string[];
  webhook?: string;
  /** PEM file to trust for the webhook instead of the system's CAs. */
  webhookCa?: string;
  /** Recipients of alert_mail; empty when unset. */
  mail: string[];
}

/** A mail address as alert_mail takes it: local@domain, nothing a mail header or argv could be bent with. */
const MAIL_ADDRESS = /^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/;

/** Checks alert_webhook: https anywhere, plain http only to loopback (a local relay agent), never credentials in a log line's reach. */
export function checkWebhookUrl(value: string, where: string): string {
  const url = parseUrlSetting(value, where, '"https://alerts.example.org/hooks/relayctl"');
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const loopback = host === "localhost" || host === "::1" || /^127\./.test(host);
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) throw usageError(`${where}: must be an https:// URL (http:// only to loopback)`, "events name clients and addresses: they travel encrypted");
  return url.href;
}

/** The values of an export's `format`. */
export const EXPORT_FORMATS = ["lines"] as const;

/** One `export` table: a file of the live leases, one address or CIDR network a line. */
export interface ExportSpec {
  format: (typeof EXPORT_FORMATS)[number];
  path: string;
  /** Run (argv, no shell) after each rewrite, for a reader that loads the file only when told (OpenDKIM); none when it watches the file (rspamd). */
  reload?: string[];
  /** Networks the file holds whatever the leases (OpenDKIM's InternalHosts replaces its default 127.0.0.1). */
  static: Cidr[];
  /** `file:line: export`, for messages. */
  where: string;
}

const EXPORT_HINT = 'write e.g. export = [{ format = "lines", path = "/etc/opendkim/relayctl/hosts", static = ["127.0.0.1", "::1"], reload = ["/usr/bin/systemctl", "reload", "opendkim"] }] (docs/export.md)';

/**
 * Checks the `export` tables: a known format, an absolute path that no
 * other file relayctl keeps uses (two writers would fight over it), an
 * optional reload command as an argv list with an absolute program, and
 * optional static networks, parsed like every address.
 */
export function parseExports(tables: Record<string, unknown>[], where: string, taken: Record<string, string>): ExportSpec[] {
  const seen = new Map(Object.entries(taken).map(([key, path]) => [path, key]));
  return tables.map((t, i) => {
    const at = `${where}: entry ${i + 1}`;
    const fail = (message: string): never => {
      throw usageError(`${at}: ${message}`, EXPORT_HINT);
    };
    for (const key of Object.keys(t)) if (!["format", "path", "reload", "static"].includes(key)) fail(`unknown key "${key}" (known: format, path, reload, static)`);
    const format = t.format ?? "lines";
    if (typeof format !== "string" || !(EXPORT_FORMATS as readonly string[]).includes(format)) fail(`format ${JSON.stringify(format)} is not one of ${EXPORT_FORMATS.join(", ")}`);
    const path = t.path;
    if (typeof path !== "string" || !path.startsWith("/") || path.endsWith("/")) fail("path must be the absolute path of a file");
    const other = seen.get(path as string);
    if (other) fail(`path ${path} is already used by ${other}`);
    seen.set(path as string, `export entry ${i + 1}`);
    const reload = t.reload;
    if (reload !== undefined && (!Array.isArray(reload) || !reload.length || reload.some((a) => typeof a !== "string" || a === "") || !(reload[0] as string).startsWith("/"))) {
      fail("reload must be a list of strings, the first an absolute program path (no shell)");
    }
    const fixed = t.static ?? [];
    if (!Array.isArray(fixed) || fixed.some((x) => typeof x !== "string")) fail('static must be a list of addresses or CIDR networks, e.g. ["127.0.0.1", "::1"]');
    const nets = (fixed as string[]).map((text) => parseCidr(text) ?? fail(`static: "${text}" is not an address or CIDR network with zero host bits`));
    return { format: format as ExportSpec["format"], path: path as string, reload: reload as string[] | undefined, static: nets, where: at };
  });
}

/** The values of `lookup`: how the MTA learns of the leases (src/server/lookups/ has one row each). */
export const LOOKUP_KINDS = ["map", "policy", "exim", "opensmtpd"] as const;
export type LookupKind = (typeof LOOKUP_KINDS)[number];

export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Parses `HOST:PORT`, `[V6]:PORT` or `:PORT` (all addresses, dual-stack). */
export function parseListen(value: string, where = "listen"): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]*|[a-z0-9.-]+)):([0-9]{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : 0;
  if (!m || port < 1 || port > 65535) throw usageError(`${where}: "${value}" is not HOST:PORT`, 'use e.g. "[::]:8443" or "0.0.0.0:8443"');
  const host = m[1] ?? (m[2] || "::");
  if (m[1] !== undefined && !parseIp(m[1])) throw usageError(`${where}: "${value}" has an invalid IPv6 address`);
  return { host, port };
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
  const lookup = oneOf("lookup", LOOKUP_KINDS, "map");
  const ipv6Prefix = k.int("ipv6_prefix") ?? 128;
  if (ipv6Prefix < MIN_IPV6_PREFIX || ipv6Prefix > 128) throw k.error("ipv6_prefix", `must be ${MIN_IPV6_PREFIX} to 128`, "64 covers one LAN with its privacy addresses");
  if (ipv6Prefix < 128 && lookup === "map") throw k.error("ipv6_prefix", `a /${ipv6Prefix} lease cannot be expressed in a Postfix map`, 'set lookup = "policy" (or "exim" or "opensmtpd" for those MTAs), which match prefixes exactly');
  // One URL (its host list as libpq writes it), or a TOML list of one-host URLs.
  let database: string | undefined;
  try {
    database = k.str("database");
  } catch {
    database = joinDatabaseUrls(k.list("database"), k.where("database"));
  }
  if (database !== undefined) checkDatabaseUrl(database, k.where("database"));
  const databasePasswordFile = absolute("database_password_file");
  if (databasePasswordFile !== undefined && database === undefined) throw k.error("database_password_file", "is only used with database", 'set database = "postgres://..." too, or remove it');
  let alertMail: string[];
  try {
    alertMail = k.list("alert_mail");
  } catch {
    alertMail = [k.str("alert_mail")!];
  }
  for (const a of alertMail) if (!MAIL_ADDRESS.test(a)) throw k.error("alert_mail", `"${a}" is not a mail address`, 'use e.g. "postmaster@example.org"');
  const alertCommand = k.list("alert_command");
  if (data.alert_command !== undefined && !alertCommand.length) throw k.error("alert_command", "is empty", "give the program and its arguments, or remove the key");
  if (alertCommand.length && !alertCommand[0]!.startsWith("/")) throw k.error("alert_command", "the program must be an absolute path", 'e.g. ["/usr/local/bin/page-oncall", "--relay"]; it runs without a shell');
  const webhook = k.str("alert_webhook");
  const alerts: AlertTargets = {
    command: alertCommand,
    webhook: webhook === undefined ? undefined : checkWebhookUrl(webhook, k.where("alert_webhook")),
    webhookCa: absolute("alert_webhook_ca"),
    mail: alertMail,
  };
  if (alerts.webhookCa !== undefined && webhook === undefined) throw k.error("alert_webhook_ca", "is only used with alert_webhook", "set alert_webhook too, or remove it");
  const policySocket = absolute("policy_socket") ?? "/var/spool/postfix/relayctl/policy";
  const eximHosts = absolute("exim_hosts") ?? "/etc/exim4/relayctl/hosts";
  const smtpdTable = absolute("smtpd_table") ?? "/etc/smtpd/relayctl/clients";
  const exports = parseExports(k.tables("export"), k.where("export"), { map, exim_hosts: eximHosts, smtpd_table: smtpdTable, policy_socket: policySocket });
  return {
    overdueCheck: k.duration("overdue_check") ?? 30,
    alerts,
    clientMetrics: k.boolOr("client_metrics", "auto", `"auto" (the default) keeps them up to ${CLIENT_METRICS_AUTO_MAX.toLocaleString("en-US")} clients`) ?? "auto",
    database, databasePasswordFile, databasePasswordWhere: databasePasswordFile === undefined ? undefined : k.where("database_password_file"),
    path: file, listen, publicUrl, stateDir, tlsCert, tlsKey, map,
    mapType: mapType as MapType | undefined, ttl, postmap: absolute("postmap"), trustedProxies,
    renewalsPerMinute, postmapTimeout: k.duration("postmap_timeout") ?? 10,
    metricsAllow: cidrs("metrics_allow"),
    logFormat: oneOf("log_format", ["text", "json"] as const, "text"),
    logLevel: oneOf("log_level", LOG_LEVELS, "info"),
    auditRetention: k.duration("audit_retention") ?? 90 * 86400,
    staleAfter: k.duration("stale_after") ?? 30,
    lookup,
    policySocket, eximHosts, smtpdTable,
    smtpctl: absolute("smtpctl"),
    smtpctlSocket: absolute("smtpctl_socket"),
    ipv6Prefix,
    exports,
  };
}

/** One host of a `database` host list: a name or address and port, or a unix socket directory. */
export interface DatabaseHost {
  host: string;
  port: number;
  /** True when host is a socket directory (an absolute path). */
  socket: boolean;
}

/** A parsed `database` value: its hosts in the order to try, and the rest (user, database, parameters) as a URL. */
export interface DatabaseUrl {
  hosts: DatabaseHost[];
  /** The URL with a placeholder host; host= and port= are taken out into hosts. */
  url: URL;
  /** The value without its password, for messages. */
  shown: string;
}

const DATABASE_HINT = 'use e.g. "postgres://relayctl@localhost/relayctl?host=/var/run/postgresql" (unix socket), "postgres://relayctl@db1.example.org,db2.example.org/relayctl?sslmode=verify-full" (a primary and its standby)';

/**
 * Checks and takes apart a `database` value as libpq reads a URI: a
 * postgres:// or postgresql:// URL with a database name, one host or a
 * comma-separated list (`h1,h2:5433`, `[2001:db8::1]:5432`), or socket
 * directories in `?host=/run/a,/run/b`, with `?port=` one port or one per host.
 */
export function checkDatabaseUrl(value: string, where: string): DatabaseUrl {
  const m = /^(postgres(?:ql)?:)\/\/([^/?#]*)(.*)$/s.exec(value);
  if (!m) throw usageError(`${where}: must be a postgres:// URL`, DATABASE_HINT);
  const [, proto, authority, rest] = m as unknown as [string, string, string, string];
  const at = authority.lastIndexOf("@");
  const userinfo = at < 0 ? "" : authority.slice(0, at + 1);
  const hostPart = authority.slice(at + 1);
  let url: URL;
  try {
    url = new URL(`${proto}//${userinfo}placeholder${rest}`);
  } catch {
    throw usageError(`${where}: not a URL`, DATABASE_HINT);
  }
  if (url.pathname.length < 2) throw usageError(`${where}: names no database (the path after the host)`, DATABASE_HINT);
  const listed = hostPart.split(",").map((item) => {
    const h = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*))(?::([0-9]*))?$/.exec(item);
    if (!h) throw usageError(`${where}: cannot read the host "${item}"`, DATABASE_HINT);
    let host = h[1] ?? h[2]!;
    try {
      host = decodeURIComponent(host);
    } catch {
      throw usageError(`${where}: cannot read the host "${item}"`, DATABASE_HINT);
    }
    return { host, port: h[3] ? Number(h[3]) : undefined };
  });
  const hostParam = url.searchParams.get("host");
  const names = hostParam !== null ? hostParam.split(",") : listed.map((h) => h.host);
  if (hostParam !== null && names.some((n) => !n.startsWith("/"))) throw usageError(`${where}: ?host= must be an absolute socket directory (or several, comma-separated)`, DATABASE_HINT);
  const portParam = url.searchParams.get("port");
  const ports = portParam !== null ? portParam.split(",").map((p) => (p === "" ? undefined : Number(p))) : listed.map((h) => h.port);
  if (ports.length !== 1 && ports.length !== names.length) throw usageError(`${where}: ${names.length} hosts but ${ports.length} ports`, "give one port for all hosts or one per host");
  const hosts = names.map((name, i) => {
    const port = ports.length === 1 ? ports[0] : ports[i];
    if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) throw usageError(`${where}: port ${port} is not a port number`, DATABASE_HINT);
    return { host: name || "localhost", port: port ?? 5432, socket: name.startsWith("/") };
  });
  const tsa = url.searchParams.get("target_session_attrs");
  if (tsa !== null && tsa !== "read-write" && tsa !== "primary") {
    throw usageError(`${where}: target_session_attrs=${tsa}: relayctl writes, so it always connects to the read-write host`, "leave it out, or write target_session_attrs=read-write");
  }
  url.searchParams.delete("host");
  url.searchParams.delete("port");
  const shown = url.password ? value.replace(`:${url.password}@`, "@") : value;
  return { hosts, url, shown };
}

/**
 * Joins a TOML list of `database` URLs, one host each, into one host-list
 * URL; they must agree on everything but the host and port.
 */
export function joinDatabaseUrls(values: string[], where: string): string {
  if (!values.length) throw usageError(`${where}: the list is empty`, DATABASE_HINT);
  const parsed = values.map((v) => checkDatabaseUrl(v, where));
  const first = parsed[0]!.url.href;
  if (parsed.some((p) => p.url.href !== first)) throw usageError(`${where}: the URLs differ in more than their hosts`, "give every host the same user, database and parameters, or write one URL with a host list");
  const hosts = parsed.flatMap((p) => p.hosts).map((h) => `${h.socket ? encodeURIComponent(h.host) : h.host.includes(":") ? `[${h.host}]` : h.host}:${h.port}`);
  const u = parsed[0]!.url;
  const userinfo = u.username ? `${u.username}${u.password ? `:${u.password}` : ""}@` : "";
  return `${u.protocol}//${userinfo}${hosts.join(",")}${u.pathname}${u.search}`;
}
