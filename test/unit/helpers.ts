// Shared fixtures for the unit tests: temp dirs, a fake postmap, a fake
// clock, output capture and a quiet logger. Nothing here touches the real
// Postfix, the network beyond loopback, or anything outside the temp dirs.
import type { Server } from "bun";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RelayError } from "../../src/lib/errors.ts";
import { log } from "../../src/lib/logging.ts";
import type { ExportSpec, ServerConfig } from "../../src/lib/config.ts";
import { assemble, type Skeleton } from "../../src/server/assemble.ts";
import { dispatcher } from "../../src/server/doors/routes.ts";
import type { Clock } from "../../src/lib/clock.ts";
import type { LeaseBook } from "../../src/server/leases.ts";
import type { MapLookup, MapWriter } from "../../src/server/lookups/map.ts";
import type { Metrics } from "../../src/server/metrics.ts";
import type { RefusalLog } from "../../src/server/refusals.ts";
import type { Timers } from "../../src/server/runtime/timers.ts";
import type { LeaseService } from "../../src/server/service.ts";
import { StateStore } from "../../src/server/state.ts";
import type { Store } from "../../src/server/stores/index.ts";
import { SqliteStore } from "../../src/server/stores/sqlite.ts";
import { AuthThrottle, type RenewalLimiter } from "../../src/server/throttle.ts";
import type { Alerter, AlertDeps } from "../../src/server/alerts.ts";
import type { Watchdog } from "../../src/server/runtime/watchdog.ts";

const made: string[] = [];
process.once("exit", () => removeTempDirs());

