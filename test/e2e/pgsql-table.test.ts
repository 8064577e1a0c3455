/**
 * The Postfix pgsql: table from `relayctl server postfix-pgsql`, in every
 * hook the docs and the file's comments offer, against real Postfix
 * instances and a private PostgreSQL cluster: only leased addresses relay.
 * Postfix's check_client_access also looks up parent networks (it cuts
 * 2001:db8:5::9:1 to 2001:db8:5::9); none of those may match a lease.
 * Postfix logs in as its own role holding only the grants the file lists,
 * and a relay host runs with only the row grants docs/several-relays.md lists.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseCidr } from "../../src/lib/ip.ts";
import { systemClock } from "../../src/lib/clock.ts";
import { LeaseBook } from "../../src/server/leases.ts";
import { PgStore, pgTarget } from "../../src/server/stores/postgres.ts";
import { postgresBinDir, startCluster, type PgCluster } from "../pgcluster.ts";
import { freePort, requireE2E, startPostfix, swaks, tmpDir, type Postfix, type TmpDir } from "./harness.ts";
import { relayctl, startServer, writeServerConfig } from "./relayctl.ts";

const enabled = requireE2E() && postgresBinDir() !== undefined;

/** Relays from these through every hook. */
const ALWAYS = ["192.0.2.7", "2001:db8:6:1:2:3:4:5", "2001:db8:7:1:a:b:c:d"];
/** Never relays: unleased, parents' children (2001:db8:5::9:1 is looked up as 2001:db8:5::9 too), other /64s. */
const NEVER = ["192.0.2.8", "2001:db8:5::9:1", "2001:db8:5::9:1:2", "2001:db8:6:1:2:3:4:6", "2001:db8:0:1:2:3:4:5", "2001:db8:0:1::1", "2001:db8:1::5", "2001:db8:7:2:a:b:c:d"];
/** Leased, but written with an inner "::": relays behind the regexp stage, fails closed looked up bare. */
const EXACT_ONLY = ["2001:db8:5::9", "2001:db8::1:2:3:4"];

