import { defineCommand } from "citty";
import { serverConfigToRun } from "../lib/config.ts";
import { parseDuration, formatDuration } from "../lib/duration.ts";
import { RelayError, usageError } from "../lib/errors.ts";
import { log, setLogLevel, setVerbosity } from "../lib/logging.ts";
import { addClient, editClient, type Added, listClients, readAuditLog, revokeClient, rotateToken, serverStatus, type AuditView, type ClientView, type EditResult, type StatusView } from "../server/admin.ts";
import { startServer } from "../server/server.ts";
import { sweep } from "../server/runtime/sweep.ts";
import { migrateToPostgres, postfixPgsqlFile, type MigrateResult } from "../server/stores/tools.ts";
import { loadServerConfig } from "../lib/config.ts";
import { common, ifNoSubcommand, repeatedFlag } from "./shared.ts";

/** Runs the server until SIGTERM or SIGINT, then stops cleanly; refuses to run without a config file. */
export async function runServer(opts: { config?: string; verbose?: boolean }): Promise<void> {
  // A service logs what it does; only cron-run commands stay quiet.
  setVerbosity({ verbose: opts.verbose });
  if (!opts.verbose) log.level = 3;
  const server = await startServer({ configPath: serverConfigToRun(opts.config) });
  if (!opts.verbose) setLogLevel(server.core.config.logLevel);
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      log.info(`${signal}: shutting down`);
      server.stop().then(resolve, resolve);
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => {
      log.info("SIGHUP: reloading configuration and TLS files");
      server.reload().catch((err) => log.error(`reload failed: ${(err as Error).message}`));
    });
  });
}

/** `server add`: prints the enrollment line on stdout, or with --dyndns what a router's form needs. */
export async function runServerAdd(opts: { config?: string; name: string; ttl?: string; allow?: string[]; ipv6Prefix?: string; dyndns?: boolean }): Promise<string> {
  const added = await addClient({
    configPath: opts.config,
    name: opts.name,
    ttl: opts.ttl === undefined ? undefined : parseDuration(opts.ttl, "ttl", "--ttl"),
    allow: opts.allow,
    ipv6Prefix: opts.ipv6Prefix === undefined ? undefined : Number(opts.ipv6Prefix),
    dyndns: opts.dyndns,
  });
  return printAdded(opts.name, added, opts.dyndns);
}

/**
 * The enrollment line, then the token on a line of its own: the line reads
 * the token from stdin (`--token -`), which asks for it on a terminal, so
 * neither shell history nor `ps` on the client host ever holds it.
 */
export function renderEnrollment(a: Pick<Added, "line" | "token">): string {
  return `${a.line}\ntoken: ${a.token}`;
}

/** Prints what `server add` or `rotate` made (the enrollment, or with --dyndns the router form), warning first when the URL is unusable elsewhere. */
function printAdded(name: string, added: Added, dyndns?: boolean): string {
  if (added.urlProblem) log.warn(added.urlProblem);
  const out = dyndns ? renderDyndnsEnrollment(name, added) : renderEnrollment(added);
  console.log(out);
  return out;
}

/** The pin's hex as the colon-separated upper-case SHA-256 fingerprint browsers, openssl and device UIs show. */
export function fingerprintOf(pin: string): string {
  return pin.replace(/^sha256:/, "").toUpperCase().match(/../g)!.join(":");
}

/**
 * What a router, NAS or dyndns2 daemon needs, for `server add --dyndns`:
 * the update URL in each common placeholder dialect, the credentials, the
 * certificate to trust and how long a lease lasts without an update.
 */