/** Creates a fresh temp directory; removeTempDirs (or process exit) deletes it. */
export function tempDir(prefix = "relayctl-unit-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

/** Deletes every directory tempDir made so far; call it from afterAll. */
export function removeTempDirs(): void {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** Turns the shared logger off so expected errors do not clutter test output. */
export function silenceLogger(): void {
  log.level = -999;
}

/** A clock the test moves by hand. */
export class FakeClock implements Clock {
  constructor(public t = Date.UTC(2030, 0, 1)) {}
  /** The current fake time in milliseconds. */
  now(): number {
    return this.t;
  }
  /** Moves time forward by ms. */
  advance(ms: number): void {
    this.t += ms;
  }
}

/** One-shot timers on a FakeClock: advance() moves the clock and fires what fell due, in order. */
export class FakeTimers implements Timers {
  private next = 1;
  readonly pending = new Map<number, { fn: () => void; at: number }>();
  constructor(private readonly clock: FakeClock) {}
  set(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.pending.set(id, { fn, at: this.clock.now() + ms });
    return id;
  }
  clear(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  /** Delays (from now) of the timers waiting. */
  delays(): number[] {
    return [...this.pending.values()].map((t) => t.at - this.clock.now());
  }
  /** Moves the clock by ms, firing each timer that falls due on the way and letting its promises settle. */
  async advance(ms: number): Promise<void> {
    const end = this.clock.now() + ms;
    for (;;) {
      const due = [...this.pending].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.pending.delete(due[0]);
      this.clock.t = Math.max(this.clock.t, due[1].at);
      due[1].fn();
      await settle();
    }
    this.clock.t = end;
  }
}

/** Lets promise callbacks run. */
export const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A controllable stand-in for postmap, living in its own directory. */
export interface FakePostmap {
  /** The executable to pass as `postmap`. */
  path: string;
  /** Next runs fail with this message on stderr and exit 1. */
  fail(message: string): void;
  /** Only the next run fails with this message; later runs work again. */
  failOnce(message: string): void;
  /** Next runs sleep this many seconds before building (0 = no sleep). */
  slow(seconds: number): void;
  /** Next runs hang (exec sleep 30) until killed. */
  hang(): void;
  /** Next runs hang in a grandchild that keeps stdout/stderr open after the script itself is killed. */
  hangInChild(): void;
  /** Back to a fast, working postmap. */
  ok(): void;
  /** How many times the script has been started. */
  calls(): number;
  /** Pid the last hanging run wrote (the script, or its grandchild), or null. */
  hangPid(): number | null;
}

/**
 * Writes a shell script that behaves like `postmap TYPE:PATH`: it copies PATH
 * to PATH.db (or .cdb/.lmdb by type). Files next to it switch it to failing,
 * slow or hanging, and it counts its runs.
 */
export function fakePostmap(dir = tempDir("relayctl-postmap-")): FakePostmap {
  const path = join(dir, "postmap");
  const ctl = (name: string): string => join(dir, `ctl.${name}`);
  writeFileSync(
    path,
    `#!/bin/sh
echo run >> '${ctl("calls")}'
arg=""
for a in "$@"; do arg="$a"; done
type="\${arg%%:*}"
src="\${arg#*:}"
case "$type" in cdb) suffix=.cdb ;; lmdb) suffix=.lmdb ;; *) suffix=.db ;; esac
if [ -f '${ctl("hang")}' ]; then echo $$ > '${ctl("pid")}'; exec sleep 30; fi
if [ -f '${ctl("hangchild")}' ]; then sleep 30 & echo $! > '${ctl("pid")}'; wait; exit 0; fi
if [ -f '${ctl("sleep")}' ]; then sleep "$(cat '${ctl("sleep")}')"; fi
if [ -f '${ctl("fail")}' ]; then cat '${ctl("fail")}' >&2; exit 1; fi
if [ -f '${ctl("failonce")}' ]; then cat '${ctl("failonce")}' >&2; rm -f '${ctl("failonce")}'; exit 1; fi
cp "$src" "$src$suffix" || exit 1
exit 0
`,
  );
  chmodSync(path, 0o755);
  const clear = (): void => {
    for (const n of ["fail", "failonce", "sleep", "hang", "hangchild"]) if (existsSync(ctl(n))) unlinkSync(ctl(n));
  };
  return {
    path,
    fail: (message) => {
      clear();
      writeFileSync(ctl("fail"), message + "\n");
    },
    failOnce: (message) => {
      clear();
      writeFileSync(ctl("failonce"), message + "\n");
    },
    slow: (seconds) => {
      clear();
      if (seconds > 0) writeFileSync(ctl("sleep"), String(seconds));
    },
    hang: () => {
      clear();
      writeFileSync(ctl("hang"), "");
    },
    hangInChild: () => {
      clear();
      writeFileSync(ctl("hangchild"), "");
    },
    ok: clear,
    calls: () => (existsSync(ctl("calls")) ? readFileSync(ctl("calls"), "utf8").split("\n").filter(Boolean).length : 0),
    hangPid: () => (existsSync(ctl("pid")) ? Number(readFileSync(ctl("pid"), "utf8").trim()) : null),
  };
}

/** True while a process with this pid exists (zombies aside). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Kills one process by pid, ignoring "no such process". */
export function killPid(pid: number | null | undefined): void {
  if (!pid) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** Writes a server.toml into dir (fake postmap, map_type hash, loopback listen) and returns its path. */
export function writeServerConfig(dir: string, opts: { postmap: string; port?: number; extra?: string }): string {
  const port = opts.port ?? 8443;
  const path = join(dir, "server.toml");
  writeFileSync(
    path,
    [
      `listen = "127.0.0.1:${port}"`,
      `public_url = "https://127.0.0.1:${port}"`,
      `state_dir = "${join(dir, "state")}"`,
      `map = "${join(dir, "postfix", "clients")}"`,
      `map_type = "hash"`,
      `postmap = "${opts.postmap}"`,
      opts.extra ?? "",
    ].join("\n") + "\n",
  );
  return path;
}

/** A stand-in for Bun's Server whose requestIP reports `address` as the peer. */
export function fakeServer(address: string | null): Server<unknown> {
  return {
    requestIP: () => (address === null ? null : { address, family: address.includes(":") ? "IPv6" : "IPv4", port: 40000 }),
  } as unknown as Server<unknown>;
}

/** What a captured call printed, and what it returned or threw. */
export interface Captured<T> {
  stdout: string;
  stderr: string;
  value?: T;
  error?: unknown;
}

/** Runs fn with console.log/error and process.stdout/stderr.write captured. */
export async function capture<T>(fn: () => T | Promise<T>): Promise<Captured<T>> {
  const out: string[] = [];
  const err: string[] = [];
  const saved = { log: console.log, error: console.error, warn: console.warn, o: process.stdout.write, e: process.stderr.write };
  const fmt = (args: unknown[]): string => args.map((a) => (typeof a === "string" ? a : Bun.inspect(a))).join(" ") + "\n";
  console.log = (...a: unknown[]) => void out.push(fmt(a));
  console.error = (...a: unknown[]) => void err.push(fmt(a));
  console.warn = (...a: unknown[]) => void err.push(fmt(a));
  process.stdout.write = ((chunk: string | Uint8Array) => (out.push(String(chunk)), true)) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string | Uint8Array) => (err.push(String(chunk)), true)) as typeof process.stderr.write;
  const result: Captured<T> = { stdout: "", stderr: "" };
  try {
    result.value = await fn();
  } catch (e) {
    result.error = e;
  } finally {
    console.log = saved.log;
    console.error = saved.error;
    console.warn = saved.warn;
    process.stdout.write = saved.o;
    process.stderr.write = saved.e;
  }
  result.stdout = out.join("");
  result.stderr = err.join("");
  return result;
}

/** Runs fn and returns the RelayError it throws (sync or async), failing when it throws nothing else. */
export async function relayError(fn: () => unknown): Promise<RelayError> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof RelayError) return err;
    throw new Error(`expected a RelayError, got ${String(err)}`);
  }
  throw new Error("expected a RelayError, but nothing was thrown");
}

