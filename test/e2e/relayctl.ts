/**
 * Drives the compiled dist/relayctl for e2e tests: a server process started
 * and stopped by pid, admin commands, and client runs inside a namespace.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { mkdirSync } from "node:fs";
import { createNetwork, freePort, run, startPostfix, swaks, tmpDir, type Host, type Net, type Postfix, type RunResult, type TmpDir } from "./harness.ts";
import { startCluster, type PgCluster } from "../pgcluster.ts";

/** Absolute path of the binary under test. */
export const BIN = resolve(import.meta.dir, "../../dist/relayctl");

/** Builds dist/relayctl once if a test file runs on its own without `npm test`. */
export async function ensureBinary(): Promise<void> {
  if (existsSync(BIN)) return;
  const r = await run([process.execPath, "build.ts"], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`build failed: ${r.stderr}`);
}

/** Runs `relayctl ARGS` on the host (root namespace). */
export function relayctl(args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return run([BIN, ...args], { timeoutMs });
}

/** Writes a server.toml into dir and returns its path (values as TOML strings, numbers or string lists). */
export function writeServerConfig(dir: string, values: Record<string, string | number | string[]>): string {
  const path = join(dir, "server.toml");
  const lines = Object.entries(values).map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
  writeFileSync(path, lines.join("\n") + "\n");
  return path;
}

/** A `relayctl server` process under test. */
export interface ServerProc {
  pid: number;
  stderr(): string;
  /** SIGTERM and wait; resolves to the exit code. */
  stop(): Promise<number>;
  /** SIGKILL, as a crash would. */
  kill9(): Promise<void>;
}

/** argv that runs `argv` as uid:gid, by exec (setpriv, not runuser), so the pid and exit code stay the program's own. */
export function asUser(ids: { uid: number; gid: number }, argv: string[]): string[] {
  return ["setpriv", `--reuid=${ids.uid}`, `--regid=${ids.gid}`, "--clear-groups", "--", ...argv];
}

/** Starts `relayctl server --config PATH` (as `user` when given) and waits until /healthz answers on url. */
export async function startServer(configPath: string, url: string, env?: Record<string, string>, user?: { uid: number; gid: number }): Promise<ServerProc> {
  const argv = [BIN, "server", "--config", configPath];
  const proc = Bun.spawn(user ? asUser(user, argv) : argv, { stdout: "pipe", stderr: "pipe", env: env ? { ...process.env, ...env } : undefined });
  let err = "";
  const reader = (async () => {
    for await (const chunk of proc.stderr) err += new TextDecoder().decode(chunk);
  })();
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server exited ${proc.exitCode}: ${err}`);
    try {
      // Liveness only: no token travels on this unverified connection.
      const r = await fetch(`${url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit);
      if (r.status === 200 || r.status === 503) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`server did not come up: ${err}`);
    }
    await Bun.sleep(50);
  }
  const waitExit = async (): Promise<number> => {
    const code = await Promise.race([proc.exited, Bun.sleep(10_000).then(() => null)]);
    if (code === null) {
      process.kill(proc.pid, "SIGKILL");
      return proc.exited;
    }
    await reader;
    return code;
  };
  return {
    pid: proc.pid,
    stderr: () => err,
    async stop() {
      process.kill(proc.pid, "SIGTERM");
      return waitExit();
    },
    async kill9() {
      process.kill(proc.pid, "SIGKILL");
      await waitExit();
    },
  };
}

/** The enrollment `server add` and `rotate` print: the line (token on stdin) and the `token:` line after it. */
export const ENROLLMENT = /^(relayctl client enroll https:\/\/\S+ --name \S+ --token - --pin sha256:[0-9a-f]{64})\ntoken: (\S+)\n$/;

/**
 * The argv (without the leading "relayctl") of the enrollment `server add` or
 * `rotate` printed, with the printed token in place of `-`, so tests can run
 * it without a terminal; first-contact.test.ts runs the line as printed.
 */
export function enrollmentArgv(stdout: string): string[] {
  const m = ENROLLMENT.exec(stdout);
  if (!m) throw new Error(`unexpected enrollment: ${stdout}`);
  const argv = m[1]!.split(" ").slice(1);
  argv[argv.indexOf("--token") + 1] = m[2]!;
  return argv;
}

/** `relayctl server add` → the enrollment's argv, see {@link enrollmentArgv}. */
export async function addClient(configPath: string, name: string, extra: string[] = []): Promise<string[]> {
  const r = await relayctl(["server", "add", name, "--config", configPath, ...extra]);
  if (r.code !== 0) throw new Error(`server add failed (${r.code}): ${r.stderr}`);
  return enrollmentArgv(r.stdout);
}