export function renderDyndnsEnrollment(name: string, a: Pick<Added, "token" | "ttl" | "cert" | "publicUrl">): string {
  const base = new URL("/nic/update", a.publicUrl);
  const url = `${base.origin}${base.pathname}`;
  const host = base.host;
  // ddclient 3.10 sends the update, credentials included, to members.dyndns.org when server= has no dot.
  const ddclientOk = host.includes(".") || host.startsWith("[");
  const lines = [
    `dyndns2 client ${name}: lease ttl ${a.ttl === null ? "server default" : formatDuration(a.ttl)}; the device must send an update at least that often (see "Routers and NAS boxes" in the docs)`,
    "",
    "Update URL (the device's own placeholders):",
    `  any / curl         ${url}?hostname=${name}&myip=IP   (myip may be left out: the connecting address)`,
    `  FRITZ!Box          ${url}?hostname=<domain>&myip=<ipaddr>`,
    `  OpenWrt            ${url}?hostname=[DOMAIN]&myip=[IP]`,
    `  Synology           ${url}?hostname=__HOSTNAME__&myip=__MYIP__`,
    `  pfSense/OPNsense   ${url}?hostname=${name}&myip=%IP%`,
    `  inadyn/UniFi       ddns-server = "${host}"  ddns-path = "/nic/update?hostname=%h&myip=%i"`,
    `  ddclient           protocol=dyndns2  ssl=yes  server=${host}${ddclientOk ? "" : "   (WARNING: ddclient needs a name with a dot or an IP literal here)"}`,
    `Username: ${name}`,
    `Password: ${a.token}`,
    `Certificate: ${a.cert.path}`,
    `  SHA-256 fingerprint ${fingerprintOf(a.cert.pin)}`,
    a.cert.generated
      ? "Trust: this certificate is self-signed by relayctl. ddclient (ssl_ca_file=) and inadyn (ca-trust-file=) can trust the file above; most routers and NAS boxes accept only a publicly trusted certificate: set tls_cert and tls_key in server.toml to the mail host's public certificate (the one Postfix uses), public_url to its name, and reload."
      : "Trust: the configured tls_cert; a device accepts it if it chains to a CA in the device's own trust store.",
  ];
  return lines.join("\n");
}

/** `server rotate`: prints a new enrollment line (with --dyndns what a router's form needs); the old token stops working at once. */
export async function runServerRotate(opts: { config?: string; name: string; dyndns?: boolean }): Promise<string> {
  return printAdded(opts.name, await rotateToken({ configPath: opts.config, name: opts.name }), opts.dyndns);
}

function inWords(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s <= 0) return "expired";
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