/** Everything a lease-service test needs, from the server's own assemble() with a fake clock and timers. */
export interface TestService {
  /** The assembled server (publisher, exports, housekeeping), not started. */
  server: Skeleton;
  service: LeaseService;
  store: StateStore;
  /** The same state as the Store interface the service uses. */
  shared: SqliteStore;
  leases: LeaseBook;
  writer: MapWriter;
  lookup: MapLookup;
  pm: FakePostmap;
  metrics: Metrics;
  refusals: RefusalLog;
  /** The live configuration: change trustedProxies, metricsAllow or ipv6Prefix in place. */
  config: ServerConfig;
  mapPath: string;
  /** The timers the runtime parts use (retries, expiry, status): they fire only when advanced. */
  timers: FakeTimers;
  /** The HTTPS routes as Bun.serve would dispatch them. */
  dispatch: (req: Request, server: Server<unknown>) => Promise<Response>;
  /** Every part as assemble() wired them (follower, freshness, publisher), none started. */
  skeleton: Skeleton;
  /** The overdue check and its alerter (delivery as opts.alertDeps gives it). */
  watchdog: Watchdog;
  alerter: Alerter;
}

/**
 * The server as assemble() wires it, over a state in dir and a map lookup
 * whose postmap is fake; nothing started (no listener, no initial
 * publication). Throttling and renewal limits are off unless given (they
 * have their own tests).
 */
export async function testService(
  dir: string,
  clock: FakeClock,
  opts: { authThrottle?: AuthThrottle; renewals?: RenewalLimiter; ttl?: number; refusalsPerMinute?: number; store?: (sqlite: SqliteStore) => Store; alertDeps?: Partial<AlertDeps>; exports?: ExportSpec[] } = {},
): Promise<TestService> {
  const store = new StateStore(join(dir, "state"));
  const shared = new SqliteStore(store, clock);
  const pm = fakePostmap(dir);
  mkdirSync(join(dir, "postfix"), { recursive: true });
  const mapPath = join(dir, "postfix", "clients");
  const config: ServerConfig = {
    path: join(dir, "server.toml"),
    listen: { host: "127.0.0.1", port: 8443 },
    publicUrl: "https://127.0.0.1:8443",
    stateDir: join(dir, "state"),
    map: mapPath,
    mapType: "hash",
    ttl: opts.ttl ?? 1200,
    postmap: pm.path,
    trustedProxies: [],
    renewalsPerMinute: 0,
    postmapTimeout: 10,
    metricsAllow: [],
    logFormat: "text",
    logLevel: "info",
    auditRetention: 90 * 86400,
    staleAfter: 30,
    lookup: "map",
    policySocket: join(dir, "policy"),
    eximHosts: join(dir, "exim", "hosts"),
    smtpdTable: join(dir, "smtpd", "clients"),
    ipv6Prefix: 128,
    overdueCheck: 30,
    alerts: { command: [], mail: [] },
    clientMetrics: true,
    exports: opts.exports ?? [],
  };
  const timers = new FakeTimers(clock);
  const s = await assemble(config, {
    clock,
    timers,
    store: opts.store ? opts.store(shared) : shared,
    authThrottle: opts.authThrottle ?? new AuthThrottle(1_000_000),
    renewals: opts.renewals,
    refusalsPerMinute: opts.refusalsPerMinute,
    alertDeps: opts.alertDeps,
  });
  const lookup = s.lookup as MapLookup;
  const { service, metrics, refusals } = s;
  return { server: s, service, store, shared, leases: s.core.leases, writer: lookup.writer, lookup, pm, metrics, refusals, config: s.core.config, mapPath, timers, dispatch: dispatcher(s.routes), skeleton: s, watchdog: s.watchdog, alerter: s.alerter };
}