describe.if(enabled)("the pgsql: table Postfix queries directly", () => {
  let pg: PgCluster;
  let tmp: TmpDir;
  let config: string;
  let cf: string;
  let re: string;
  let stray: Postfix | undefined;
  const hooks: { name: string; exact: boolean; smtp: string; postfix?: Postfix }[] = [];

  beforeAll(async () => {
    pg = await startCluster();
    tmp = tmpDir("relayctl-pgsql-");
    try {
      config = writeServerConfig(tmp.path, {
        listen: "127.0.0.1:9", public_url: "https://127.0.0.1:9", state_dir: join(tmp.path, "state"), map: join(tmp.path, "clients"), map_type: "hash", database: pg.url,
      });
      // relayctl creates its schema; the leases go in through the store, as a renewal writes them.
      for (const name of ["v4", "v6", "full", "lan", "site"]) {
        const r = await relayctl(["server", "add", name, "--config", config]);
        if (r.code !== 0) throw new Error(`server add ${name} failed: ${r.stderr}`);
      }
      const store = new PgStore(pgTarget(pg.url), systemClock);
      try {
        const book = new LeaseBook(store, () => 3600, systemClock);
        for (const [name, net] of [["v4", "192.0.2.7"], ["v6", "2001:db8:5::9"], ["full", "2001:db8:6:1:2:3:4:5"], ["lan", "2001:db8::/64"], ["site", "2001:db8:7:1::/64"]] as const) {
          await book.renew((await store.getClient(name))!, parseCidr(net)!, "e2e");
        }
      } finally {
        await store.close();
      }
      cf = join(tmp.path, "relayctl-pgsql.cf");
      const out = await relayctl(["server", "postfix-pgsql", "--user", "postfix", "--path", cf, "--config", config]);
      if (out.code !== 0) throw new Error(`postfix-pgsql failed: ${out.stderr}`);
      writeFileSync(cf, out.stdout);
      chmodSync(cf, 0o644);
      // The role gets exactly the grants the file's comments list, nothing more.
      const grants = out.stdout.split("\n").filter((l) => /^#\s+GRANT /.test(l)).map((l) => l.replace(/^#\s+/, "").replace(/;$/, ""));
      if (!grants.length) throw new Error(`the file lists no grants:\n${out.stdout}`);
      await pg.psql(["CREATE ROLE postfix LOGIN", ...grants].join("; "));
      // The regexp stage exactly as the comments say.
      const stage = /^#\s+(\/.*)$/m.exec(out.stdout.slice(out.stdout.indexOf("holding the one line")))?.[1];
      if (!stage) throw new Error(`the file names no regexp stage:\n${out.stdout}`);
      re = join(tmp.path, "relayctl-exact.regexp");
      writeFileSync(re, `${stage}\n`, { mode: 0o644 });
      // startPostfix writes `${mapType}:${mapPath}`: the pipemap is split so that it ends with the pgsql file.
      const variants = [
        { name: "check_client_access proxy:pgsql", exact: false, hook: "check_client_access", mapType: "proxy:pgsql", mapPath: cf },
        { name: "mynetworks proxy:pgsql", exact: false, hook: "mynetworks", mapType: "proxy:pgsql", mapPath: cf },
        { name: "check_client_access pipemap", exact: true, hook: "check_client_access", mapType: `pipemap:{regexp:${re}, proxy:pgsql`, mapPath: `${cf}}` },
        { name: "mynetworks pipemap", exact: true, hook: "mynetworks", mapType: `pipemap:{regexp:${re}, proxy:pgsql`, mapPath: `${cf}}` },
      ] as const;
      await Promise.all(
        variants.map(async (v, i) => {
          const smtp = `127.0.0.1:${freePort()}`;
          const dir = join(tmp.path, `postfix${i}`);
          mkdirSync(dir, { recursive: true });
          const entry: (typeof hooks)[number] = { name: v.name, exact: v.exact, smtp };
          hooks.push(entry);
          entry.postfix = await startPostfix({ dir, mapPath: v.mapPath, mapType: v.mapType, listen: smtp, hook: v.hook });
        }),
      );
    } catch (err) {
      await Promise.all(hooks.map((h) => h.postfix?.stop()));
      await pg.destroy();
      tmp.remove();
      throw err;
    }
  }, 120_000);
  afterAll(async () => {
    await stray?.stop();
    await Promise.all(hooks.map((h) => h.postfix?.stop()));
    await pg?.destroy();
    tmp?.remove();
  });

  const relays = async (smtp: string, addr: string): Promise<boolean> => {
    const r = await swaks({ server: smtp, xclientAddr: addr });
    if (!r.accepted && !r.denied) throw new Error(`swaks XCLIENT ${addr} via ${smtp} gave neither verdict:\n${r.output}`);
    return r.accepted;
  };

  test("four hooks are tested", () => {
    expect(hooks.length).toBe(4);
  });

  test("every hook relays for leased addresses and prefixes only; bare tables fail closed for inner '::'", async () => {
    const got = await Promise.all(
      hooks.map(async (h) => {
        const seen: Record<string, boolean> = {};
        for (const a of [...ALWAYS, ...NEVER, ...EXACT_ONLY]) seen[a] = await relays(h.smtp, a);
        return [h.name, seen] as const;
      }),
    );
    const want = (exact: boolean) => Object.fromEntries([...ALWAYS.map((a) => [a, true]), ...NEVER.map((a) => [a, false]), ...EXACT_ONLY.map((a) => [a, exact])]);
    expect(Object.fromEntries(got)).toEqual(Object.fromEntries(hooks.map((h) => [h.name, want(h.exact)])));
  }, 120_000);

  test("doctor: the staged hooks pass, bare ones warn, and a file with the old query fails", async () => {
    const verdict = async (h: (typeof hooks)[number]) => {
      const r = await relayctl(["doctor", "--json", "--config", config, "--postfix-dir", h.postfix!.configDir]);
      const checks = (JSON.parse(r.stdout) as { checks: { id: string; status: string; message: string }[] }).checks.filter((c) => c.id === "postfix.pgsql");
      return checks.map((c) => c.status).join(",");
    };
    expect(await Promise.all(hooks.map(verdict))).toEqual(hooks.map((h) => (h.exact ? "pass" : "warn")));
    const current = readFileSync(cf, "utf8");
    try {
      // The query relayctl printed before the relayctl schema.
      writeFileSync(cf, current.replace(/^query = .*$/m, "query = SELECT 'OK' FROM leases WHERE net >>= relayctl_inet('%s') AND expires_at > now() LIMIT 1"));
      expect(await Promise.all(hooks.map(verdict))).toEqual(hooks.map(() => "fail"));
    } finally {
      writeFileSync(cf, current);
    }
  }, 60_000);

  test("the regexp stage alone in mynetworks relays for everyone, and doctor fails it", async () => {
    const smtp = `127.0.0.1:${freePort()}`;
    stray = await startPostfix({ dir: join(tmp.path, "stray"), mapPath: re, mapType: "regexp", listen: smtp, hook: "mynetworks" });
    // Why the file's comments forbid it: an address nobody leased relays.
    expect(await relays(smtp, "192.0.2.8")).toBe(true);
    const r = await relayctl(["doctor", "--json", "--config", config, "--postfix-dir", stray.configDir]);
    const pgsql = (JSON.parse(r.stdout) as { checks: { id: string; status: string; message: string }[] }).checks.filter((c) => c.id === "postfix.pgsql");
    expect(pgsql.map((c) => c.status)).toEqual(["fail"]);
    expect(pgsql[0]!.message).toContain("relays for everyone");
    await stray.stop();
    stray = undefined;
  }, 60_000);

  test("a relay host whose role holds only the documented row grants runs the server and admin commands", async () => {
    const docs = readFileSync(join(import.meta.dir, "../../docs/several-relays.md"), "utf8");
    const grants = /## Roles and grants[\s\S]*?```sql\n([\s\S]*?)```/.exec(docs)?.[1];
    expect(grants).toContain("TO relayhost");
    await pg.psql(`CREATE ROLE relayhost LOGIN; ${grants}`);
    expect((await pg.psql("SELECT has_database_privilege('relayhost', 'relayctl', 'CREATE') OR has_schema_privilege('relayhost', 'relayctl', 'CREATE') OR has_schema_privilege('relayhost', 'public', 'CREATE')")).trim()).toBe("f");
    const dir = join(tmp.path, "host");
    mkdirSync(join(dir, "map"), { recursive: true });
    const port = freePort();
    const url = `https://127.0.0.1:${port}`;
    const map = join(dir, "map", "clients");
    const hostConfig = writeServerConfig(dir, {
      listen: `127.0.0.1:${port}`, public_url: url, state_dir: join(dir, "state"), map, map_type: "hash", database: pg.url.replace("postgres://postgres@", "postgres://relayhost@"),
    });
    const server = await startServer(hostConfig, url);
    try {
      // It read the leases (its map holds them) and writes rows like any host.
      expect(readFileSync(map, "utf8")).toContain("192.0.2.7");
      expect((await relayctl(["server", "add", "by-relayhost", "--config", hostConfig])).code).toBe(0);
      const list = await relayctl(["server", "list", "--json", "--config", hostConfig]);
      expect(JSON.parse(list.stdout).clients.map((c: { name: string }) => c.name)).toContain("by-relayhost");
    } finally {
      expect(await server.stop()).toBe(0);
    }
  }, 60_000);

  test("the Postfix role reads leases and nothing else", async () => {
    const as = (sql: string) => pg.psql(`SET ROLE postfix; ${sql}`);
    expect((await as("SELECT count(*) FROM relayctl.leases")).trim()).toBe("5");
    await expect(as("SELECT count(*) FROM relayctl.clients")).rejects.toThrow("permission denied");
    await expect(as("DELETE FROM relayctl.leases")).rejects.toThrow("permission denied");
  });
});
