/**
 * Drives the compiled dist/relayctl for e2e tests: a server process started
 * and stopped by pid, admin commands, and client runs inside a namespace.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { run, type Host, type RunResult } from "./harness.ts";

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

/** Writes a server.toml into dir and returns its path. */
export function writeServerConfig(dir: string, values: Record<string, string | string[]>): string {
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

/** Starts `relayctl server --config PATH` and waits until /healthz answers on url. */
export async function startServer(configPath: string, url: string, env?: Record<string, string>): Promise<ServerProc> {
  const proc = Bun.spawn([BIN, "server", "--config", configPath], { stdout: "pipe", stderr: "pipe", env: env ? { ...process.env, ...env } : undefined });
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

/** `relayctl server add` → the enrollment line's argv (without the leading "relayctl"). */
export async function addClient(configPath: string, name: string, extra: string[] = []): Promise<string[]> {
  const r = await relayctl(["server", "add", name, "--config", configPath, ...extra]);
  if (r.code !== 0) throw new Error(`server add failed (${r.code}): ${r.stderr}`);
  const line = r.stdout.trim();
  if (!/^relayctl client enroll https:\/\/\S+ --name \S+ --token \S+ --pin sha256:[0-9a-f]{64}$/.test(line)) {
    throw new Error(`unexpected enrollment line: ${line}`);
  }
  return line.split(" ").slice(1);
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
