import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import type { SQL } from "bun";
import type { ServerConfig } from "../../lib/config.ts";
import { ExitCode, RelayError, usageError } from "../../lib/errors.ts";
import { systemClock } from "../../lib/clock.ts";
import { StateStore } from "../state.ts";
import { cidrText, PgStore, pgTarget, readPasswordFile, SCHEMA, type PgTarget } from "./postgres.ts";
import { storeKindOf, unavailableError } from "./open.ts";

/**
 * The one query Postfix runs: prefix match and expiry in SQL; hostnames and
 * keys that could be a parent-network cut match nothing (see client_address).
 * Every name is qualified, operators too: the Postfix role's search_path is
 * not ours to trust.
 */
export const PGSQL_QUERY = `SELECT 'OK' FROM ${SCHEMA}.leases WHERE net OPERATOR(pg_catalog.>>=) ${SCHEMA}.client_address('%s') AND expires_at OPERATOR(pg_catalog.>) pg_catalog.now() LIMIT 1`;

/**
 * The one line of the regexp stage that marks address keys "exact:" (a
 * pattern table, so Postfix never asks it for parent networks). It answers
 * for every client address: alone, in mynetworks, it would be an open relay.
 */
export const EXACT_REGEXP = "/^([0-9A-Fa-f:.]+)$/ exact:$1";

/** The main.cf table reference for the pgsql file behind its regexp stage. */
export function exactTable(pgsqlPath: string, regexpPath: string): string {
  return `pipemap:{regexp:${regexpPath}, proxy:pgsql:${pgsqlPath}}`;
}

/**
 * The `hosts =` value for a target: one postgresql:// URI per host (Postfix
 * tries the next when one fails), a socket directory percent-encoded as the host.
 */
export function pgsqlHosts(t: PgTarget, user: string): string {
  const query = t.sslmode ? `?sslmode=${encodeURIComponent(t.sslmode)}` : "";
  return t.hosts
    .map((h) => {
      const host = h.socket ? encodeURIComponent(h.host) : h.host.includes(":") ? `[${h.host}]` : h.host;
      return `postgresql://${encodeURIComponent(user)}@${host}:${h.port}/${encodeURIComponent(t.database)}${query}`;
    })
    .join(" ");
}

/**
 * The pgsql: table file for Postfix hosts that ask PostgreSQL directly. No
 * password is written: the Postfix role should log in over the unix socket
 * (peer) or the operator adds it to the URI, in a file only root and Postfix
 * read.
 */
export function postfixPgsqlFile(config: ServerConfig, opts: { user?: string; path?: string } = {}): string {
  if (!storeKindOf(config).shared) {
    throw usageError(`${config.path}: database is not set, so leases are in SQLite and Postfix cannot query them`, 'set database = "postgres://..." in server.toml first (see relayctl server migrate)');
  }
  const t = pgTarget(config.database!);
  const user = opts.user ?? t.username;
  const path = opts.path ?? "/etc/postfix/relayctl-pgsql.cf";
  const regexp = join(dirname(path), "relayctl-exact.regexp");
  const table = exactTable(path, regexp);
  return [
    `# Postfix pgsql: table for relayctl leases, from \`relayctl server postfix-pgsql\`.`,
    `# Install as ${path}, mode 0640 root:postfix. The role needs only:`,
    `#   GRANT CONNECT ON DATABASE ${t.database} TO ${user};`,
    `#   GRANT USAGE ON SCHEMA ${SCHEMA} TO ${user};`,
    `#   GRANT SELECT ON ${SCHEMA}.leases TO ${user};`,
    `# check_client_access also looks up parent networks of a client: 2001:db8:5::9:1`,
    `# is looked up as 2001:db8:5::9 too. The query refuses every key that could be`,
    `# such a cut, so this table never widens a lease; but used bare, it also refuses`,
    `# IPv6 clients written with an inner "::" (2001:db8:5::9): they do not relay.`,
    `# So use it behind a regexp stage, which Postfix never asks for parent networks`,
    `# and which marks its keys as whole addresses. Create ${regexp}`,
    `# holding the one line`,
    `#   ${EXACT_REGEXP}`,
    `# and never list that file anywhere else: alone it answers for every client`,
    `# address, so in mynetworks it would relay for everyone (relayctl doctor fails it).`,
    `# Hook the pair in one of two ways (main.cf):`,
    `#   smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, permit_auth_destination,`,
    `#       check_client_access ${table}, reject_unauth_destination`,
    `#   (a database outage defers only relaying: 451 4.3.5; mail to local domains still arrives)`,
    `# or: mynetworks = 127.0.0.0/8, ${table}`,
    `#   (simpler, but a database outage then defers ALL inbound mail: 451 4.3.0)`,
    `# Postfix 3.7-3.9 keep failing for retry_interval (60 s) after the database returns.`,
    `hosts = ${pgsqlHosts(t, user)}`,
    `# Required by Postfix 3.7 even when hosts is a URI.`,
    `dbname = ${t.database}`,
    `query = ${PGSQL_QUERY}`,
    "",
  ].join("\n");
}

