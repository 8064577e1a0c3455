/**
 * A private PostgreSQL cluster for tests: initdb in a temp dir, a unix
 * socket only (listen_addresses=''), started and stopped by pid. Runs as the
 * `postgres` OS user when we are root, since initdb refuses root.
 */
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PG_TABLES, SCHEMA } from "../src/server/stores/postgres.ts";

const BIN_DIRS = ["/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"];

/** The directory holding initdb and postgres, or undefined when PostgreSQL is not installed. */
export function postgresBinDir(): string | undefined {
  return BIN_DIRS.find((d) => existsSync(join(d, "initdb")) && existsSync(join(d, "postgres")));
}

/** A running (or stopped) test cluster. */
export interface PgCluster {
  dir: string;
  /** The directory holding the socket `.s.PGSQL.<port>`. */
  socketDir: string;
  port: number;
  /** `postgres://postgres@localhost:PORT/relayctl?host=SOCKETDIR`, the form server.toml takes. */
  url: string;
  /** The pid of the postmaster, or null while stopped. */
  pid(): number | null;
  start(): Promise<void>;
  /** Fast shutdown by pid (SIGINT), waiting until the postmaster is gone. */
  stop(): Promise<void>;
  /** Runs SQL through psql as the superuser; returns stdout. */
  psql(sql: string, db?: string): Promise<string>;
  /** Stops and deletes everything. */
  destroy(): Promise<void>;
}

/**
 * The schema relayctl wrote before it had a schema of its own (version 1:
 * everything unqualified, in the owner's first schema), to test upgrades.
 */
export const SCHEMA_V1 = `CREATE TABLE relayctl_schema (version integer NOT NULL);
   INSERT INTO relayctl_schema (version) VALUES (1);
   ${PG_TABLES.replaceAll(`${SCHEMA}.`, "")}
   -- Postfix also looks up client hostnames ("unknown"): a plain '%s'::inet
   -- would raise an error, which Postfix takes as a temporary failure for
   -- every client. This answers NULL instead, which matches no lease.
   CREATE FUNCTION relayctl_inet(k text) RETURNS inet
     LANGUAGE plpgsql IMMUTABLE STRICT AS $$
   BEGIN RETURN k::inet;
   EXCEPTION WHEN invalid_text_representation THEN RETURN NULL; END $$;
   -- Every change to a lease, by relayctl or by hand, reaches every server's lookup.
   CREATE FUNCTION relayctl_lease_changed() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     IF TG_OP = 'TRUNCATE' THEN PERFORM pg_notify('relayctl_leases', ''); RETURN NULL; END IF;
     IF TG_OP IN ('UPDATE', 'DELETE') THEN PERFORM pg_notify('relayctl_leases', OLD.client); END IF;
     IF TG_OP IN ('INSERT', 'UPDATE') THEN PERFORM pg_notify('relayctl_leases', NEW.client); END IF;
     RETURN NULL;
   END $$;
   CREATE TRIGGER leases_changed AFTER INSERT OR UPDATE OR DELETE ON leases
     FOR EACH ROW EXECUTE FUNCTION relayctl_lease_changed();
   CREATE TRIGGER leases_truncated AFTER TRUNCATE ON leases
     FOR EACH STATEMENT EXECUTE FUNCTION relayctl_lease_changed();`;

function pgIds(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith("postgres:"));
  if (!line) throw new Error("running as root, but there is no postgres user to run the test cluster as");
  const f = line.split(":");
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

function asPg(ids: { uid: number; gid: number } | null, argv: string[]): string[] {
  // setpriv execs: the pid we hold is the program's own, and so is its exit code.
  return ids ? ["setpriv", `--reuid=${ids.uid}`, `--regid=${ids.gid}`, "--clear-groups", "--", ...argv] : argv;
}