/** Runs relayctl inside a client namespace. */
export function onHost(host: Host, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return host.run([BIN, ...args], { timeoutMs });
}

/** Calls the server's API directly, trusting exactly the certificate in state_dir/tls/cert.pem. */
export function apiCaller(url: string, stateDir: string): (path: string, init?: RequestInit & { token?: string }) => Promise<Response> {
  const ca = readFileSync(join(stateDir, "tls", "cert.pem"), "utf8");
  return (path, init = {}) => {
    const headers = new Headers(init.headers);
    if (init.token) headers.set("authorization", `Bearer ${init.token}`);
    return fetch(`${url}${path}`, { ...init, headers, tls: { ca, checkServerIdentity: () => undefined } } as RequestInit);
  };
}

/** The token from an enrollment line's argv. */
export function tokenOf(line: string[]): string {
  return line[line.indexOf("--token") + 1]!;
}

/** What an e2e suite stands on: network with hosts h1 (198.18.0.2) and h2 (.3), a private Postfix, a relayctl server. */
export interface Stage {
  tmp: TmpDir;
  net: Net;
  h1: Host;
  h2: Host;
  postfix: Postfix;
  /** Postfix's smtpd, ip:port on the test bridge. */
  smtp: string;
  url: string;
  config: string;
  stateDir: string;
  mapPath: string;
  server: ServerProc | undefined;
  /** A client config path in the stage's temp dir. */
  cfg(name: string): string;
  /** (Re)writes server.toml: the stage's listen, url, state and map plus `extra`. */
  writeConfig(extra?: Record<string, string | number | string[]>): void;
  /** Starts the server (after a stop or kill) and waits for it. */
  start(env?: Record<string, string>): Promise<void>;
  /** `server add` on the host, then `client enroll` inside the host's namespace. */
  enroll(host: Host, name: string, extra?: string[]): Promise<string[]>;
  /** One swaks probe; true when RCPT to an outside domain is accepted. */
  relays(host: Host, bind?: string): Promise<boolean>;
  /** One swaks probe from the root namespace pretending (XCLIENT) to be `addr`. */
  relaysFor(addr: string): Promise<boolean>;
  /** The policy socket under this stage's Postfix queue directory. */
  policySocket: string;
  /** The map source's entries, without its comment header. */
  mapEntries(): string[];
  /** Runs fn at cleanup, before Postfix and the network go. */
  onCleanup(fn: () => Promise<unknown>): void;
  /** The stage's private PostgreSQL cluster (`postgres: true`), destroyed after every server and cleanup. */
  pg?: PgCluster;
  cleanup(): Promise<void>;
}

/**
 * Builds a Stage. `prepare` runs before the server starts (certificates,
 * mounts, wrappers, config); anything failing half-way is torn down here,
 * since bun skips afterAll when beforeAll throws.
 */
export async function stage(opts: {
  prefix: string;
  mapType?: string;
  hook?: "mynetworks" | "check_client_access" | "policy";
  start?: boolean;
  prepare?: (s: Stage) => Promise<void>;
  /** Runs after the server started (enrollments, first renewals). */
  ready?: (s: Stage) => Promise<void>;
  env?: Record<string, string>;
  /** Starts a private PostgreSQL cluster first (s.pg), for prepare to point the servers at. */
  postgres?: boolean;
}): Promise<Stage> {
  await ensureBinary();
  const extraCleanups: (() => Promise<unknown>)[] = [];
  const s = { server: undefined } as Stage;
  s.cleanup = async () => {
    await s.server?.stop();
    s.server = undefined;
    for (const fn of extraCleanups.reverse()) await fn().catch(() => undefined);
    await s.pg?.destroy();
    await s.postfix?.stop();
    await s.net?.destroy();
    s.tmp?.remove();
  };
  try {
    if (opts.postgres) s.pg = await startCluster();
    s.tmp = tmpDir(`relayctl-e2e-${opts.prefix}-`);
    s.net = await createNetwork(opts.prefix);
    s.h1 = await s.net.addHost("h1", "198.18.0.2");
    s.h2 = await s.net.addHost("h2", "198.18.0.3");
    mkdirSync(join(s.tmp.path, "map"));
    s.mapPath = join(s.tmp.path, "map", "clients");
    s.stateDir = join(s.tmp.path, "state");
    const mapType = opts.mapType ?? "hash";
    s.smtp = `198.18.0.1:${freePort()}`;
    s.postfix = await startPostfix({ dir: join(s.tmp.path, "postfix"), mapPath: s.mapPath, mapType, listen: s.smtp, hook: opts.hook });
    s.policySocket = join(s.postfix.queueDir, "relayctl", "policy");
    const port = freePort();
    s.url = `https://198.18.0.1:${port}`;
    s.cfg = (name) => join(s.tmp.path, `${name}.toml`);
    s.writeConfig = (extra = {}) => {
      s.config = writeServerConfig(s.tmp.path, { listen: `198.18.0.1:${port}`, public_url: s.url, state_dir: s.stateDir, map: s.mapPath, map_type: mapType, ...extra });
    };
    s.start = async (env) => {
      s.server = await startServer(s.config, s.url, env ?? opts.env);
    };
    s.enroll = async (host, name, extra = []) => {
      const line = await addClient(s.config, name, extra);
      const r = await onHost(host, [...line, "--config", s.cfg(name)]);
      if (r.code !== 0) throw new Error(`enroll ${name} failed (${r.code}): ${r.stderr}`);
      return line;
    };
    s.relays = async (host, bind) => {
      const r = await swaks({ host, server: s.smtp, bind });
      if (!r.accepted && !r.denied) throw new Error(`swaks gave neither verdict:\n${r.output}`);
      return r.accepted;
    };
    s.relaysFor = async (addr) => {
      const r = await swaks({ server: s.smtp, bind: "198.18.0.1", xclientAddr: addr });
      if (!r.accepted && !r.denied) throw new Error(`swaks gave neither verdict for ${addr}:\n${r.output}`);
      return r.accepted;
    };
    s.mapEntries = () =>
      readFileSync(s.mapPath, "utf8")
        .split("\n")
        .filter((l) => l && !l.startsWith("#"));
    s.onCleanup = (fn) => void extraCleanups.push(fn);
    s.writeConfig();
    await opts.prepare?.(s);
    if (opts.start !== false) await s.start();
    await opts.ready?.(s);
    return s;
  } catch (err) {
    await s.cleanup();
    throw err;
  }
}

