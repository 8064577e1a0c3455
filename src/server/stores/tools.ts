import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { checkDatabaseUrl, type ServerConfig } from "../../lib/config.ts";
import { ExitCode, RelayError, usageError } from "../../lib/errors.ts";
import { systemClock } from "../../lib/clock.ts";
import { StateStore } from "../state.ts";
import { PgStore, pgTarget, readPasswordFile, SCHEMA, type PgTarget } from "./postgres.ts";
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

/** The `hosts =` value for a target: a postgresql:// URI, the socket directory percent-encoded as the host. */
export function pgsqlHosts(t: PgTarget, user: string): string {
  const host = t.socketDir ? encodeURIComponent(t.socketDir) : t.hostname.includes(":") ? `[${t.hostname}]` : t.hostname;
  const query = t.sslmode ? `?sslmode=${encodeURIComponent(t.sslmode)}` : "";
  return `postgresql://${encodeURIComponent(user)}@${host}:${t.port}/${encodeURIComponent(t.database)}${query}`;
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

/**
 * Copies clients (hashed tokens only), leases and the audit log from the
 * SQLite state into PostgreSQL, creating the schema. Rows already there are
 * kept, so running it twice copies nothing twice. Expired leases are not
 * copied: they would never relay again.
 */
export async function migrateToPostgres(config: ServerConfig, to: string): Promise<MigrateResult> {
  checkDatabaseUrl(to, "--to");
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
    const result: MigrateResult = { clients: 0, leases: 0, audit: 0, skipped: { clients: 0, leases: 0, audit: 0 }, configLine: `database = ${JSON.stringify(target.shown)}` };
    const clients = source.listClients();
    const leases = source.allLeases().filter((l) => l.expires_at > Date.now());
    const audit = source.auditLog({ limit: Number.MAX_SAFE_INTEGER }).reverse();
    await pg.tx(async (t) => {
      for (const c of clients) {
        if (await t.getClient(c.name)) result.skipped.clients++;
        else {
          await t.insertClient(c);
          result.clients++;
        }
      }
      for (const l of leases) {
        const have = (await t.leasesOf(l.client)).some((x) => x.family === l.family);
        if (have || !(await t.getClient(l.client))) result.skipped.leases++;
        else {
          await t.upsertLease(l);
          result.leases++;
        }
      }
    });
    // The audit log is copied once: a marker row says it was, so a second run adds nothing.
    const marker = `migrated from ${config.stateDir}`;
    const done = (await pg.auditLog({ limit: 1_000_000 })).some((r) => r.event === "migrate" && r.detail === marker);
    if (done) result.skipped.audit = audit.length;
    else {
      await pg.tx(async (t) => {
        for (const a of audit) await t.audit({ ts: a.ts, event: a.event, client: a.client, ip: a.ip, source: a.source, detail: a.detail, count: a.count });
        await t.audit({ ts: Date.now(), event: "migrate", client: null, ip: null, source: null, detail: marker });
      });
      result.audit = audit.length;
    }
    return result;
  } finally {
    source.close();
    await pg.close();
  }
}