async function runOk(argv: string[]): Promise<string> {
  const p = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}: ${err}`);
  return out;
}

/** A port number no other test cluster in this run uses (it only names the socket file). */
function freeSocketPort(socketDir: string): number {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    if (!existsSync(join(socketDir, `.s.PGSQL.${port}`))) return port;
  }
}

/** A temp dir for one cluster, owned by the postgres user when we are root. */
function clusterDir(ids: { uid: number; gid: number } | null): string {
  const dir = mkdtempSync(join(tmpdir(), "relayctl-pg-"));
  if (ids) chownSync(dir, ids.uid, ids.gid);
  // The socket lives here: Postfix (another user) must reach it; the data dir inside stays 0700.
  chmodSync(dir, 0o755);
  return dir;
}

/** Creates, starts and returns a cluster with a database `relayctl`; `fsync` on for benchmarks that compare commits. */
export async function startCluster(opts: { fsync?: boolean } = {}): Promise<PgCluster> {
  const bin = postgresBinDir();
  if (!bin) throw new Error("PostgreSQL is not installed (initdb not found)");
  const ids = pgIds();
  const dir = clusterDir(ids);
  const data = join(dir, "data");
  await runOk(asPg(ids, [join(bin, "initdb"), "-D", data, "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]));
  const c = cluster(bin, ids, dir, opts.fsync ?? false);
  try {
    await c.start();
    await c.psql("CREATE DATABASE relayctl", "postgres");
  } catch (err) {
    await c.destroy();
    throw err;
  }
  return c;
}

/**
 * A streaming-replication standby of a running cluster (pg_basebackup -R
 * over the primary's unix socket), started on its own socket. The primary
 * is then made to wait for the standby to apply each commit
 * (synchronous_commit = remote_apply), so a commit the primary acknowledged
 * is on the standby: after a promotion nothing acknowledged is missing.
 * The standby is set up before that, so once promoted it waits for nobody.
 */
export async function startStandby(primary: PgCluster): Promise<PgCluster> {
  const bin = postgresBinDir()!;
  const ids = pgIds();
  const dir = clusterDir(ids);
  const data = join(dir, "data");
  await runOk(asPg(ids, [join(bin, "pg_basebackup"), "-D", data, "-R", "-X", "stream", "-h", primary.socketDir, "-p", String(primary.port), "-U", "postgres", "--no-sync"]));
  const c = cluster(bin, ids, dir, false);
  try {
    await c.start();
    await primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'", "postgres");
    await primary.psql("ALTER SYSTEM SET synchronous_commit = 'remote_apply'", "postgres");
    await primary.psql("SELECT pg_reload_conf()", "postgres");
    const deadline = Date.now() + 20_000;
    while ((await primary.psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming'", "postgres")).trim() !== "1") {
      if (Date.now() > deadline) throw new Error("the standby never became a synchronous, streaming standby");
      await Bun.sleep(100);
    }
  } catch (err) {
    await c.destroy();
    throw err;
  }
  return c;
}

/** The handle on a cluster in dir (its data in dir/data, its socket in dir). */
function cluster(bin: string, ids: { uid: number; gid: number } | null, dir: string, fsync: boolean): PgCluster {
  const data = join(dir, "data");
  const socketDir = dir;
  const port = freeSocketPort(socketDir);
  let proc: ReturnType<typeof Bun.spawn> | null = null;
  let logText = "";
  const c: PgCluster = {
    dir,
    socketDir,
    port,
    url: `postgres://postgres@localhost:${port}/relayctl?host=${socketDir}`,
    pid: () => (proc && proc.exitCode === null && proc.signalCode === null ? proc.pid : null),
    async start() {
      proc = Bun.spawn(
        asPg(ids, [join(bin, "postgres"), "-D", data, "-p", String(port), "-c", "listen_addresses=", "-c", `unix_socket_directories=${socketDir}`, "-c", `fsync=${fsync ? "on" : "off"}`, "-c", "max_connections=100"]),
        { stdout: "ignore", stderr: "pipe" },
      );
      const p = proc;
      void (async () => {
        for await (const chunk of p.stderr as ReadableStream<Uint8Array>) logText += new TextDecoder().decode(chunk);
      })();
      const deadline = Date.now() + 20_000;
      while (!existsSync(join(socketDir, `.s.PGSQL.${port}`)) || !/ready to accept (read-only )?connections/.test(logText)) {
        if (p.exitCode !== null) throw new Error(`postgres exited ${p.exitCode}: ${logText}`);
        if (Date.now() > deadline) throw new Error(`postgres did not start: ${logText}`);
        await Bun.sleep(50);
      }
    },
    async stop() {
      const p = proc;
      if (!p || p.exitCode !== null) return;
      process.kill(p.pid, "SIGINT");
      const done = await Promise.race([p.exited, Bun.sleep(15_000).then(() => null)]);
      if (done === null) {
        process.kill(p.pid, "SIGKILL");
        await p.exited;
      }
      proc = null;
    },
    psql: (sql, db = "relayctl") => runOk(asPg(ids, [join(bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", socketDir, "-p", String(port), "-U", "postgres", "-d", db, "-c", sql])),
    async destroy() {
      await c.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return c;
}
