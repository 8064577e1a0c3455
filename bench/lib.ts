/**
 * Shared helpers for bench/: tool installation, process bookkeeping (every
 * process is stopped by its pid), statistics, and starting relayctl servers on
 * loopback with state seeded directly into SQLite.
 *
 * Safety: servers listen on 127.0.0.1 only; the Postfix part (postfix.ts) uses
 * the e2e harness, which only uses 198.18.0.0/24 inside namespaces it creates.
 */
import { X509Certificate, createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { StateStore } from "../src/server/state.ts";
import { newToken } from "../src/server/tokens.ts";
import { freePort, run, which } from "../test/e2e/harness.ts";

export const ROOT = resolve(import.meta.dir, "..");
/** The binary under test; BENCH_RELAYCTL overrides it (e.g. to compare two builds). */
export const RELAYCTL = process.env.BENCH_RELAYCTL ?? join(ROOT, "dist", "relayctl");
/** The bun that built dist/relayctl: the runtime inside it is the same version. */
export const BUN = process.execPath;

// ---------------------------------------------------------------------------
// Result rows

export type Verdict = "met" | "MISSED" | "report" | "skipped";

/** One line of the results table. */
export interface Row {
  figure: string;
  relayctl: string;
  baseline: string;
  ratio: string;
  target: string;
  verdict: Verdict;
  /** Longer explanation printed under the table. */
  note?: string;
}

// ---------------------------------------------------------------------------
// Statistics

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** "median (min–max) unit" with a sensible number of digits. */
export function mmm(xs: number[], unit: string, digits = 1): string {
  const f = (x: number) => x.toFixed(digits);
  if (xs.length === 1) return `${f(xs[0]!)} ${unit}`;
  return `${f(median(xs))} ${unit} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
}

export function ratio(a: number, b: number): string {
  return `${(a / b).toFixed(2)}×`;
}

// ---------------------------------------------------------------------------
// Tools

const NEEDED: Array<[bin: string, pkg: string]> = [
  ["wrk", "wrk"],
  ["hyperfine", "hyperfine"],
  ["curl", "curl"],
  ["postfix", "postfix"],
  ["postmap", "postfix"],
  ["swaks", "swaks"],
  ["ip", "iproute2"],
];

/** Installs missing tools from Debian: one apt-get update, one apt-get install, only if something is missing. */
export async function ensureTools(say: (s: string) => void): Promise<void> {
  const missing = [...new Set(NEEDED.filter(([b]) => !which(b)).map(([, p]) => p))];
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`missing ${missing.join(" ")}; run as root or apt-get install -y ${missing.join(" ")}`);
  say(`installing ${missing.join(" ")} (apt-get)`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  if (missing.includes("postfix")) {
    // "No configuration": the system Postfix stays unconfigured; the bench runs its own private instance.
    const p = Bun.spawn(["debconf-set-selections"], { stdin: new TextEncoder().encode("postfix postfix/main_mailer_type select No configuration\n"), stdout: "ignore", stderr: "ignore" });
    await p.exited;
  }
  const up = await run(["apt-get", "update", "-qq"], { env, timeoutMs: 180_000 });
  if (up.code !== 0) throw new Error(`apt-get update failed: ${up.stderr}`);
  const inst = await run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...missing], { env, timeoutMs: 240_000 });
  if (inst.code !== 0) throw new Error(`apt-get install failed: ${inst.stderr}`);
}

export function toolPath(name: string): string {
  const p = which(name);
  if (!p) throw new Error(`${name} not found`);
  return p;
}

// ---------------------------------------------------------------------------
// Processes: every one is recorded and stopped by pid.

const live = new Map<number, string>();

export function track(pid: number, what: string): void {
  live.set(pid, what);
}

export function untrack(pid: number): void {
  live.delete(pid);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, up to 3 s grace, then SIGKILL; by pid only. */
export async function stopPid(pid: number): Promise<void> {
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    untrack(pid);
    return;
  }
  for (let i = 0; i < 60 && alive(pid); i++) await Bun.sleep(50);
  if (alive(pid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  untrack(pid);
}

/** Synchronous last resort at exit. */
export function killAllTrackedSync(): void {
  for (const pid of live.keys()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  live.clear();
}

// ---------------------------------------------------------------------------
// Temporary directories

const dirs: string[] = [];

export function scratch(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), `rlbench-${prefix}-`));
  dirs.push(d);
  return d;
}

export function removeScratch(): void {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------
// Addresses

/** The i-th address of 198.18.0.0/15 after skipping 198.18.0.0/24 (kept for the namespace hosts). */
export function benchAddress(i: number): string {
  const n = i + 256 * 8; // start at 198.18.8.0
  if (n >= 131072) throw new Error("address index out of 198.18.0.0/15");
  return `198.${18 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`;
}

// ---------------------------------------------------------------------------
// State seeding (written into SQLite before the server starts; the server
// rebuilds the map from state at start).

export interface Seeded {
  /** token per client name, only for the first `keepTokens` clients. */
  tokens: string[];
  names: string[];
}

/**
 * Creates `clients` clients (allow 198.18.0.0/15) and, when `leases`, one live
 * IPv4 lease each at benchAddress(i), all in one transaction.
 */
export function seedState(stateDir: string, o: { clients: number; leases: boolean; keepTokens: number; ttlSec?: number; prefix?: string }): Seeded {
  const store = new StateStore(stateDir);
  const tokens: string[] = [];
  const names: string[] = [];
  const now = Date.now();
  const exp = now + (o.ttlSec ?? 3600) * 1000;
  try {
    const ins = store.db.prepare("INSERT INTO clients (name, token_id, token_hash, ttl, allow, created_at) VALUES (?, ?, ?, NULL, ?, ?)");
    const lease = store.db.prepare("INSERT INTO leases (client, family, ip, granted_at, renewed_at, expires_at) VALUES (?, 4, ?, ?, ?, ?)");
    const allow = JSON.stringify(["198.18.0.0/15"]);
    store.tx(() => {
      for (let i = 0; i < o.clients; i++) {
        const name = `${o.prefix ?? "s"}${String(i).padStart(6, "0")}`;
        const t = newToken();
        ins.run(name, t.tokenId, t.hash, allow, now);
        if (o.leases) lease.run(name, benchAddress(i), now, now, exp);
        if (i < o.keepTokens) {
          tokens.push(t.token);
          names.push(name);
        }
      }
    });
  } finally {
    store.close();
  }
  return { tokens, names };
}

// ---------------------------------------------------------------------------
// relayctl server on loopback

export interface BenchServer {
  pid: number;
  port: number;
  url: string;
  dir: string;
  config: string;
  stateDir: string;
  mapPath: string;
  certPem: string;
  certPath: string;
  logPath: string;
  /** Milliseconds from spawn to the first healthy /healthz answer. */
  readyMs: number;
  stop(): Promise<void>;
}

/** Writes server.toml in dir (listen 127.0.0.1:free port) and returns its path and port. */
export function writeServerConfig(dir: string, o: { mapType?: string; mapPath?: string; ttl?: string; extra?: string[] } = {}): { config: string; port: number; stateDir: string; mapPath: string } {
  const port = freePort();
  const stateDir = join(dir, "state");
  const mapPath = o.mapPath ?? join(dir, "map", "clients");
  mkdirSync(join(mapPath, ".."), { recursive: true });
  const config = join(dir, "server.toml");
  writeFileSync(
    config,
    [
      `listen = "127.0.0.1:${port}"`,
      `public_url = "https://127.0.0.1:${port}"`,
      `state_dir = "${stateDir}"`,
      `map = "${mapPath}"`,
      `map_type = "${o.mapType ?? "hash"}"`,
      `ttl = "${o.ttl ?? "20m"}"`,
      `postmap = "${toolPath("postmap")}"`,
      // The figures measure one client renewing back to back; the default cap (20/min) would refuse it.
      "renewals_per_minute = 0",
      ...(o.extra ?? []),
      "",
    ].join("\n"),
  );
  return { config, port, stateDir, mapPath };
}

/** Starts `relayctl server` (the built binary) and waits until /healthz answers. */
export async function startServer(dir: string, cfg: { config: string; port: number; stateDir: string; mapPath: string }, o: { verbose?: boolean } = {}): Promise<BenchServer> {
  const logPath = join(dir, "server.log");
  const t0 = performance.now();
  const argv = [RELAYCTL, "server", "--config", cfg.config, ...(o.verbose ? ["--verbose"] : [])];
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: Bun.file(logPath), stderr: Bun.file(logPath) });
  track(proc.pid, "relayctl server");
  const url = `https://127.0.0.1:${cfg.port}`;
  let readyMs = NaN;
  const deadline = Date.now() + 60_000;
  for (let i = 0; i < 1200 && Date.now() < deadline; i++) {
    if (proc.exitCode !== null) break;
    try {
      const r = await fetch(`${url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit);
      await r.text();
      if (r.status === 200) {
        readyMs = performance.now() - t0;
        break;
      }
    } catch {
      // not listening yet
    }
    await Bun.sleep(25);
  }
  if (!Number.isFinite(readyMs)) {
    await stopPid(proc.pid);
    throw new Error(`relayctl server did not become healthy: ${existsSync(logPath) ? readFileSync(logPath, "utf8").slice(-2000) : ""}`);
  }
  const certPath = join(cfg.stateDir, "tls", "cert.pem");
  return {
    pid: proc.pid,
    port: cfg.port,
    url,
    dir,
    config: cfg.config,
    stateDir: cfg.stateDir,
    mapPath: cfg.mapPath,
    certPem: readFileSync(certPath, "utf8"),
    certPath,
    logPath,
    readyMs,
    stop: () => stopPid(proc.pid),
  };
}

/** Resident and peak memory of a process, in MB, from /proc. */
export function memoryOf(pid: number): { rssMb: number; hwmMb: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
  return { rssMb: kb("VmRSS") / 1024, hwmMb: kb("VmHWM") / 1024 };
}

/** POST /v1/lease from this process, verifying the server certificate as curl --cacert does. */
export async function postLease(s: BenchServer, token: string, ip: string): Promise<{ status: number; body: { expires_at?: string; event?: string } }> {
  const r = await fetch(`${s.url}/v1/lease`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ ip }),
    tls: { ca: [s.certPem] },
  } as RequestInit);
  const text = await r.text();
  let body = {};
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: r.status, body };
}

/** `relayctl server add NAME --allow 198.18.0.0/15` → token and pin from the printed enrollment line. */
export async function addClient(s: BenchServer, name: string, extra: string[] = []): Promise<{ token: string; pin: string; line: string }> {
  const r = await run([RELAYCTL, "server", "add", name, "--config", s.config, "--allow", "198.18.0.0/15", ...extra], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new Error(`server add ${name}: ${r.stderr}`);
  const line = r.stdout.trim();
  const token = /^token: (\S+)$/m.exec(line)?.[1];
  const pin = /--pin (\S+)/.exec(line)?.[1];
  if (!token || !pin) throw new Error(`unexpected enrollment line: ${line}`);
  return { token, pin, line };
}

/** `relayctl client enroll` into dir/NAME.toml; returns the config path. */
export async function enrollClient(s: BenchServer, dir: string, name: string, token: string, pin: string): Promise<string> {
  const path = join(dir, `${name}.toml`);
  const r = await run([RELAYCTL, "client", "enroll", s.url, "--name", name, "--token", token, "--pin", pin, "--config", path], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new Error(`enroll ${name}: ${r.stderr}`);
  return path;
}

export function fileSizeMb(path: string): number {
  return statSync(path).size / 1024 / 1024;
}

/** Refuses argv elements that a tool taking a command string (hyperfine) would split or interpret. */
export function plainArgv(argv: string[]): string {
  for (const a of argv) {
    if (!/^[A-Za-z0-9@%+=:,./_-]+$/.test(a)) throw new Error(`argument not safe to hand to hyperfine: ${a}`);
  }
  return argv.join(" ");
}

// ---------------------------------------------------------------------------
// hyperfine and curl

/** One command's result in hyperfine's --export-json (seconds). */
export interface HfResult {
  command: string;
  median: number;
  mean: number;
  user: number;
  system: number;
  times: number[];
}

/** Runs hyperfine (no shell: -N) over commands; returns per-command results in order. */
export async function hyperfine(cmds: string[][], runs: number, warmup: number, dir: string): Promise<HfResult[]> {
  const out = join(dir, `hf-${Math.random().toString(16).slice(2)}.json`);
  const argv = [toolPath("hyperfine"), "-N", "--style", "none", "--warmup", String(warmup), "--runs", String(runs), "--export-json", out, ...cmds.map(plainArgv)];
  const r = await run(argv, { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`hyperfine failed: ${r.stderr}${r.stdout}`);
  return (JSON.parse(readFileSync(out, "utf8")) as { results: HfResult[] }).results;
}

/** SPKI sha256 in curl's --pinnedpubkey form. */
export function spkiPin(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: "spki", format: "der" });
  return `sha256//${createHash("sha256").update(spki).digest("base64")}`;
}

/** User+system CPU a process has used so far, in milliseconds, from /proc/PID/stat (clock ticks of 10 ms). */
export function cpuMsOf(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces) start at state (field 3).
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}

/**
 * CPU (ms, user+sys) of a process and its descendants, living or reaped:
 * PostgreSQL's backends are children of the postmaster, and a backend that
 * exited is counted in its parent's cutime/cstime.
 */
export function treeCpuMs(pid: number): number {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return 0; // gone meanwhile
  }
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  let ms = (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 10;
  let children = "";
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8");
  } catch {
    // no children file (old kernel) or gone
  }
  for (const c of children.split(" ").filter(Boolean)) ms += treeCpuMs(Number(c));
  return ms;
}

/** Busy CPU time of the whole machine so far (ms, every core, from /proc/stat): what all processes together used. */
export function machineBusyMs(): number {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
  const busy = f.slice(0, 8).reduce((a, b) => a + b, 0) - f[3]! - f[4]!;
  return busy * 10;
}

/** Total size in bytes of the regular files directly and indirectly under dir. */
export function dirBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) n += dirBytes(p);
    else if (e.isFile()) n += statSync(p).size;
  }
  return n;
}
