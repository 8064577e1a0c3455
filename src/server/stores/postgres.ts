import { SQL } from "bun";
import { readFileSync, statSync } from "node:fs";
import type { ServerConfig } from "../../lib/config.ts";
import { checkDatabaseUrl, type DatabaseHost } from "../../lib/config.ts";
import { ExitCode, RelayError, usageError } from "../../lib/errors.ts";
import { leaseText, parseCidr } from "../../lib/ip.ts";
import type { IndexTuple } from "../live.ts";
import { log } from "../../lib/logging.ts";
import type { Clock } from "../../lib/clock.ts";
import { parseAllowList } from "../allow.ts";
import type { AuditRow, ClientRow, LeaseRow } from "../state.ts";
import { foldWatched, LATE_AFTER_INTERVALS, MIN_LEARNED_MS, type Watched } from "../overdue.ts";
import { StoreUnavailable, type AuditEntry, type AuditPageFilter, type ChangeBatch, type ChangePosition, type Store, type StoreTx } from "./index.ts";

/**
 * The channel a committed lease change wakes the other hosts on. The payload
 * is empty: any role that may connect can LISTEN, so a notice says only
 * "read the change log"; it never names a client. NOTIFY sends one notice per
 * transaction however many rows it changed (PostgreSQL folds duplicates), so
 * a group commit of many changes is one wake-up.
 */
export const CHANNEL = "relayctl_leases";
/**
 * How often each host reads the change log anyway: a notice lost (LISTEN
 * reconnecting) delays a change by at most this, and an idle read costs one
 * index probe. Each successful read is also what says "this host is current".
 */
export const POLL_MS = 1_000;
/**
 * How long change rows are kept. A host whose last read of the log is older
 * than this (it was cut off) cannot know what it missed and reloads
 * everything instead; so does one that switched hosts (failover).
 */
export const CHANGES_KEEP_MS = 3_600_000;
/** A catch-up touching more clients than this reloads everything instead (one query beats thousands of probes). */
export const CATCH_UP_MAX_CLIENTS = 1_000;
/** Advisory lock key held while the schema is created or migrated ("relayctl" in ASCII, as a bigint). */
const SCHEMA_LOCK = 0x72656c6179637478n;
/** Seconds a connection attempt to one host may take, so a dead host in the list costs at most this. */
const CONNECT_TIMEOUT_S = 3;
/** How often a host prunes the change log (and leaves a mark for the next prune). */
const PRUNE_MS = 300_000;
/**
 * A follower whose last read is within this share of the keep time of being
 * too old reloads everything: the margin (a minute of an hour) covers a
 * mark's snapshot being taken a moment after its recorded time (maintain()).
 */
const KEEP_MARGIN = 1 / 60;
/** Connections an admin command opens (the least a PgStore works with: one for commits, one for reads, one spare). */
const BRIEF_POOL = 3;
/** Most transactions sharing one COMMIT: bounds how long the first of them waits. */
const MAX_BATCH = 64;

