/**
 * Starting the server: never on built-in defaults without a config file, and
 * never locked out of its own state_dir by what root created there first.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { chownSync, existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_SERVER_CONFIG } from "../../src/lib/config.ts";
import { freePort, run, runOk, tmpDir, which, type TmpDir } from "./harness.ts";
import { addClient, asUser, BIN, ensureBinary, relayctl, startServer, writeServerConfig, type ServerProc } from "./relayctl.ts";

setDefaultTimeout(60_000);

describe("relayctl server without a config file", () => {
  beforeAll(ensureBinary);

  // Never where a real default config exists: the bare command would start a server.
  test.skipIf(existsSync(DEFAULT_SERVER_CONFIG))("bare `relayctl server` refuses to start with exit 2 and creates nothing", async () => {
    const stateBefore = existsSync("/var/lib/relayctl");
    const r = await relayctl(["server"], 10_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`relayctl: no server config at ${DEFAULT_SERVER_CONFIG}, so the server does not start: create one with \`install.sh server\`, or pass --config PATH\n`);
    expect(existsSync("/var/lib/relayctl")).toBe(stateBefore);
  });

  test("a missing --config is refused the same way, and --help says the bare form runs the server", async () => {
    const r = await relayctl(["server", "--config", "/nonexistent/relayctl/server.toml"], 10_000);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith("relayctl: no server config at /nonexistent/relayctl/server.toml, so the server does not start: ");
    const help = await relayctl(["server", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Bare `relayctl server` runs the lease server");
  });
});

const canSwitchUsers = process.getuid?.() === 0 && !!which("useradd") && !!which("userdel") && !!which("setpriv");

describe.skipIf(!canSwitchUsers)("files root creates in state_dir belong to state_dir's owner", () => {
  // A throwaway system user stands in for the relayctl service user.
  const user = `rlyctl-e2e-${randomBytes(3).toString("hex")}`;
  let uid: number;
  let gid: number;
  let tmp: TmpDir;
  let config: string;
  let url: string;
  let stateDir: string;
  let server: ServerProc | undefined;

  beforeAll(async () => {
    await ensureBinary();
    await runOk(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", user]);
    uid = Number((await runOk(["id", "-u", user])).stdout.trim());
    gid = Number((await runOk(["id", "-g", user])).stdout.trim());
    tmp = tmpDir("relayctl-e2e-owner-");
    stateDir = join(tmp.path, "state");
    const mapDir = join(tmp.path, "map");
    for (const d of [stateDir, mapDir]) {
      mkdirSync(d, { mode: 0o700 });
      chownSync(d, uid, gid);
    }
    const port = freePort();
    url = `https://127.0.0.1:${port}`;
    config = writeServerConfig(tmp.path, { listen: `127.0.0.1:${port}`, public_url: url, state_dir: stateDir, map: join(mapDir, "clients"), map_type: "hash" });
  });
  afterAll(async () => {
    await server?.stop();
    tmp?.remove();
    await run(["userdel", user]);
  });

  const ownerOf = (p: string): string => {
    const st = statSync(p);
    return `${st.uid}:${st.gid}`;
  };

  test("server add as root before the first start: tls/, its files and the state are the service user's", async () => {
    await addClient(config, "h1");
    const want = `${uid}:${gid}`;
    for (const p of ["tls", "tls/cert.pem", "tls/key.pem", "state.db"]) {
      expect({ p, owner: ownerOf(join(stateDir, p)) }).toEqual({ p, owner: want });
    }
    expect(statSync(join(stateDir, "tls")).mode & 0o777).toBe(0o700);
    expect(statSync(join(stateDir, "tls", "key.pem")).mode & 0o777).toBe(0o600);
  });

  test("the server then starts as the service user and reports healthy", async () => {
    server = await startServer(config, url, undefined, { uid, gid });
    const status = await relayctl(["server", "status", "--config", config]);
    expect(status.code, status.stderr).toBe(0);
    expect(await server.stop()).toBe(0);
    server = undefined;
  });

  test("a tls/ left root's by an older version: the server cannot start, and doctor's fix repairs it", async () => {
    const tls = join(stateDir, "tls");
    for (const p of [tls, join(tls, "cert.pem"), join(tls, "key.pem")]) chownSync(p, 0, 0);
    const refused = await run(asUser({ uid, gid }, [BIN, "server", "--config", config]), { timeoutMs: 15_000 });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("EACCES");

    const doctor = await relayctl(["doctor", "--json", "--config", config]);
    const check = (JSON.parse(doctor.stdout).checks as { id: string; status: string; hint?: string }[]).find((c) => c.id === "server.tls")!;
    expect(check.status).toBe("fail");
    expect(check.hint).toBe(`chown -R --reference=${stateDir} ${tls}`);
    await runOk(["chown", "-R", `--reference=${stateDir}`, tls]);

    server = await startServer(config, url, undefined, { uid, gid });
    expect((await relayctl(["server", "status", "--config", config])).code).toBe(0);
  });
});