/** What `server migrate` did: rows copied (existing ones kept), and the line to put in server.toml. */
export interface MigrateResult {
  clients: number;
  leases: number;
  audit: number;
  skipped: { clients: number; leases: number; audit: number };
  configLine: string;
}

/** Rows per INSERT of the bulk copy: big enough that round trips do not count, small enough for steady progress. */
const CHUNK = 10_000;

/** Writes "what: done/total" over itself on stderr, only when stderr is a terminal. */
function terminalProgress(): ((what: string, done: number, total: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  return (what, done, total) => process.stderr.write(`\rrelayctl: copying ${what}: ${done.toLocaleString("en-US")} of ${total.toLocaleString("en-US")}${done === total ? "\n" : ""}`);
}

/** Inserts rows in chunks, each one statement over unnest()ed column arrays; returns how many were inserted. */
async function insertChunks<T>(q: SQL, rows: T[], sql: string, columns: (chunk: T[]) => unknown[], what: string, progress?: (what: string, done: number, total: number) => void): Promise<number> {
  let inserted = 0;
  for (let i = 0; i < rows.length; i += CHUNK) {
    const chunk = rows.slice(i, i + CHUNK);
    const [r] = (await q.unsafe(`WITH ins AS (${sql} RETURNING 1) SELECT count(*)::int AS n FROM ins`, columns(chunk) as never[])) as { n: number }[];
    inserted += Number(r!.n);
    progress?.(what, Math.min(i + CHUNK, rows.length), rows.length);
  }
  return inserted;
}

const ms = (col: string): string => `to_timestamp(${col} / 1000)`;

/**
 * Copies clients (hashed tokens only), leases and the audit log from the
 * SQLite state into PostgreSQL, creating the schema, in ONE transaction:
 * a failure or a kill half-way leaves the database as it was. Rows go in
 * chunks of CHUNK per statement (1,000,000 leases row by row took minutes).
 * Rows already there are kept, so running it twice copies nothing twice.
 * Expired leases are not copied: they would never relay again. Progress goes
 * to stderr when it is a terminal.
 */
export async function migrateToPostgres(config: ServerConfig, to: string, progress = terminalProgress()): Promise<MigrateResult> {
  const target = pgTarget(to, "--to");
  if (!target.password && config.databasePasswordFile && config.database) {
    // The same database the config already names may take its password from the file.
    if (pgTarget(config.database).shown === target.shown) target.password = readPasswordFile(config.databasePasswordFile, config.databasePasswordWhere ?? "database_password_file");
  }
  if (!existsSync(join(config.stateDir, "state.db"))) {
    throw new RelayError(`no SQLite state in ${config.stateDir}`, { exitCode: ExitCode.USAGE, hint: "run migrate on the host whose state_dir holds state.db" });
  }
  const source = new StateStore(config.stateDir);
  const pg = new PgStore(target, systemClock);
  try {
    try {
      await pg.ready();
    } catch (err) {
      throw unavailableError(target.shown, err);
    }
    const clients = source.listClients();
    // The overdue watch's memory: a client silent before the move stays silent (one alert, not a second), and its last renewal shows.
    const watch = new Map(source.watched(true, Date.now()).map((w) => [w.name, w]));
    const leases = source.allLeases().filter((l) => l.expires_at > Date.now());
    const audit = source.auditLog({ limit: Number.MAX_SAFE_INTEGER }).reverse();
    const marker = `migrated from ${config.stateDir}`;
    return await pg.transaction(async (q) => {
      const result: MigrateResult = { clients: 0, leases: 0, audit: 0, skipped: { clients: 0, leases: 0, audit: 0 }, configLine: `database = ${JSON.stringify(target.shown)}` };
      result.clients = await insertChunks(
        q,
        clients,
        `INSERT INTO ${SCHEMA}.clients (name, token_id, token_hash, ttl, allow, created_at, ipv6_prefix, expect, overdue_state, last_seen, last_ip)
         SELECT n, i, decode(h, 'hex'), t, a, ${ms("c")}, p, x, o, ${ms("s")}, l
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::float8[], $7::int[], $8::int[], $9::text[], $10::float8[], $11::text[]) AS u(n, i, h, t, a, c, p, x, o, s, l)
         ON CONFLICT DO NOTHING`,
        (c) => [
          c.map((x) => x.name),
          c.map((x) => x.token_id),
          c.map((x) => Buffer.from(x.token_hash).toString("hex")),
          c.map((x) => x.ttl),
          c.map((x) => x.allow.stored),
          c.map((x) => x.created_at),
          c.map((x) => x.ipv6_prefix),
          c.map((x) => x.expect ?? null),
          c.map((x) => watch.get(x.name)?.state ?? "ok"),
          c.map((x) => watch.get(x.name)?.last_seen ?? null),
          // watched() parsed it again: a text that does not parse arrives as null, never pasted.
          c.map((x) => watch.get(x.name)?.last_ip ?? null),
        ],
        "clients",
        progress,
      );
      // A lease whose client was not copied (a name clash kept the other one's) stays behind, as before.
      result.leases = await insertChunks(
        q,
        leases,
        `INSERT INTO ${SCHEMA}.leases (client, family, net, granted_at, renewed_at, expires_at, renewals)
         SELECT c, f, n::cidr, ${ms("g")}, ${ms("r")}, ${ms("e")}, k FROM unnest($1::text[], $2::int[], $3::text[], $4::float8[], $5::float8[], $6::float8[], $7::int[]) AS u(c, f, n, g, r, e, k)
         WHERE EXISTS (SELECT 1 FROM ${SCHEMA}.clients WHERE name = u.c)
         ON CONFLICT (client, family) DO NOTHING`,
        (c) => [c.map((x) => x.client), c.map((x) => x.family), c.map((x) => cidrText(x.ip)), c.map((x) => x.granted_at), c.map((x) => x.renewed_at), c.map((x) => x.expires_at), c.map((x) => x.renewals)],
        "leases",
        progress,
      );
      // The audit log is copied once: a marker row says it was, so a second run adds nothing.
      const [done] = (await q.unsafe(`SELECT count(*)::int AS n FROM ${SCHEMA}.audit WHERE event = 'migrate' AND detail = $1`, [marker])) as { n: number }[];
      if (Number(done!.n) > 0) result.skipped.audit = audit.length;
      else {
        audit.push({ id: 0, ts: Date.now(), event: "migrate", client: null, ip: null, source: null, detail: marker, count: 1 });
        result.audit =
          (await insertChunks(
            q,
            audit,
            `INSERT INTO ${SCHEMA}.audit (ts, event, client, ip, source, detail, count)
             SELECT ${ms("t")}, e, c, i, s, d, n FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[]) AS u(t, e, c, i, s, d, n)`,
            (c) => [c.map((x) => x.ts), c.map((x) => x.event), c.map((x) => x.client), c.map((x) => x.ip), c.map((x) => x.source), c.map((x) => x.detail), c.map((x) => x.count)],
            "audit rows",
            progress,
          )) - 1;
      }
      result.skipped.clients = clients.length - result.clients;
      result.skipped.leases = leases.length - result.leases;
      return result;
    });
  } finally {
    source.close();
    await pg.close();
  }
}