/** A transaction waiting for its batch. */
interface PendingTx {
  fn: (t: StoreTx) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

/** The schema holding every relayctl object; all SQL names it, so no search_path can redirect a name. */
export const SCHEMA = "relayctl";

/**
 * Which lease changes are logged (relayctl.changes) and wake the other hosts.
 * A NOTIFY takes a database-wide lock at commit, which serialises every
 * committing transaction, so a plain renewal (only renewed_at, expires_at
 * growing, renewals) neither logs nor notifies: another host that has not
 * seen it still holds the older, earlier expiry, so at worst it stops relaying
 * early (fail closed) until the client's next change or its periodic full
 * reconcile (Follower). Everything else is logged: a grant, a new address, a
 * re-grant (granted_at moves), an expiry moved earlier, a delete of a live
 * lease. A delete of an expired lease (expiry by any host) is not: every host
 * already dropped it by its own clock. Inserts and deletes are handled once
 * per statement, over a transition table: server migrate's million-row
 * INSERT logs one "everything" row (a full reload), not a million.
 */
const TRIGGERS = `
   CREATE TRIGGER leases_added AFTER INSERT ON ${SCHEMA}.leases
     REFERENCING NEW TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION ${SCHEMA}.leases_touched();
   CREATE TRIGGER leases_removed AFTER DELETE ON ${SCHEMA}.leases
     REFERENCING OLD TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION ${SCHEMA}.leases_touched();
   CREATE TRIGGER leases_moved AFTER UPDATE ON ${SCHEMA}.leases
     FOR EACH ROW WHEN (OLD.client IS DISTINCT FROM NEW.client OR OLD.family IS DISTINCT FROM NEW.family
       OR OLD.net IS DISTINCT FROM NEW.net OR OLD.granted_at IS DISTINCT FROM NEW.granted_at
       OR NEW.expires_at < OLD.expires_at)
     EXECUTE FUNCTION ${SCHEMA}.lease_changed();
   CREATE TRIGGER leases_truncated AFTER TRUNCATE ON ${SCHEMA}.leases
     FOR EACH STATEMENT EXECUTE FUNCTION ${SCHEMA}.lease_changed();`;

/**
 * The statement-level change rows for inserts and deletes: one per live lease
 * the statement touched, or one "everything" row past CATCH_UP_MAX_CLIENTS.
 */
const TOUCHED = `
   CREATE OR REPLACE FUNCTION ${SCHEMA}.leases_touched() RETURNS trigger
     LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
   DECLARE n integer;
   BEGIN
     SELECT count(*) INTO n FROM (SELECT 1 FROM touched WHERE TG_OP = 'INSERT' OR expires_at > now() LIMIT ${CATCH_UP_MAX_CLIENTS + 1}) t;
     IF n = 0 THEN RETURN NULL; END IF;
     IF n > ${CATCH_UP_MAX_CLIENTS} THEN
       INSERT INTO ${SCHEMA}.changes (op) VALUES ('all');
     ELSE
       INSERT INTO ${SCHEMA}.changes (op, client) SELECT 'lease', client FROM touched WHERE TG_OP = 'INSERT' OR expires_at > now();
     END IF;
     PERFORM pg_notify('${CHANNEL}', '');
     RETURN NULL;
   END $$;`;

/** The row-level change rows for updates that alter an answer, and "everything" for TRUNCATE. */
const CHANGED = `
   CREATE OR REPLACE FUNCTION ${SCHEMA}.lease_changed() RETURNS trigger
     LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
   BEGIN
     IF TG_OP = 'UPDATE' THEN
       INSERT INTO ${SCHEMA}.changes (op, client) VALUES ('lease', NEW.client);
       IF OLD.client <> NEW.client THEN INSERT INTO ${SCHEMA}.changes (op, client) VALUES ('lease', OLD.client); END IF;
     ELSE
       INSERT INTO ${SCHEMA}.changes (op) VALUES ('all');
     END IF;
     PERFORM pg_notify('${CHANNEL}', '');
     RETURN NULL;
   END $$;`;

/**
 * The change log. Ids come from a sequence, so they are not in commit order:
 * a transaction may take id 7 and commit after another took 8. Readers
 * therefore never trust "everything up to the highest id seen": each read
 * also records its snapshot, and the next read asks for rows past that id OR
 * written by a transaction the snapshot saw as running (its xip list) or not
 * yet started (txid >= its xmax); see PgStore.changes. `txid` is the writing
 * transaction's id (an xid8: never wraps). change_marks remembers, for pruning,
 * which transactions had all finished at a given time.
 * Enrolling or removing a client is logged too ('client'), for the client
 * count in /metrics; it wakes nobody.
 */
const CHANGE_LOG = `
   CREATE TABLE IF NOT EXISTS ${SCHEMA}.changes (
     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
     txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
     at timestamptz NOT NULL DEFAULT now(),
     op text NOT NULL CHECK (op IN ('lease', 'client', 'all')),
     client text
   );
   CREATE INDEX IF NOT EXISTS changes_txid ON ${SCHEMA}.changes (txid);
   CREATE TABLE IF NOT EXISTS ${SCHEMA}.change_marks (at timestamptz NOT NULL, oldest xid8 NOT NULL);
   CREATE OR REPLACE FUNCTION ${SCHEMA}.clients_touched() RETURNS trigger
     LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
   BEGIN
     INSERT INTO ${SCHEMA}.changes (op, client) SELECT 'client', name FROM touched LIMIT 1;
     RETURN NULL;
   END $$;
   DROP TRIGGER IF EXISTS clients_added ON ${SCHEMA}.clients;
   DROP TRIGGER IF EXISTS clients_removed ON ${SCHEMA}.clients;
   CREATE TRIGGER clients_added AFTER INSERT ON ${SCHEMA}.clients
     REFERENCING NEW TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION ${SCHEMA}.clients_touched();
   CREATE TRIGGER clients_removed AFTER DELETE ON ${SCHEMA}.clients
     REFERENCING OLD TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION ${SCHEMA}.clients_touched();`;

/**
 * Functions and triggers, for a new database and for the move from version 1.
 * Both functions pin search_path: they run for Postfix's role too.
 */
const ROUTINES = `
   -- The key Postfix looks up, as an address, or NULL (which matches no lease).
   -- Postfix looks up client hostnames too ("unknown"), and check_client_access
   -- also looks up parent networks: it cuts the client address at its last
   -- ':' ('.'), so 2001:db8:5::9:1 is also looked up as 2001:db8:5::9. A cut
   -- that is a valid address always has "::" before its end, and a cut of an
   -- IPv4 address has fewer than four parts; such keys are refused. The cost:
   -- looked up bare, an IPv6 client written with an inner "::" matches
   -- nothing. Keys marked "exact:" come from the pipemap regexp stage, which
   -- Postfix never asks for parent networks; they are taken whole.
   CREATE FUNCTION ${SCHEMA}.client_address(k text) RETURNS inet
     LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
   DECLARE a text := k;
   BEGIN
     IF a LIKE 'exact:%' THEN a := substr(a, 7);
     ELSIF a ~ '::.' THEN RETURN NULL;
     END IF;
     IF a !~ '^([0-9]{1,3}([.][0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)$' THEN RETURN NULL; END IF;
     RETURN a::inet;
   EXCEPTION WHEN invalid_text_representation THEN RETURN NULL;
   END $$;
   -- Every change to a lease that alters a lookup answer, by relayctl or by hand, reaches every server's lookup.
   ${CHANGED}
   ${TOUCHED}
   ${TRIGGERS}`;

/**
 * Room left in each page of leases, so a renewal's new row version fits
 * beside the old one: with no index on the columns a renewal changes, it is
 * a HOT update (no index write). Expiry scans the table instead of an index
 * on expires_at (which would make every renewal write it).
 */
const FILLFACTOR = 80;

/** The tables as version 1 had them (unqualified there), less the expiry index version 3 dropped. */
export const PG_TABLES = `
   CREATE TABLE ${SCHEMA}.clients (
     name text PRIMARY KEY,
     token_id text NOT NULL UNIQUE,
     token_hash bytea NOT NULL,
     ttl integer,
     allow text NOT NULL DEFAULT '[]',
     created_at timestamptz NOT NULL,
     ipv6_prefix integer
   );
   CREATE TABLE ${SCHEMA}.leases (
     client text NOT NULL REFERENCES ${SCHEMA}.clients(name) ON DELETE CASCADE,
     family smallint NOT NULL CHECK (family IN (4, 6)),
     net cidr NOT NULL,
     granted_at timestamptz NOT NULL,
     renewed_at timestamptz NOT NULL,
     expires_at timestamptz NOT NULL,
     renewals integer NOT NULL DEFAULT 0,
     PRIMARY KEY (client, family),
     CHECK (family(net) = family),
     -- relayctl leases an IPv4 address or an IPv6 /48../128, never wider: a
     -- row written by hand or by a bug can never open the relay to a network.
     CHECK ((family = 4 AND masklen(net) = 32) OR (family = 6 AND masklen(net) >= 48))
   ) WITH (fillfactor = ${FILLFACTOR});
   CREATE INDEX leases_net_gist ON ${SCHEMA}.leases USING gist (net inet_ops);
   CREATE TABLE ${SCHEMA}.audit (
     id bigserial PRIMARY KEY,
     ts timestamptz NOT NULL,
     event text NOT NULL,
     client text,
     ip text,
     source text,
     detail text,
     count integer NOT NULL DEFAULT 1
   );
   CREATE INDEX audit_ts ON ${SCHEMA}.audit (ts);`;

/**
 * Overdue watch (version 4): the expected interval (--expect), the state last
 * alerted, the last renewal and address kept for when the lease is pruned.
 * Written at transitions and expiries, never per renewal; not indexed.
 */
const OVERDUE_COLUMNS = `
   ALTER TABLE ${SCHEMA}.clients ADD COLUMN IF NOT EXISTS expect integer,
     ADD COLUMN IF NOT EXISTS overdue_state text NOT NULL DEFAULT 'ok',
     ADD COLUMN IF NOT EXISTS last_seen timestamptz,
     ADD COLUMN IF NOT EXISTS last_ip text;`;

/** A new database: every object in its own schema, at the current version. */
const CREATE = `
   CREATE SCHEMA IF NOT EXISTS ${SCHEMA};
   CREATE TABLE ${SCHEMA}.relayctl_schema (version integer NOT NULL);
   ${PG_TABLES}
   ${CHANGE_LOG}
   ${ROUTINES}
   ${OVERDUE_COLUMNS}`;

/** Quotes an identifier read from the catalog (the schema version 1 was created in). */
const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;

/**
 * Upgrades of an existing database, by the version they start from.
 * Version 1 had every object unqualified in the owner's first schema
 * (usually public), its Postfix function answered parent-network keys, and
 * its notices named clients. The old version table stays behind holding the
 * new number, so a relay host still on version 1 refuses the database
 * instead of creating a second, empty one; and the old function is dropped,
 * so an old Postfix query fails (Postfix defers) instead of widening.
 */
const UPGRADES: Record<number, (legacy: string) => string> = {
  1: (legacy) => {
    const l = ident(legacy);
    // A role whose own schema was named relayctl already had version 1 there: nothing to move.
    const move =
      legacy === SCHEMA
        ? ""
        : `CREATE SCHEMA IF NOT EXISTS ${SCHEMA};
   CREATE TABLE ${SCHEMA}.relayctl_schema (version integer NOT NULL);
   ALTER TABLE ${l}.clients SET SCHEMA ${SCHEMA};
   ALTER TABLE ${l}.leases SET SCHEMA ${SCHEMA};
   ALTER TABLE ${l}.audit SET SCHEMA ${SCHEMA};
   UPDATE ${l}.relayctl_schema SET version = 2;`;
    return `
   DROP TRIGGER leases_changed ON ${l}.leases;
   DROP TRIGGER leases_truncated ON ${l}.leases;
   DROP FUNCTION ${l}.relayctl_lease_changed();
   DROP FUNCTION ${l}.relayctl_inet(text);
   ${move}
   ${ROUTINES}`;
  },
  // Version 3: renewals are HOT updates that notify nobody (see TRIGGERS, FILLFACTOR).
  2: () => `
   DROP TRIGGER IF EXISTS leases_changed ON ${SCHEMA}.leases;
   DROP TRIGGER IF EXISTS leases_added ON ${SCHEMA}.leases;
   DROP TRIGGER IF EXISTS leases_removed ON ${SCHEMA}.leases;
   DROP TRIGGER IF EXISTS leases_moved ON ${SCHEMA}.leases;
   DROP TRIGGER IF EXISTS leases_truncated ON ${SCHEMA}.leases;
   DROP FUNCTION IF EXISTS ${SCHEMA}.leases_touched();
   ${TOUCHED}
   DROP INDEX IF EXISTS ${SCHEMA}.leases_expiry;
   ALTER TABLE ${SCHEMA}.leases SET (fillfactor = ${FILLFACTOR});
   ${TRIGGERS}`,
  // Version 4: the change log, which hosts read instead of reloading every lease on each notice.
  3: () => `
   ${CHANGE_LOG}
   ${CHANGED}
   ${TOUCHED}`,
  // Version 5: what the overdue check keeps per client (expected interval, state, last seen and address).
  4: () => OVERDUE_COLUMNS,
};

/** The schema version this build writes; a newer database is refused rather than misread. */
export const PG_SCHEMA_VERSION = 5;

/** Connection settings taken apart from `database`, so the password never travels in a URL we log. */
export interface PgTarget {
  /** The first host (the only one, usually). */
  hostname: string;
  port: number;
  username: string;
  password?: string;
  database: string;
  /** The first host's unix socket directory (`?host=/var/run/postgresql`). */
  socketDir?: string;
  /** Every host in the order they are tried; the first that accepts writes is used. */
  hosts: DatabaseHost[];
  sslmode?: string;
  /** Connections to the database (`?pool_size=`): group commits run on all but two, reads and LISTEN on the rest. */
  poolSize: number;
  /** The URL without its password, for messages. */
  shown: string;
}

/** Parses a `database` URL (already checked by the config loader) into connection settings. */
export function pgTarget(url: string, where = "database"): PgTarget {
  const { hosts, url: u, shown } = checkDatabaseUrl(url, where);
  const sslmode = u.searchParams.get("sslmode") ?? undefined;
  for (const key of u.searchParams.keys()) {
    if (!["sslmode", "target_session_attrs", "pool_size"].includes(key)) {
      throw usageError(`${where}: unknown URL parameter "${key}"`, "relayctl understands ?host=/socket/dir, ?port=, ?sslmode=, ?target_session_attrs=read-write and ?pool_size=");
    }
  }
  const pool = u.searchParams.get("pool_size");
  const poolSize = pool === null ? 10 : Number(pool);
  if (!Number.isInteger(poolSize) || poolSize < 3 || poolSize > 100) throw usageError(`${where}: pool_size=${pool} must be a whole number from 3 to 100`, "10 (the default) suits most relays; a few more for thousands of renewals a second");
  const first = hosts[0]!;
  return {
    hostname: first.socket ? "localhost" : first.host,
    port: first.port,
    username: decodeURIComponent(u.username) || "relayctl",
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: decodeURIComponent(u.pathname.slice(1)),
    socketDir: first.socket ? first.host : undefined,
    hosts,
    sslmode,
    poolSize,
    shown,
  };
}

/** Reads database_password_file, refusing one that others may read: the password would not be secret. */
export function readPasswordFile(path: string, where: string): string {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw usageError(`${where}: cannot read ${path}: ${(err as Error).message}`, "create it with the password on one line, mode 0600");
  }
  if (!st.isFile()) throw usageError(`${where}: ${path} is not a plain file`);
  if ((st.mode & 0o077) !== 0) {
    throw usageError(`${where}: ${path} has mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}; others could read the database password`, `chmod 600 ${path}`);
  }
  try {
    return readFileSync(path, "utf8").replace(/\r?\n$/, "");
  } catch (err) {
    throw usageError(`${where}: cannot read ${path}: ${(err as Error).message}`, "run as the user that owns it (root or the relayctl user)");
  }
}