/** Renders clients as an aligned table for people. */
export function renderClientTable(clients: ClientView[], now = Date.now()): string {
  const rows = [["NAME", "ADDRESS", "RENEWED", "EXPIRES IN", "TTL", "ALLOW"]];
  for (const c of clients) {
    const leases = c.leases.length ? c.leases : [null];
    for (const l of leases) {
      rows.push([c.name, l?.ip ?? "-", l ? l.renewed_at.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-", l ? inWords(Date.parse(l.expires_at) - now) : "-", formatDuration(c.ttl), c.allow.join(",") || "-"]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).join("\n");
}

/** `server list`: a table, or `{"clients": [...]}` with --json. */
export async function runServerList(opts: { config?: string; json?: boolean }): Promise<ClientView[]> {
  const clients = await listClients({ configPath: opts.config });
  console.log(opts.json ? JSON.stringify({ clients }, null, 2) : renderClientTable(clients));
  return clients;
}

/** The one line `server revoke` prints: the client, the leases that went with it, who updated the lookup. */
export function renderRevoke(name: string, r: { removed: string[]; mapUpdatedBy: "server" | "here" }): string {
  const leases = r.removed.length === 1 ? "1 lease removed" : `${r.removed.length || "no"} leases removed`;
  return `revoked ${name}: ${leases}${r.removed.length ? ` (${r.removed.join(" ")})` : ""}, token refused; map updated ${r.mapUpdatedBy === "here" ? "now" : "by the running server"}`;
}

/** `server revoke`: removes the client and says so; the map no longer holds its addresses. */
export async function runServerRevoke(opts: { config?: string; name: string }): Promise<void> {
  console.log(renderRevoke(opts.name, await revokeClient({ configPath: opts.config, name: opts.name })));
}

/** Renders what `server edit` did as one line per fact, dropped leases included. */
export function renderEdit(name: string, r: EditResult): string {
  if (!r.changes.length) return `${name}: nothing changed`;
  const lines = [`${name}: ${r.changes.join(", ")}`];
  for (const d of r.dropped) lines.push(`dropped lease ${d.ip}: ${d.why}`);
  for (const x of r.shortened) lines.push(`lease ${x.ip} now expires ${x.expires_at} (the new ttl from now)`);
  if (r.dropped.length) lines.push(`map updated ${r.mapUpdatedBy === "here" ? "now" : "by the running server"}`);
  return lines.join("\n");
}

/** `server edit`: changes ttl or allow list, keeping the token; always says what changed, since leases may go. */
export async function runServerEdit(opts: { config?: string; name: string; ttl?: string; allow?: string[]; clearAllow?: boolean; ipv6Prefix?: string }): Promise<EditResult> {
  const r = await editClient({
    configPath: opts.config,
    name: opts.name,
    ttl: opts.ttl === undefined ? undefined : parseDuration(opts.ttl, "ttl", "--ttl"),
    allow: opts.allow,
    clearAllow: opts.clearAllow,
    ipv6Prefix: opts.ipv6Prefix === undefined ? undefined : Number(opts.ipv6Prefix),
  });
  console.log(renderEdit(opts.name, r));
  return r;
}

/** Renders audit entries one per line: time, event, client, address, source, detail. */
export function renderAuditLog(rows: AuditView[]): string {
  return rows
    .map((r) => [r.ts, r.event, r.client ?? "-", r.ip ?? "-", r.source ? `from ${r.source}` : "", r.count > 1 ? `x${r.count}` : "", r.detail ?? ""].filter(Boolean).join("  "))
    .join("\n");
}

/** `server log`: the audit log, oldest first; `--json` gives `{"events": [...]}`. */
export async function runServerLog(opts: { config?: string; client?: string; since?: string; json?: boolean; limit?: string }): Promise<AuditView[]> {
  const limit = opts.limit === undefined ? 1000 : Number(opts.limit);
  if (!Number.isInteger(limit) || limit < 1) throw usageError(`--limit ${opts.limit}: not a positive whole number`);
  const rows = await readAuditLog({
    configPath: opts.config,
    client: opts.client,
    sinceSeconds: opts.since === undefined ? undefined : parseDuration(opts.since, "since", "--since"),
    limit,
  });
  const out = opts.json ? JSON.stringify({ events: rows }, null, 2) : renderAuditLog(rows);
  if (out) console.log(out);
  return rows;
}

const ipv6PrefixFlag = { type: "string", description: "lease the /N (48-128) around the client's IPv6 address; needs lookup = \"policy\" below 128", valueHint: "N" } as const;

const add = defineCommand({
  meta: { name: "add", description: "Create a client and print its enrollment line" },
  args: {
    ...common,
    name: { type: "positional", required: true, description: "client name: [a-z0-9][a-z0-9._-]{0,62}" },
    ttl: { type: "string", description: "lease lifetime for this client (90s, 20m, 1h, at most 400d); default: server ttl" },
    allow: { type: "string", description: "CIDR the client may lease or name (repeatable)" },
    "ipv6-prefix": ipv6PrefixFlag,
    dyndns: { type: "boolean", description: "a router or NAS (dyndns2, /nic/update): print what its form needs instead of the enroll line; ttl defaults to 26h" },
  },
  run: ({ args, rawArgs }) => {
    const allow = repeatedFlag(rawArgs, "allow");
    return runServerAdd({ config: args.config, name: args.name, ttl: args.ttl, allow, ipv6Prefix: args["ipv6-prefix"], dyndns: args.dyndns }).then(() => undefined);
  },
});

const edit = defineCommand({
  meta: { name: "edit", description: "Change a client's ttl or allow list, keeping its token; leases outside a new allow list are dropped" },
  args: {
    ...common,
    name: { type: "positional", required: true, description: "client name" },
    ttl: { type: "string", description: "new lease lifetime (90s, 20m, 1h, at most 400d); a current lease is cut to end within it" },
    allow: { type: "string", description: "CIDR the client may lease or name (repeatable); replaces the whole list" },
    "clear-allow": { type: "boolean", description: "empty the allow list: the client may lease only the address it connects from" },
    "ipv6-prefix": ipv6PrefixFlag,
  },
  run: ({ args, rawArgs }) => {
    const allow = repeatedFlag(rawArgs, "allow");
    return runServerEdit({ config: args.config, name: args.name, ttl: args.ttl, allow, clearAllow: args["clear-allow"], ipv6Prefix: args["ipv6-prefix"] }).then(() => undefined);
  },
});

const list = defineCommand({
  meta: { name: "list", description: "List clients, their addresses, last renewal and expiry" },
  args: { ...common, json: { type: "boolean", description: "print JSON" } },
  run: ({ args }) => runServerList({ config: args.config, json: args.json }).then(() => undefined),
});

const rotate = defineCommand({
  meta: { name: "rotate", description: "Give a client a new token and print its new enrollment line" },
  args: {
    ...common,
    name: { type: "positional", required: true, description: "client name" },
    dyndns: { type: "boolean", description: "a router or NAS: print what its form needs (the token is its new password) instead of the enroll line" },
  },
  run: ({ args }) => runServerRotate({ config: args.config, name: args.name, dyndns: args.dyndns }).then(() => undefined),
});

const revoke = defineCommand({
  meta: { name: "revoke", description: "Delete a client: leases gone, map updated, token refused" },
  args: { ...common, name: { type: "positional", required: true, description: "client name" } },
  run: ({ args }) => runServerRevoke({ config: args.config, name: args.name }),
});

/** Renders `server status` for people. */
export function renderStatus(s: StatusView): string {
  const lines = [s.running ? `server: running (pid ${s.status!.pid}, since ${s.status!.started_at}), listening on ${s.status!.listen}` : "server: not running"];
  lines.push(`public url: ${s.public_url}`);
  lines.push(s.cert ? `certificate: ${s.cert.path}, expires ${s.cert.expires_at} (${s.cert.days_left} days), pin ${s.cert.pin}` : "certificate: none yet (created at first start or server add)");
  if (s.status?.pin_changed_at) lines.push(`  pin changed at ${s.status.pin_changed_at} (certificate replaced): clients enrolled with --pin must re-enroll`);
  if (s.map) {
    lines.push(`map: ${s.map.type}:${s.map.path}, ${s.map.entries} entries`);
    if (s.map.frozen.entries) lines.push(`  FROZEN: ${s.map.frozen.entries} entries have no live lease and still relay (since ${s.map.frozen.since}); start the server, or run relayctl server sweep`);
    const l = s.status?.lookup;
    if (l?.last_rebuild_at) lines.push(`  last rebuild ${l.last_rebuild_at} in ${l.last_rebuild_ms} ms (${l.rebuilds} since start)`);
  }
  if (s.policy) lines.push(`policy: ${s.policy.socket}, ${s.policy.listening ? "listening" : "not listening (Postfix defers relay attempts with 451)"}`);
  lines.push(`state: ${s.state.kind === "sqlite" ? `SQLite in ${s.state.where}` : `PostgreSQL ${s.state.where}`}${s.state_error ? ` (cannot be read: ${s.state_error})` : ""}`);
  lines.push(`clients: ${s.clients}, live leases: ${s.leases}`);
  lines.push(s.status?.degraded.length ? `degraded: ${s.status.degraded.join("; ")}` : "degraded: no");
  return lines.join("\n");
}

/** `server sweep`: with no server running, expires due leases and rebuilds the map; with one, does nothing. */
export async function runServerSweep(opts: { config?: string; verbose?: boolean }): Promise<void> {
  const r = await sweep(loadServerConfig(opts.config));
  if (opts.verbose) console.log(r.serverRunning ? "server running: nothing to do" : `expired ${r.expired.length} leases; lookup rebuilt from the live leases`);
}

const sweepCommand = defineCommand({
  meta: { name: "sweep", description: "With the server stopped, expire due leases and rebuild the map (run every minute from a timer or cron)" },
  args: { ...common },
  run: ({ args }) => runServerSweep({ config: args.config, verbose: args.verbose }),
});

/**
 * Why `server status` must exit non-zero, or null when the server runs and
 * is healthy. Stopped, starting and degraded all exit 1 (FAILED: look, and
 * it may heal or need a start); 2 stays a bad config, as for every command.
 */
export function statusProblem(s: StatusView): RelayError | null {
  if (!s.running) return new RelayError("server is not running", { hint: "start it: systemctl start relayctl (or relayctl server --config PATH)" });
  if (s.state_error) return new RelayError(`state cannot be read: ${s.state_error}`, { hint: "check that the database runs and the database line in server.toml" });
  if (!s.status) return new RelayError("server holds its state but has not published its status yet", { hint: "it is starting; ask again in a few seconds, or see journalctl -u relayctl" });
  if (s.status.degraded.length) return new RelayError(`server is degraded: ${s.status.degraded.join("; ")}`, { hint: "see the server log (journalctl -u relayctl); it retries by itself" });
  if (s.map?.frozen.entries) return new RelayError(`${s.map.frozen.entries} map entries have no live lease and still relay`, { hint: "the server is not keeping the map current; see journalctl -u relayctl" });
  return null;
}

/** `server status`: prints whether it runs, certificate, map and degraded reasons, then exits 0 only when healthy. */
export async function runServerStatus(opts: { config?: string; json?: boolean }): Promise<StatusView> {
  const s = await serverStatus({ configPath: opts.config });
  console.log(opts.json ? JSON.stringify(s, null, 2) : renderStatus(s));
  const problem = statusProblem(s);
  if (problem) throw problem;
  return s;
}

const statusCommand = defineCommand({
  meta: { name: "status", description: "Show whether the server runs, its certificate, map and health; exit 0 only when it runs and is healthy, else 1" },
  args: { ...common, json: { type: "boolean", description: "print JSON" } },
  run: ({ args }) => runServerStatus({ config: args.config, json: args.json }).then(() => undefined),
});

const logCommand = defineCommand({
  meta: { name: "log", description: "Show the audit log: grants, renewals, releases, expiries, revocations, refusals" },
  args: {
    ...common,
    client: { type: "string", description: "only this client's events", valueHint: "NAME" },
    since: { type: "string", description: "only events newer than this (e.g. 1h, 2d)", valueHint: "D" },
    limit: { type: "string", description: "at most this many newest events (default 1000)", valueHint: "N" },
    json: { type: "boolean", description: "print JSON" },
  },
  run: ({ args }) => runServerLog({ config: args.config, client: args.client, since: args.since, json: args.json, limit: args.limit }).then(() => undefined),
});

/** `server postfix-pgsql`: prints the pgsql: table file for Postfix hosts that query the shared database directly. */
export function runServerPostfixPgsql(opts: { config?: string; user?: string; path?: string }): string {
  const text = postfixPgsqlFile(loadServerConfig(opts.config), { user: opts.user, path: opts.path });
  process.stdout.write(text);
  return text;
}

const postfixPgsqlCommand = defineCommand({
  meta: { name: "postfix-pgsql", description: "Print a Postfix pgsql: table file that asks the shared PostgreSQL database for live leases (prefix match and expiry in SQL)" },
  args: {
    ...common,
    user: { type: "string", description: "PostgreSQL role Postfix logs in as (default: the one in database); it needs only USAGE on schema relayctl and SELECT on relayctl.leases", valueHint: "ROLE" },
    path: { type: "string", description: "where the file will be installed, for the main.cf lines in its comments (default /etc/postfix/relayctl-pgsql.cf)", valueHint: "PATH" },
  },
  run: ({ args }) => void runServerPostfixPgsql({ config: args.config, user: args.user, path: args.path }),
});

/** `server migrate --to URL`: copies SQLite state into PostgreSQL and says what to change in server.toml. */
export async function runServerMigrate(opts: { config?: string; to: string }): Promise<MigrateResult> {
  const config = loadServerConfig(opts.config);
  const r = await migrateToPostgres(config, opts.to);
  const skipped = r.skipped.clients + r.skipped.leases + r.skipped.audit;
  console.log(
    [
      `copied ${r.clients} clients, ${r.leases} live leases and ${r.audit} audit entries to ${opts.to.replace(/\/\/([^:@/]*):[^@/]*@/, "//$1@")}`,
      skipped ? `kept what was already there: ${r.skipped.clients} clients, ${r.skipped.leases} leases, ${r.skipped.audit} audit entries` : "",
      `next: stop relayctl, add this line to ${config.path} (password in database_password_file, mode 0600, or in the URL), and start it again:`,
      `  ${r.configLine}`,
      "every other relay host gets the same database line; see relayctl server postfix-pgsql for Postfix hosts without relayctl",
    ]
      .filter(Boolean)
      .join("\n"),
  );
  return r;
}

const migrateCommand = defineCommand({
  meta: { name: "migrate", description: "Copy clients, live leases and the audit log from the SQLite state into PostgreSQL (safe to run twice)" },
  args: { ...common, to: { type: "string", required: true, description: "the PostgreSQL URL, e.g. postgres://relayctl@localhost/relayctl?host=/var/run/postgresql", valueHint: "URL" } },
  run: ({ args }) => runServerMigrate({ config: args.config, to: args.to }).then(() => undefined),
});

export const serverCommand = defineCommand({
  meta: {
    name: "server",
    description: "Bare `relayctl server` runs the lease server on the mail host (needs /etc/relayctl/server.toml or --config; `install.sh server` writes it); the subcommands manage its clients",
  },
  args: { ...common },
  subCommands: { add, edit, list, revoke, rotate, log: logCommand, status: statusCommand, sweep: sweepCommand, "postfix-pgsql": postfixPgsqlCommand, migrate: migrateCommand },
  run: ifNoSubcommand(({ args }) => runServer({ config: args.config, verbose: args.verbose })),
});