/** Polls probe until it returns want, for at most ms; returns how long it took, or null when it never did. */
export async function within(ms: number, probe: () => Promise<boolean>, want = true): Promise<number | null> {
  const t0 = Date.now();
  for (;;) {
    if ((await probe()) === want) return Date.now() - t0;
    if (Date.now() - t0 > ms) return null;
    await Bun.sleep(50);
  }
}

/** A second relay host beside a stage: its own Postfix asking its own relayctl over the policy socket. */
export interface PolicyHost {
  postfix: Postfix;
  /** Its Postfix's smtpd, ip:port on the test bridge. */
  smtp: string;
  url: string;
  config: string;
  /** One swaks probe through its Postfix; true when relaying is accepted. */
  relays(host: Host): Promise<boolean>;
}

/**
 * Writes the config of a second relay host in the stage's `b/` (its Postfix
 * is started and stopped with the stage); `values` adds to the defaults,
 * typically the shared `database`. The caller starts its server.
 */
export async function policyHost(st: Stage, values: Record<string, string | number | string[]>): Promise<PolicyHost> {
  const dir = join(st.tmp.path, "b");
  mkdirSync(join(dir, "map"), { recursive: true });
  const smtp = `198.18.0.1:${freePort()}`;
  const postfix = await startPostfix({ dir: join(dir, "postfix"), mapPath: join(dir, "map", "clients"), mapType: "hash", listen: smtp, hook: "policy" });
  st.onCleanup(() => postfix.stop());
  const port = freePort();
  const url = `https://198.18.0.1:${port}`;
  const config = writeServerConfig(dir, {
    listen: `198.18.0.1:${port}`, public_url: url, state_dir: join(dir, "state"), map: join(dir, "map", "clients"), map_type: "hash",
    lookup: "policy", policy_socket: join(postfix.queueDir, "relayctl", "policy"), renewals_per_minute: 0, ...values,
  });
  const relays = async (host: Host): Promise<boolean> => {
    const r = await swaks({ host, server: smtp });
    if (!r.accepted && !r.denied) throw new Error(`swaks via ${smtp} gave neither verdict:\n${r.output}`);
    return r.accepted;
  };
  return { postfix, smtp, url, config, relays };
}

/** Asks a policy socket about one client address, as Postfix's check_policy_service does; resolves to the action. */
export async function askPolicy(socket: string, address: string): Promise<string> {
  let got = "";
  const answer = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer from ${socket} in 2 s`)), 2_000);
    void Bun.connect({
      unix: socket,
      socket: {
        open: (s) => void s.write(`request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=${address}\nclient_name=unknown\nrecipient=b@example.net\nsender=a@example.org\n\n`),
        data: (s, d) => {
          got += new TextDecoder().decode(d);
          if (got.endsWith("\n\n")) {
            clearTimeout(timer);
            s.end();
            resolve(/^action=(\S+)/m.exec(got)?.[1] ?? got);
          }
        },
        error: (_s, err) => reject(err),
      },
    }).catch(reject);
  });
  return answer;
}