/** No host in `database` answered as read-write: all down, or all standbys (a failover in progress). */
export class NoWritableHost extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoWritableHost";
  }
}

/** True when an error means "the database cannot be reached right now" rather than "this statement is wrong". */
export function unreachable(err: unknown): boolean {
  const e = err as { code?: string; errno?: string };
  if (typeof e?.code === "string" && e.code.startsWith("ERR_POSTGRES_") && e.code !== "ERR_POSTGRES_SERVER_ERROR") return true;
  if (err instanceof NoWritableHost) return true;
  // Connection exceptions (08), shutdown and "starting up" (57P..), out of resources (53),
  // and a host that no longer takes writes (25006: it was demoted, or is a standby).
  const state = typeof e?.errno === "string" ? e.errno : "";
  return /^(08|53|57P|25006)/.test(state) || (typeof e?.code === "string" && /^E(CONNREFUSED|NOENT|CONNRESET|PIPE|TIMEDOUT|HOSTUNREACH)$/.test(e.code));
}

const IP_SQL = `CASE WHEN masklen(net) = CASE family(net) WHEN 4 THEN 32 ELSE 128 END THEN host(net) ELSE text(net) END`;
// date_part is float8 throughout; extract() goes through numeric, which cost 0.3 s of every 1,000,000 rows read.
const MS = (col: string): string => `(date_part('epoch', ${col}) * 1000)`;
const LEASE_COLS = `client, family::int AS family, ${IP_SQL} AS ip, ${MS("granted_at")} AS granted_at, ${MS("renewed_at")} AS renewed_at, ${MS("expires_at")} AS expires_at, renewals`;
const CLIENT_COLS = `name, token_id, token_hash, ttl, allow, ${MS("created_at")} AS created_at, ipv6_prefix, expect`;
const AUDIT_COLS = `id::float8 AS id, ${MS("ts")} AS ts, event, client, ip, source, detail, count`;

type Row = Record<string, unknown>;

/**
 * How far a follower has read the change log: the highest id seen, the
 * snapshot that read ran in (as text), the database time of that read, and
 * the pool it ran on (a switch of host reloads everything).
 */
interface PgPosition {
  epoch: number;
  id: bigint;
  snap: string;
  at: number;
}

function leaseRow(r: Row): LeaseRow {
  const ip = String(r.ip);
  // The database's spelling of an IPv6 network may differ from ours: compare like with like.
  const net = parseCidr(ip);
  return {
    client: String(r.client),
    family: Number(r.family),
    ip: net ? leaseText(net) : ip,
    granted_at: Math.round(Number(r.granted_at)),
    renewed_at: Math.round(Number(r.renewed_at)),
    expires_at: Math.round(Number(r.expires_at)),
    renewals: Number(r.renewals),
  };
}

function clientRow(r: Row): ClientRow {
  return {
    name: String(r.name),
    token_id: String(r.token_id),
    token_hash: new Uint8Array(r.token_hash as Uint8Array),
    ttl: r.ttl === null ? null : Number(r.ttl),
    allow: parseAllowList(String(r.allow)),
    created_at: Math.round(Number(r.created_at)),
    ipv6_prefix: r.ipv6_prefix === null ? null : Number(r.ipv6_prefix),
    expect: r.expect === null || r.expect === undefined ? null : Number(r.expect),
  };
}

function auditRow(r: Row): AuditRow {
  return { id: Number(r.id), ts: Math.round(Number(r.ts)), event: String(r.event), client: r.client as string | null, ip: r.ip as string | null, source: r.source as string | null, detail: r.detail as string | null, count: Number(r.count) };
}

/** The lease's network as PostgreSQL's cidr takes it (also for server migrate's bulk copy). */
export const cidrText = (ip: string): string => parseCidr(ip)?.text ?? ip;

/** Runs the statements of one transaction (or plain queries, with `sql` itself). */
function statements(q: SQL, now: number): StoreTx {
  const all = async (text: string, params: unknown[] = []): Promise<Row[]> => [...((await q.unsafe(text, params as never[])) as Row[])];
  return {
    now,
    getClient: async (name) => (await all(`SELECT ${CLIENT_COLS} FROM ${SCHEMA}.clients WHERE name = $1`, [name])).map(clientRow)[0] ?? null,
    lockClient: async (name) => (await all(`SELECT ${CLIENT_COLS} FROM ${SCHEMA}.clients WHERE name = $1 FOR UPDATE`, [name])).map(clientRow)[0] ?? null,
    insertClient: async (c) =>
      void (await all(`INSERT INTO ${SCHEMA}.clients (name, token_id, token_hash, ttl, allow, created_at, ipv6_prefix) VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000), $7)`, [
        c.name, c.token_id, Buffer.from(c.token_hash), c.ttl, c.allow.stored, c.created_at, c.ipv6_prefix,
      ])),
    updateClient: async (name, ttl, allow, p) => void (await all(`UPDATE ${SCHEMA}.clients SET ttl = $1, allow = $2, ipv6_prefix = $3 WHERE name = $4`, [ttl, allow.stored, p, name])),
    setToken: async (name, id, hash) => (await all(`UPDATE ${SCHEMA}.clients SET token_id = $1, token_hash = $2 WHERE name = $3 RETURNING name`, [id, Buffer.from(hash), name])).length > 0,
    deleteClient: async (name) => (await all(`DELETE FROM ${SCHEMA}.clients WHERE name = $1 RETURNING name`, [name])).length > 0,
    leasesOf: async (client) => (await all(`SELECT ${LEASE_COLS} FROM ${SCHEMA}.leases WHERE client = $1 ORDER BY family`, [client])).map(leaseRow),
    // FOR UPDATE, as lockClient: a server edit holding the client's row is waited for and its committed row is what the
    // guard compares; the full path after it then needs no stronger lock (two renewals upgrading a share would deadlock).
    extendLease: async (client, family, ip, now, at) =>
      (
        await all(
          `UPDATE ${SCHEMA}.leases SET renewed_at = to_timestamp($1::float8 / 1000), expires_at = to_timestamp($2::float8 / 1000), renewals = renewals + 1
           WHERE client = $3 AND family = $4 AND net = $5::cidr AND expires_at > to_timestamp($1::float8 / 1000)
           AND EXISTS (SELECT 1 FROM ${SCHEMA}.clients WHERE name = $3 AND allow = $6 AND ttl IS NOT DISTINCT FROM $7::int AND ipv6_prefix IS NOT DISTINCT FROM $8::int FOR UPDATE)
           RETURNING ${LEASE_COLS}`,
          [now, at, client.name, family, cidrText(ip), client.allow.stored, client.ttl, client.ipv6_prefix],
        )
      ).map(leaseRow)[0] ?? null,
    upsertLease: async (l) =>
      void (await all(
        `INSERT INTO ${SCHEMA}.leases (client, family, net, granted_at, renewed_at, expires_at, renewals)
         VALUES ($1, $2, $3::cidr, to_timestamp($4::float8 / 1000), to_timestamp($5::float8 / 1000), to_timestamp($6::float8 / 1000), $7)
         ON CONFLICT (client, family) DO UPDATE SET net = excluded.net, granted_at = excluded.granted_at, renewed_at = excluded.renewed_at, expires_at = excluded.expires_at, renewals = excluded.renewals`,
        [l.client, l.family, cidrText(l.ip), l.granted_at, l.renewed_at, l.expires_at, l.renewals],
      )),
    setLeaseExpiry: async (client, family, at) => void (await all(`UPDATE ${SCHEMA}.leases SET expires_at = to_timestamp($1::float8 / 1000) WHERE client = $2 AND family = $3`, [at, client, family])),
    deleteLeasesOf: async (client, family) =>
      (await all(`DELETE FROM ${SCHEMA}.leases WHERE client = $1 AND ($2::int IS NULL OR family = $2::int) RETURNING ${LEASE_COLS}`, [client, family ?? null])).map(leaseRow),
    // The database clock decides, whatever `now` this host computed: every host agrees.
    deleteExpired: async () => (await all(`DELETE FROM ${SCHEMA}.leases WHERE expires_at <= now() RETURNING ${LEASE_COLS}`)).map(leaseRow),
    audit: async (e) =>
      void (await all(`INSERT INTO ${SCHEMA}.audit (ts, event, client, ip, source, detail, count) VALUES (to_timestamp($1::float8 / 1000), $2, $3, $4, $5, $6, $7)`, [
        e.ts, e.event, e.client, e.ip, e.source, e.detail, e.count ?? 1,
      ])),
    setExpect: async (name, expect) => void (await all(`UPDATE ${SCHEMA}.clients SET expect = $1 WHERE name = $2`, [expect, name])),
    moveOverdue: async (name, from, to, seen, ip) =>
      (
        await all(
          `UPDATE ${SCHEMA}.clients SET overdue_state = $1, last_seen = COALESCE(to_timestamp($2::float8 / 1000), last_seen), last_ip = COALESCE($3, last_ip)
           WHERE name = $4 AND overdue_state = $5 RETURNING name`,
          [to, seen, ip, name, from],
        )
      ).length > 0,
    keepSeen: async (gone) => {
      for (const l of gone) {
        await all(`UPDATE ${SCHEMA}.clients SET last_seen = to_timestamp($1::float8 / 1000), last_ip = $2 WHERE name = $3 AND (last_seen IS NULL OR last_seen < to_timestamp($1::float8 / 1000))`, [
          l.renewed_at, l.ip, l.client,
        ]);
      }
    },
  };
}

/**
 * The schema version a database holds, read without creating anything: 0
 * for an empty database, 1 for the unqualified layout (with the schema it
 * is in); a version newer than this build is refused.
 */
async function schemaVersion(q: SQL): Promise<{ version: number; legacy?: string }> {
  const [where] = (await q.unsafe(
    `SELECT to_regclass('${SCHEMA}.relayctl_schema') IS NOT NULL AS current,
            (SELECT array_agg(n.nspname::text) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = 'relayctl_schema' AND c.relkind = 'r' AND n.nspname <> '${SCHEMA}') AS legacy`,
  )) as { current: boolean; legacy: string[] | null }[];
  let version = 0;
  let legacy: string | undefined;
  if (where!.current) {
    version = Number(((await q.unsafe(`SELECT version FROM ${SCHEMA}.relayctl_schema`)) as Row[])[0]?.version ?? 0);
    if (version === 1) legacy = SCHEMA;
  } else if (where!.legacy?.length) {
    if (where!.legacy.length > 1) {
      throw new RelayError(`the database has relayctl tables in several schemas (${where!.legacy.join(", ")})`, {
        exitCode: ExitCode.USAGE,
        hint: "drop the copies relay hosts do not use, keeping the schema whose leases table they write",
      });
    }
    legacy = where!.legacy[0]!;
    version = Number(((await q.unsafe(`SELECT version FROM ${ident(legacy)}.relayctl_schema`)) as Row[])[0]?.version ?? 0);
  }
  if (version > PG_SCHEMA_VERSION) {
    throw new RelayError(`the database has relayctl schema version ${version}, newer than this relayctl knows (${PG_SCHEMA_VERSION})`, {
      exitCode: ExitCode.USAGE,
      hint: "upgrade relayctl on this host to the version the other relay hosts run",
    });
  }
  return { version, legacy };
}

/**
 * Shared state in PostgreSQL, for several relay hosts: leases as cidr with
 * expires_at by the database clock, a change notice on every lease change
 * (a trigger), and the schema created by whichever server comes first.
 */
export class PgStore implements Store {
  readonly kind = "postgres" as const;
  readonly where: string;
  /** The pool on the read-write host, chosen on first use and again after a failure (see pool()). */
  private current: Promise<SQL> | null = null;
  private closed = false;
  private readonly switched = new Set<(sql: SQL) => void>();
  private pending: PendingTx[] = [];
  private workers = 0;
  private schema: Promise<void> | null = null;
  private failure: string | null = null;
  private skewMs = 0;
  private auditChain: Promise<unknown> = Promise.resolve();
  private nextAuditId = 1;
  private readonly auditIds = new Map<number, Promise<number | null>>();
  /** Counts the pools chosen (start, failover, reconnect): a change position from another pool is not trusted. */
  private epoch = 0;
  private prunedAt = 0;

  /** How long change rows are kept (CHANGES_KEEP_MS; shorter in tests). */
  private readonly keepMs: number;

  constructor(
    readonly target: PgTarget,
    private readonly clock: Clock,
    opts: { changesKeepMs?: number } = {},
  ) {
    this.where = target.shown;
    this.keepMs = opts.changesKeepMs ?? CHANGES_KEEP_MS;
  }

  /** A pool on one host of the list. */
  private open(host: DatabaseHost): SQL {
    const t = this.target;
    return new SQL({
      adapter: "postgres",
      hostname: host.socket ? "localhost" : host.host,
      port: host.port,
      username: t.username,
      password: t.password,
      database: t.database,
      path: host.socket ? host.host : undefined,
      tls: (t.sslmode as "require" | undefined) ?? false,
      max: t.poolSize,
      idleTimeout: 60,
      connectionTimeout: CONNECT_TIMEOUT_S,
      // Built-in functions, operators and types come from pg_catalog only, whatever
      // schemas the role may see; relayctl's own objects are always named with theirs.
      connection: { search_path: "pg_catalog, pg_temp" },
    });
  }

  /**
   * Tries the hosts in order, as libpq does with target_session_attrs=read-write,
   * and keeps the first that accepts writes: after a failover the promoted
   * standby, never a host still replaying (which would answer with old leases).
   */
  private async select(): Promise<SQL> {
    const seen: string[] = [];
    for (const host of this.target.hosts) {
      const sql = this.open(host);
      const name = host.socket ? `${host.host} port ${host.port}` : `${host.host}:${host.port}`;
      try {
        const [r] = (await sql.unsafe(`SELECT pg_is_in_recovery() AS standby, current_setting('transaction_read_only') AS ro`)) as Row[];
        if (!r!.standby && r!.ro === "off") {
          if (this.target.hosts.length > 1) log.info(`state: using ${name}, the read-write host of ${this.where}`);
          this.epoch++;
          for (const f of this.switched) f(sql);
          return sql;
        }
        seen.push(`${name} is read-only`);
      } catch (err) {
        if (!unreachable(err)) {
          await sql.close({ timeout: 1 }).catch(() => undefined);
          throw err;
        }
        seen.push(`${name}: ${(err as Error).message}`);
      }
      await sql.close({ timeout: 1 }).catch(() => undefined);
    }
    throw new NoWritableHost(`no host of the database accepts writes (${seen.join("; ")})`);
  }

  /** The pool on the read-write host; chosen again after forget(). */
  private pool(): Promise<SQL> {
    if (this.closed) return Promise.reject(new Error(`the store for ${this.where} is closed`));
    this.current ??= this.select().catch((err) => {
      this.current = null;
      throw err;
    });
    return this.current;
  }

  /** Drops the pool after a connection loss or a read-only answer: the next call looks for the read-write host again. */
  private forget(): void {
    const old = this.current;
    this.current = null;
    void old?.then((sql) => sql.close({ timeout: 1 })).catch(() => undefined);
  }

  /** Opens the database named by config.database; the password comes from the URL or database_password_file. */
  static fromConfig(config: ServerConfig, clock: Clock, opts: { brief?: boolean } = {}): PgStore {
    const target = pgTarget(config.database!);
    // A command that runs a few statements and exits needs no pool of ten: each connection is a backend PostgreSQL forks.
    if (opts.brief) target.poolSize = BRIEF_POOL;
    if (config.databasePasswordFile) target.password = readPasswordFile(config.databasePasswordFile, config.databasePasswordWhere ?? "database_password_file");
    return new PgStore(target, clock);
  }

  /** Creates or migrates the schema once per process (again after a failure). */
  ready(): Promise<void> {
    this.schema ??= this.migrate().catch((err) => {
      this.schema = null;
      throw err;
    });
    return this.schema;
  }

  /**
   * Creates or upgrades the schema, but only when its version is behind: a
   * relay host whose role may only read and write rows starts on a current
   * database without any DDL.
   */
  private async migrate(): Promise<void> {
    const sql = await this.pool();
    if ((await schemaVersion(sql)).version === PG_SCHEMA_VERSION) return;
    try {
      await sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(${SCHEMA_LOCK.toString()}::bigint)`;
        // Another host may have upgraded while we waited for the lock.
        const { version, legacy } = await schemaVersion(tx as unknown as SQL);
        if (version === PG_SCHEMA_VERSION) return;
        if (version === 0) await tx.unsafe(CREATE);
        else for (let v = version; v < PG_SCHEMA_VERSION; v++) await tx.unsafe(UPGRADES[v]!(legacy!));
        await tx.unsafe(`DELETE FROM ${SCHEMA}.relayctl_schema; INSERT INTO ${SCHEMA}.relayctl_schema (version) VALUES (${PG_SCHEMA_VERSION})`);
      });
    } catch (err) {
      if ((err as { errno?: string }).errno !== "42501") throw err;
      throw new RelayError(`role ${this.target.username} may not create or upgrade relayctl's schema in ${this.where}: ${(err as Error).message}`, {
        exitCode: ExitCode.FAILED,
        hint: "run relayctl once with the owner role (see docs/several-relays.md); relay hosts then need only the row grants",
        cause: err,
      });
    }
  }

  /** Runs a database call; "cannot reach it" becomes StoreUnavailable and marks the store degraded until a call works. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      await this.ready();
      const r = await fn();
      if (this.failure) log.info(`state: ${this.where} answers again`);
      this.failure = null;
      return r;
    } catch (err) {
      if (unreachable(err)) {
        const message = (err as Error).message;
        this.forget();
        if (this.failure === null) log.error(`state: cannot reach ${this.where}: ${message}`);
        this.failure = message;
        throw new StoreUnavailable(message);
      }
      throw err;
    }
  }

  private rows(text: string, params: unknown[] = []): Promise<Row[]> {
    return this.call(async () => [...((await (await this.pool()).unsafe(text, params as never[])) as Row[])]);
  }

  /**
   * Runs fn in a transaction. As on SQLite, transactions that arrive together
   * share one (group commit): BEGIN and the database clock in one round trip,
   * each fn's statements, one COMMIT, so a plain renewal costs its one UPDATE
   * plus a share of two round trips, and every caller resolves only after the
   * COMMIT that holds it. Up to poolSize - 2 batches run at once, each on its
   * own connection. There are no SAVEPOINTs (each would cost a round trip):
   * when any fn of a batch throws, or the batch fails as a whole (a deadlock
   * between two batches), it is rolled back and each fn runs again alone.
   * That is safe because a fn only acts on what the transaction returned.
   */
  tx<T>(fn: (t: StoreTx) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn: fn as (t: StoreTx) => Promise<unknown>, resolve: resolve as (v: unknown) => void, reject });
      if (this.workers < Math.max(1, this.target.poolSize - 2)) {
        this.workers++;
        void this.work();
      }
    });
  }

  private async work(): Promise<void> {
    try {
      while (this.pending.length) {
        // One turn of the event loop: requests already read join this batch.
        await new Promise<void>((r) => setImmediate(r));
        const batch = this.pending.splice(0, MAX_BATCH);
        if (batch.length) await this.runBatch(batch);
      }
    } finally {
      this.workers--;
    }
  }

  private async runBatch(batch: PendingTx[]): Promise<void> {
    let values: unknown[];
    try {
      values = await this.call(() => this.batchOn(batch));
    } catch (err) {
      if (batch.length === 1 || err instanceof StoreUnavailable) for (const p of batch) p.reject(err);
      else for (const p of batch) await this.runBatch([p]);
      return;
    }
    batch.forEach((p, i) => p.resolve(values[i]));
  }

  private async batchOn(batch: PendingTx[]): Promise<unknown[]> {
    const conn = await (await this.pool()).reserve();
    try {
      const [, [r]] = (await conn.unsafe(`BEGIN; SELECT ${MS("now()")} AS now`)) as unknown as [unknown, Row[]];
      const t = statements(conn as unknown as SQL, Math.floor(Number(r!.now)));
      const values: unknown[] = [];
      try {
        for (const p of batch) values.push(await p.fn(t));
        await conn.unsafe("COMMIT");
      } catch (err) {
        await conn.unsafe("ROLLBACK").catch(() => undefined);
        throw err;
      }
      return values;
    } finally {
      conn.release();
    }
  }

  /**
   * Runs fn in one transaction of its own (server migrate's bulk copy), all
   * or nothing, on the read-write host.
   */
  async transaction<T>(fn: (q: SQL) => Promise<T>): Promise<T> {
    return this.call(async () => (await this.pool()).begin((q) => fn(q as unknown as SQL)) as Promise<T>);
  }

  /**
   * Every lease, read without creating or migrating anything (doctor looks,
   * never touches); throws when the database or the schema is not there.
   */
  async peekLeases(): Promise<LeaseRow[]> {
    return ([...((await (await this.pool()).unsafe(`SELECT ${LEASE_COLS} FROM ${SCHEMA}.leases ORDER BY expires_at DESC`)) as Row[])]).map(leaseRow);
  }

  async getClientByTokenId(tokenId: string): Promise<ClientRow | null> {
    return (await this.rows(`SELECT ${CLIENT_COLS} FROM ${SCHEMA}.clients WHERE token_id = $1`, [tokenId])).map(clientRow)[0] ?? null;
  }
  async getClient(name: string): Promise<ClientRow | null> {
    return (await this.rows(`SELECT ${CLIENT_COLS} FROM ${SCHEMA}.clients WHERE name = $1`, [name])).map(clientRow)[0] ?? null;
  }
  async listClients(): Promise<ClientRow[]> {
    return (await this.rows(`SELECT ${CLIENT_COLS} FROM ${SCHEMA}.clients ORDER BY name`)).map(clientRow);
  }
  async allLeases(): Promise<LeaseRow[]> {
    const rows = await this.timed(`SELECT ${LEASE_COLS}, ${MS("now()")} AS db_now FROM ${SCHEMA}.leases RIGHT JOIN (SELECT 1) one ON true ORDER BY client, family`);
    return rows.filter((r) => r.client !== null).map(leaseRow);
  }

  async *leasePages(size: number): AsyncGenerator<IndexTuple[]> {
    // Typed columns: text, int, text, float8 (NOT NULL each) arrive as string, number, string, number. The address is parsed by the index.
    const cols = `client, family::int, ${IP_SQL}, round(${MS("expires_at")})`;
    // Keyset pages over the primary key: each page one index range scan, however far in.
    const read = (after: IndexTuple | null): Promise<IndexTuple[]> =>
      this.call(async () => {
        const sql = await this.pool();
        return after === null
          ? sql.unsafe(`SELECT ${cols} FROM ${SCHEMA}.leases ORDER BY client, family LIMIT $1`, [size]).values()
          : sql.unsafe(`SELECT ${cols} FROM ${SCHEMA}.leases WHERE (client, family) > ($1::text, $2::smallint) ORDER BY client, family LIMIT $3`, [after[0], after[1], size]).values();
      });
    for (let next: Promise<IndexTuple[]> | null = read(null); next !== null; ) {
      const page: IndexTuple[] = await next;
      // Ask for the next page before this one is put in the index: the database works while we do.
      next = page.length === size ? read(page[page.length - 1]!) : null;
      next?.catch(() => undefined);
      if (page.length) yield page;
    }
  }

  /** Runs a query that returns db_now on every row (at least one), measuring on the way how far the database clock is ahead of ours. */
  private async timed(text: string, params: unknown[] = []): Promise<Row[]> {
    const t0 = this.clock.now();
    const rows = await this.rows(text, params);
    const t1 = this.clock.now();
    const dbNow = Number(rows[0]?.db_now);
    if (Number.isFinite(dbNow)) this.skewMs = Math.round(dbNow - (t0 + t1) / 2);
    return rows;
  }

  /**
   * Reads the change log past `since`. Ids are not in commit order (see
   * CHANGE_LOG), so "id > highest seen" alone would skip a row whose
   * transaction took its id before the last read and committed after it. Of
   * the usual fixes, a window behind the highest id bounds nothing (a
   * transaction may stay open for minutes) and commit timestamps need
   * track_commit_timestamp on the server. Instead each read records its own
   * snapshot, and the next one also takes every row written by a transaction
   * that snapshot saw as running (txid in its xip list) or not yet begun
   * (txid >= its xmax): exactly the rows the last read could not see, so none
   * is skipped and none is read twice. All in one statement, so the rows and
   * the snapshot recorded are the same snapshot. The position comes back
   * with a full reload (clients null) when the follower read nothing yet,
   * the pool switched (failover: another server's log and snapshots), or its
   * last read is nearly the keep time old (rows it needs may be pruned).
   */
  async changes(since: ChangePosition | null): Promise<ChangeBatch> {
    const last = since as unknown as PgPosition | null;
    let epoch = 0;
    const rows = await this.call(async () => {
      const sql = await this.pool();
      epoch = this.epoch;
      const t0 = this.clock.now();
      const r = [
        ...((await (last === null || last.epoch !== epoch
          ? sql.unsafe(`SELECT coalesce((SELECT max(id) FROM ${SCHEMA}.changes), 0)::text AS max_id, pg_current_snapshot()::text AS snap, ${MS("now()")} AS db_now, 'all' AS op, NULL AS client`)
          : sql.unsafe(
              `WITH fresh AS (
                 SELECT id, op, client FROM ${SCHEMA}.changes WHERE id > $1::bigint
                 UNION SELECT id, op, client FROM ${SCHEMA}.changes WHERE txid IN (SELECT pg_snapshot_xip($2::pg_snapshot))
                 UNION SELECT id, op, client FROM ${SCHEMA}.changes WHERE txid >= pg_snapshot_xmax($2::pg_snapshot)
               ), names AS (SELECT DISTINCT op, client FROM fresh LIMIT ${CATCH_UP_MAX_CLIENTS + 1})
               SELECT (SELECT max(id) FROM fresh)::text AS max_id, pg_current_snapshot()::text AS snap, ${MS("now()")} AS db_now, names.op, names.client
               FROM (SELECT 1) one LEFT JOIN names ON true`,
              [last.id.toString(), last.snap],
            ))) as Row[]),
      ];
      const t1 = this.clock.now();
      this.skewMs = Math.round(Number(r[0]!.db_now) - (t0 + t1) / 2);
      return r;
    });
    const head = rows[0]!;
    const seen = head.max_id === null ? 0n : BigInt(String(head.max_id));
    const at = Number(head.db_now);
    const next: PgPosition = { epoch, id: last && last.id > seen ? last.id : seen, snap: String(head.snap), at };
    const cutOff = last !== null && at - last.at > this.keepMs * (1 - KEEP_MARGIN);
    const everything = cutOff || rows.length > CATCH_UP_MAX_CLIENTS || rows.some((r) => r.op === "all");
    const clients = everything ? null : rows.filter((r) => r.op === "lease").map((r) => String(r.client));
    return { clients, enrolled: everything || rows.some((r) => r.op === "client"), next: next as unknown as ChangePosition };
  }
  async leasesOfClients(names: string[]): Promise<LeaseRow[]> {
    if (!names.length) return [];
    return (await this.rows(`SELECT ${LEASE_COLS} FROM ${SCHEMA}.leases WHERE client = ANY($1::text[]) ORDER BY client, family`, [names])).map(leaseRow);
  }
  async auditLog(filter: { client?: string; since?: number; limit?: number } = {}): Promise<AuditRow[]> {
    return (
      await this.rows(`SELECT ${AUDIT_COLS} FROM ${SCHEMA}.audit WHERE ($1::text IS NULL OR client = $1::text) AND ts >= to_timestamp($2::float8 / 1000) ORDER BY id DESC LIMIT $3`, [
        filter.client ?? null,
        filter.since ?? 0,
        filter.limit ?? 1000,
      ])
    ).map(auditRow);
  }
  async auditPage(f: AuditPageFilter): Promise<AuditRow[]> {
    return (
      await this.rows(`SELECT ${AUDIT_COLS} FROM ${SCHEMA}.audit WHERE id > $1 AND ($2::text IS NULL OR client = $2::text) AND ts >= to_timestamp($3::float8 / 1000) ORDER BY id LIMIT $4`, [
        f.after,
        f.client,
        f.since,
        f.limit,
      ])
    ).map(auditRow);
  }
  async counts(): Promise<{ clients: number; leases: number }> {
    const [r] = await this.rows(`SELECT (SELECT count(*) FROM ${SCHEMA}.clients)::int AS clients, (SELECT count(*) FROM ${SCHEMA}.leases)::int AS leases`);
    return { clients: Number(r!.clients), leases: Number(r!.leases) };
  }
  /** See Store.watched; the same filter as SQLite's (state.ts), in PostgreSQL's time types. */
  async watched(all: boolean, now: number): Promise<Watched[]> {
    const rows = await this.rows(
      `SELECT c.name, c.expect, c.overdue_state, ${MS("c.last_seen")} AS last_seen, c.last_ip, ${IP_SQL.replace(/net/g, "l.net")} AS ip,
              ${MS("l.granted_at")} AS granted_at, ${MS("l.renewed_at")} AS renewed_at, ${MS("l.expires_at")} AS expires_at, l.renewals
       FROM ${SCHEMA}.clients c LEFT JOIN ${SCHEMA}.leases l ON l.client = c.name
       WHERE $1::boolean OR c.overdue_state <> 'ok'
         OR (c.last_seen IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ${SCHEMA}.leases x WHERE x.client = c.name AND x.expires_at > to_timestamp($2::float8 / 1000)))
         OR EXISTS (SELECT 1 FROM ${SCHEMA}.leases x WHERE x.client = c.name AND x.renewed_at < to_timestamp($2::float8 / 1000) - $3::int * COALESCE(c.expect * interval '1 second',
              CASE WHEN x.renewals > 0 THEN greatest($4::int * interval '1 millisecond', (x.renewed_at - x.granted_at) / x.renewals) END))
       ORDER BY c.name`,
      [all, now, LATE_AFTER_INTERVALS, MIN_LEARNED_MS],
    );
    return foldWatched(rows);
  }
  async pruneAudit(before: number): Promise<number> {
    return (await this.rows(`DELETE FROM ${SCHEMA}.audit WHERE ts < to_timestamp($1::float8 / 1000) RETURNING 1`, [before])).length;
  }

  /**
   * Refusal rows for RefusalLog, which wants an id at once: ids are local
   * numbers, the rows are written in order behind the scenes, and a count
   * update waits for its row's real id. A database outage loses the rows,
   * never a request.
   */
  refusalSink() {
    const later = (fn: () => Promise<unknown>): void => {
      this.auditChain = this.auditChain.then(fn).catch((err) => log.warn(`audit log: cannot write a refusal row to ${this.where}: ${(err as Error).message}`));
    };
    return {
      audit: (e: AuditEntry): number => {
        const local = this.nextAuditId++;
        let settle!: (id: number | null) => void;
        this.auditIds.set(local, new Promise((r) => (settle = r)));
        // Bursts older than this are never updated again: keep the map small.
        this.auditIds.delete(local - 10_000);
        later(async () => {
          try {
            const [r] = await this.rows(`INSERT INTO ${SCHEMA}.audit (ts, event, client, ip, source, detail, count) VALUES (to_timestamp($1::float8 / 1000), $2, $3, $4, $5, $6, $7) RETURNING id::float8 AS id`, [
              e.ts, e.event, e.client, e.ip, e.source, e.detail, e.count ?? 1,
            ]);
            settle(Number(r!.id));
          } catch (err) {
            settle(null);
            throw err;
          }
        });
        return local;
      },
      setAuditCount: (local: number, count: number, detail?: string): void => {
        const id = this.auditIds.get(local);
        if (!id) return;
        later(async () => {
          const real = await id;
          if (real !== null) await this.rows(`UPDATE ${SCHEMA}.audit SET count = $1, detail = COALESCE($2, detail) WHERE id = $3`, [count, detail ?? null, real]);
        });
      },
    };
  }

  watch(onChange: () => void): () => void {
    let stopped = false;
    let sub: { unlisten(): Promise<void> } | null = null;
    let on: SQL | null = null;
    const listenOn = async (sql: SQL): Promise<void> => {
      if (stopped || on === sql) return;
      on = sql;
      void sub?.unlisten().catch(() => undefined);
      sub = null;
      try {
        // onlisten runs again after each reconnect: whatever was missed meanwhile is in the change log.
        // A notice names nothing (see CHANNEL): each one means "read the change log".
        const s = await sql.listen(CHANNEL, () => onChange(), () => onChange());
        if (stopped || on !== sql) void s.unlisten().catch(() => undefined);
        else sub = s;
      } catch (err) {
        if (stopped || on !== sql) return;
        on = null;
        log.warn(`state: cannot listen for changes on ${this.where} (${(err as Error).message}); retrying`);
        setTimeout(ensure, 1_000);
      }
    };
    const ensure = (): void => {
      if (!stopped) void this.pool().then(listenOn, () => setTimeout(ensure, 1_000));
    };
    // Another host took over (failover): listen there, and read again; the
    // new pool's epoch makes that read a full reload (see changes()).
    const onSwitch = (sql: SQL): void => {
      void listenOn(sql);
      onChange();
    };
    this.switched.add(onSwitch);
    ensure();
    // Each read also tells whether the database answers (health) and how far its clock is off.
    const timer = setInterval(() => onChange(), POLL_MS);
    return () => {
      stopped = true;
      this.switched.delete(onSwitch);
      clearInterval(timer);
      void sub?.unlisten().catch(() => undefined);
    };
  }

  /**
   * Prunes the change log every PRUNE_MS, deleting only rows that were
   * committed more than CHANGES_KEEP_MS ago. A row's own time is when its
   * transaction began, not when it committed, so it cannot tell; instead each
   * prune leaves a mark (now, and the oldest transaction still running), and
   * a later prune deletes the rows of transactions older than the xmin of the
   * newest mark that is CHANGES_KEEP_MS old: those had all ended by then.
   * Any host may prune; a follower that last read before the cut reloads
   * everything (changes()).
   */
  async maintain(): Promise<void> {
    const now = this.clock.now();
    if (now - this.prunedAt < PRUNE_MS) return;
    this.prunedAt = now;
    const keep = `interval '${this.keepMs / 1000} seconds'`;
    try {
      const [r] = await this.rows(
        `WITH mark AS (INSERT INTO ${SCHEMA}.change_marks (at, oldest) VALUES (now(), pg_snapshot_xmin(pg_current_snapshot())) RETURNING 1),
         cut AS (SELECT at, oldest FROM ${SCHEMA}.change_marks WHERE at < now() - ${keep} ORDER BY at DESC LIMIT 1),
         gone AS (DELETE FROM ${SCHEMA}.changes WHERE txid < (SELECT oldest FROM cut) RETURNING 1),
         marks AS (DELETE FROM ${SCHEMA}.change_marks WHERE at < (SELECT at FROM cut) RETURNING 1)
         SELECT (SELECT count(*) FROM gone)::int AS pruned, (SELECT count(*) FROM mark)::int AS marked, (SELECT count(*) FROM marks)::int AS old`,
      );
      if (Number(r!.pruned)) log.debug(`state: pruned ${r!.pruned} change log rows older than ${this.keepMs / 1000} s`);
    } catch (err) {
      // An outage is reported already (problems()); the next prune catches up.
      if (!(err instanceof StoreUnavailable)) throw err;
    }
  }

  problems(): string[] {
    return this.failure === null ? [] : [`state: the shared database ${this.where} cannot be reached (${this.failure}); renewals are refused, the lookup keeps the last known leases until they expire or stale_after passes`];
  }

  skew(): number {
    return this.skewMs;
  }

  async close(): Promise<void> {
    await this.auditChain.catch(() => undefined);
    this.closed = true;
    const sql = await this.current?.catch(() => null);
    this.current = null;
    await sql?.close({ timeout: 2 });
  }
}
