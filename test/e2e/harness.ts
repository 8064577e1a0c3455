/**
 * End-to-end harness: private Postfix instances, throwaway network namespaces and
 * swaks probes, so tests can check what a real smtpd decides about relaying.
 *
 * Safety: only loopback and 198.18.0.0/24 (inside namespaces this module creates)
 * are ever used; Postfix gets no queue manager and no network delivery agents, so nothing
 * it accepts can leave the machine.
 */
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Result of running an external command. */
export type RunResult = { code: number; stdout: string; stderr: string };

/** Options for running an external command. */
export type RunOptions = { env?: Record<string, string>; timeoutMs?: number };

/** A private, running Postfix instance. */
export type Postfix = { configDir: string; queueDir: string; pid: number; stop(): Promise<void> };

/** Options for {@link startPostfix}. */
export type PostfixOptions = {
  dir: string;
  mapPath: string;
  mapType: string;
  listen: string;
  /** How the relayctl lookup is hooked in; "policy" asks relayctl/policy under the queue directory. */
  hook?: "mynetworks" | "check_client_access" | "policy";
};

/** A network namespace attached to the test bridge. */
export type Host = {
  ns: string;
  ip: string;
  run(argv: string[], opts?: RunOptions): Promise<RunResult>;
  setIp(newIp: string): Promise<void>;
  addIp(extraIp: string): Promise<void>;
};

/** A test bridge in the root namespace plus the hosts attached to it. */
export type Net = {
  hostIp: "198.18.0.1";
  bridge: string;
  addHost(name: string, ip: string): Promise<Host>;
  destroy(): Promise<void>;
};

/** Options for {@link swaks}. */
export type SwaksOptions = {
  host?: Host;
  server: string;
  to?: string;
  from?: string;
  /** Source address to bind, e.g. a secondary address added with Host.addIp. */
  bind?: string;
  /** Pretend to be this client address (XCLIENT ADDR; documentation prefixes only). */
  xclientAddr?: string;
  timeoutMs?: number;
};

/** Outcome of one swaks relay probe: the verdict and the RCPT reply code (0 when none came). */
export type SwaksResult = { accepted: boolean; denied: boolean; code: number; output: string };

/** A temporary directory and a way to remove it. */
export type TmpDir = { path: string; remove(): void };

const HOST_IP = "198.18.0.1" as const;
const NET_RE = /^198\.18\.0\.(\d{1,3})$/;
// The name encodes prefix + 4 hex chars so stale detection can match it exactly.
const ID_LEN = 4;
const DEFAULT_TIMEOUT_MS = 15_000;
const OWNER_FILE = ".relayctl-e2e-owner";

// Postfix tools live in /usr/sbin, which is often missing from a non-login PATH.
const SEARCH_PATH = [process.env.PATH ?? "", "/usr/local/sbin", "/usr/sbin", "/sbin"].join(":");

/** Absolute path of an executable, or undefined if it is not installed. */
export function which(name: string): string | undefined {
  return Bun.which(name, { PATH: SEARCH_PATH }) ?? undefined;
}

function bin(name: string): string {
  const p = which(name);
  if (!p) throw new Error(`${name} not found in ${SEARCH_PATH}`);
  return p;
}

/** Runs argv (never through a shell) and kills it by pid if it outlives timeoutMs. */
export async function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const proc = Bun.spawn(argv, {
    env: { ...process.env, PATH: SEARCH_PATH, ...opts.env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }, timeoutMs);
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  clearTimeout(timer);
  return {
    code: timedOut ? 124 : code,
    stdout,
    stderr: timedOut ? `${stderr}\n[killed after ${timeoutMs} ms]` : stderr,
  };
}

/** Like {@link run} but throws with the command's output when it exits non-zero. */
export async function runOk(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    throw new Error(`${argv.join(" ")} exited ${r.code}\n${r.stdout}${r.stderr}`);
  }
  return r;
}

// Exit handlers cannot await, so cleanup there must be synchronous.
function runSync(argv: string[], timeoutMs = 5_000): RunResult {
  const r = Bun.spawnSync(argv, {
    env: { ...process.env, PATH: SEARCH_PATH },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    timeout: timeoutMs,
  });
  return { code: r.exitCode ?? 124, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

// ---------------------------------------------------------------------------
// Crash cleanup: whatever a test forgets (or cannot reach because it crashed)
// is torn down when the process exits.

const cleanups = new Map<string, () => void>();
let hooksInstalled = false;

function runCleanupsSync(): void {
  for (const [key, fn] of [...cleanups].reverse()) {
    cleanups.delete(key);
    try {
      fn();
    } catch {
      // best effort: keep going so one failure does not leak everything else
    }
  }
}

function registerCleanup(key: string, fn: () => void): void {
  if (!hooksInstalled) {
    hooksInstalled = true;
    process.on("exit", runCleanupsSync);
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      // A handler replaces the default "terminate", so we must exit ourselves.
      process.once(sig, () => {
        runCleanupsSync();
        process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
      });
    }
  }
  cleanups.set(key, fn);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // An unreaped zombie still answers kill(0) but is no longer running.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Support detection

/** Whether this machine can run the e2e tests; if not, why and what fixes it. */
export type E2ESupport = { ok: true } | { ok: false; reason: string; fix: string };

let supportCache: E2ESupport | undefined;

/** Checks whether this machine can run the e2e tests (root, tools, usable netns). */
export function e2eSupport(): E2ESupport {
  if (supportCache) return supportCache;
  supportCache = detectSupport();
  return supportCache;
}

const INSTALL_FIX = "as root, test/prereqs.sh installs what they need";
// `ip netns exec` remounts / and /sys; a chroot whose root is no mount point, or an unprivileged container, cannot.
const NETNS_FIX = "run them where `ip netns add` and `ip netns exec` work: not in an unprivileged container; in a chroot, bind-mount its root onto itself and mount /proc and /sys first";

function detectSupport(): E2ESupport {
  if (process.platform !== "linux") return { ok: false, reason: "not Linux", fix: "run them on Linux" };
  if (process.getuid?.() !== 0) return { ok: false, reason: "not root (the e2e tests create network namespaces and run Postfix)", fix: INSTALL_FIX };
  const missing = ["postfix", "postmap", "postconf", "swaks", "ip"].filter((n) => !which(n));
  if (missing.length) {
    return { ok: false, reason: `missing executables: ${missing.join(", ")}`, fix: INSTALL_FIX };
  }
  // Listing is not enough: containers often allow `ip netns list` but forbid creating one.
  const probe = `relayctl-probe-${process.pid}-${Math.random().toString(16).slice(2, 8)}`;
  const add = runSync([bin("ip"), "netns", "add", probe]);
  if (add.code !== 0) return { ok: false, reason: `ip netns add failed: ${add.stderr.trim()}`, fix: NETNS_FIX };
  const lo = runSync([bin("ip"), "-n", probe, "link", "set", "lo", "up"]);
  // The harness runs hosts through `ip netns exec`, which needs more than `ip -n` does.
  const exec = lo.code === 0 ? runSync([bin("ip"), "netns", "exec", probe, "true"]) : lo;
  runSync([bin("ip"), "netns", "del", probe]);
  if (exec.code !== 0) return { ok: false, reason: `cannot configure a netns: ${exec.stderr.trim()}`, fix: NETNS_FIX };
  return { ok: true };
}

/**
 * Whether a missing e2e prerequisite fails the run: always, unless the user
 * opted out with RELAYCTL_SKIP_E2E=1 (CI's RELAYCTL_REQUIRE_E2E=1 overrides
 * that). A test that cannot run must never look like one that passed.
 */
export function e2eRequired(): boolean {
  return process.env.RELAYCTL_REQUIRE_E2E === "1" || process.env.RELAYCTL_SKIP_E2E !== "1";
}

let skipNoted = false;

/**
 * True when e2e is supported. Unsupported: throws naming what is missing and
 * the setup command, or with RELAYCTL_SKIP_E2E=1 says once why and returns false.
 */
export function requireE2E(): boolean {
  const s = e2eSupport();
  if (s.ok) return true;
  if (e2eRequired()) {
    throw new Error(`e2e tests cannot run: ${s.reason}: ${s.fix}; RELAYCTL_SKIP_E2E=1 skips them`);
  }
  if (!skipNoted) process.stderr.write(`relayctl e2e: skipping the e2e tests (RELAYCTL_SKIP_E2E=1): ${s.reason}\n`);
  skipNoted = true;
  return false;
}

/** Map types this Postfix build supports (`postconf -m`), e.g. to skip lmdb when absent. */
export function postfixMapTypes(): string[] {
  const r = runSync([bin("postconf"), "-m"]);
  return r.code === 0 ? r.stdout.split("\n").map((s) => s.trim()).filter(Boolean) : [];
}

// ---------------------------------------------------------------------------
// Small helpers

/** Picks a TCP port that is currently free on 127.0.0.1 (racy by nature; fine for tests). */
export function freePort(): number {
  const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = server.port;
  server.stop(true);
  return port;
}

/** Creates a temp dir traversable by the postfix user; remove() deletes it recursively. */
export function tmpDir(prefix: string): TmpDir {
  const path = mkdtempSync(join(tmpdir(), prefix));
  // mkdtemp gives 0700, but Postfix daemons drop to the postfix user and must reach the queue.
  chmodSync(path, 0o755);
  // Lets cleanupStale tell a crashed run's directory from one a concurrent run still uses.
  writeFileSync(join(path, OWNER_FILE), `${process.pid}\n`);
  const remove = () => rmSync(path, { recursive: true, force: true });
  // RELAYCTL_E2E_KEEP=1 keeps directories (maillog, configs) of a crashed run for debugging.
  if (process.env.RELAYCTL_E2E_KEEP !== "1") registerCleanup(`dir:${path}`, remove);
  return {
    path,
    remove() {
      remove();
      cleanups.delete(`dir:${path}`);
    },
  };
}

/** File that postmap builds for a map source, or undefined for types read directly. */
export function indexedMapPath(mapType: string, mapPath: string): string | undefined {
  switch (mapType) {
    case "hash":
    case "btree":
      return `${mapPath}.db`;
    case "lmdb":
      return `${mapPath}.lmdb`;
    case "cdb":
      return `${mapPath}.cdb`;
    case "dbm":
    case "sdbm":
      return `${mapPath}.pag`;
    default:
      return undefined;
  }
}

/** Runs `postmap type:path`, throwing with postmap's output on failure. */
export async function postmap(mapType: string, mapPath: string): Promise<void> {
  await runOk([bin("postmap"), `${mapType}:${mapPath}`], { timeoutMs: 10_000 });
}

// ---------------------------------------------------------------------------
// Private Postfix instance

function parseListen(listen: string): { host: string; port: number; ipv6: boolean } {
  const m = /^\[([0-9a-fA-F:]+)\]:(\d+)$/.exec(listen) ?? /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(listen);
  if (!m) throw new Error(`listen must be "ipv4:port" or "[ipv6]:port", got ${listen}`);
  const host = m[1]!;
  const port = Number(m[2]);
  const ipv6 = host.includes(":");
  const allowed = ipv6 ? host === "::1" : host.startsWith("127.") || NET_RE.test(host);
  if (!allowed) throw new Error(`refusing to listen on ${host}: only loopback or 198.18.0.0/24`);
  return { host, port, ipv6 };
}

function mainCf(o: PostfixOptions, dirs: { queue: string; data: string; log: string }, ipv6: boolean, host: string): string {
  const table = `${o.mapType}:${o.mapPath}`;
  const hook = o.hook ?? "mynetworks";
  // Not "error:": smtpd rejects RCPT for addresses that resolve to the error transport, which
  // would mask the relay decision. discard never talks to the network, and without qmgr in
  // master.cf nothing queued is even handed to it.
  const error = "discard:relayctl e2e: delivery disabled";
  const lines = [
    "# generated by relayctl test/e2e/harness.ts",
    "compatibility_level = 3.6",
    `queue_directory = ${dirs.queue}`,
    `data_directory = ${dirs.data}`,
    "mail_owner = postfix",
    "setgid_group = postdrop",
    // Logging to a file keeps diagnostics next to the test instead of in syslog.
    `maillog_file = ${dirs.log}`,
    `maillog_file_prefixes = ${o.dir}`,
    "syslog_name = relayctl-e2e",
    // Explicit names avoid any hostname/DNS lookup at startup.
    "myhostname = mx.relayctl.test",
    "mydomain = relayctl.test",
    "myorigin = relayctl.test",
    "mydestination = relayctl.test",
    `inet_interfaces = ${host}`,
    // "all" even on an IPv4 listener: XCLIENT refuses IPv6 client addresses unless IPv6 is enabled.
    `inet_protocols = ${ipv6 ? "ipv6" : "all"}`,
    // Any explicit mynetworks value disables mynetworks_style, so the host subnet is never implied.
    hook === "mynetworks" ? `mynetworks = ${table}` : "mynetworks =",
    hook === "mynetworks"
      ? "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination"
      : hook === "policy"
        ? "smtpd_relay_restrictions = permit_mynetworks, permit_auth_destination, check_policy_service { unix:relayctl/policy, timeout=5s }, reject_unauth_destination"
        : `smtpd_relay_restrictions = check_client_access ${table}, reject_unauth_destination`,
    // Tests probe other client addresses (IPv6 too) with XCLIENT from the test bridge.
    "smtpd_authorized_xclient_hosts = 198.18.0.0/24, 127.0.0.0/8",
    "smtpd_recipient_restrictions =",
    "smtpd_client_restrictions =",
    "smtpd_helo_restrictions =",
    "smtpd_sender_restrictions =",
    "smtpd_delay_reject = yes",
    "smtpd_helo_required = no",
    "smtpd_tls_security_level = none",
    "smtpd_sasl_auth_enable = no",
    "smtpd_error_sleep_time = 0",
    "smtpd_soft_error_limit = 100",
    "smtpd_hard_error_limit = 200",
    "smtpd_client_connection_rate_limit = 0",
    "smtpd_client_connection_count_limit = 0",
    // Reverse DNS for 198.18.x would go to the system resolver; keep everything local.
    "smtpd_peername_lookup = no",
    "smtp_dns_support_level = disabled",
    "lmtp_dns_support_level = disabled",
    "local_recipient_maps =",
    "alias_maps =",
    "alias_database =",
    "biff = no",
    // Flow-control tokens come from qmgr; with no qmgr each MAIL FROM would stall this long.
    "in_flow_delay = 0",
    "relayhost =",
    // Belt and braces: master.cf has no qmgr or network delivery agents at all.
    `default_transport = ${error}`,
    `relay_transport = ${error}`,
    `local_transport = ${error}`,
    `virtual_transport = ${error}`,
    "",
  ];
  return lines.join("\n");
}

function masterCf(listen: string): string {
  // chroot "n" everywhere: a chroot under a temp dir would lack /etc files and libraries.
  // No qmgr, pickup, smtp or local: mail can be accepted into the queue at most, never delivered.
  const rows = [
    [listen, "inet", "n", "-", "n", "-", "-", "smtpd"],
    ["cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"],
    ["rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"],
    ["bounce", "unix", "-", "-", "n", "-", "0", "bounce"],
    ["defer", "unix", "-", "-", "n", "-", "0", "bounce"],
    ["trace", "unix", "-", "-", "n", "-", "0", "bounce"],
    ["verify", "unix", "-", "-", "n", "-", "1", "verify"],
    ["proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"],
    ["anvil", "unix", "-", "-", "n", "-", "1", "anvil"],
    ["scache", "unix", "-", "-", "n", "-", "1", "scache"],
    ["error", "unix", "-", "-", "n", "-", "-", "error"],
    ["retry", "unix", "-", "-", "n", "-", "-", "error"],
    ["discard", "unix", "-", "-", "n", "-", "-", "discard"],
    ["postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"],
  ];
  return `# generated by relayctl test/e2e/harness.ts\n${rows.map((r) => r.join("  ")).join("\n")}\n`;
}

function postfixIds(): { uid: number; gid: number } {
  const line = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith("postfix:"));
  const f = line?.split(":");
  if (!f || f.length < 4) throw new Error("no postfix user in /etc/passwd");
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

function readMasterPid(queueDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(queueDir, "pid", "master.pid"), "utf8").trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function killMaster(pid: number): void {
  for (const target of [pid, -pid]) {
    // master calls setsid(), so -pid also reaches its children (smtpd, cleanup, ...).
    try {
      process.kill(target, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** Starts a private Postfix (own config, queue and data dirs under opts.dir) listening only on opts.listen. */
export async function startPostfix(opts: PostfixOptions): Promise<Postfix> {
  const { host, port, ipv6 } = parseListen(opts.listen);
  const base = join(opts.dir, "postfix");
  const configDir = join(base, "etc");
  const queueDir = join(base, "spool");
  const dataDir = join(base, "data");
  for (const d of [opts.dir, base, configDir, queueDir, dataDir]) {
    mkdirSync(d, { recursive: true });
    chmodSync(d, 0o755);
  }
  writeFileSync(join(base, OWNER_FILE), `${process.pid}\n`);
  // master creates its lock file here after dropping privileges, so postfix must own it.
  const { uid, gid } = postfixIds();
  chownSync(dataDir, uid, gid);

  // smtpd refuses to start cleanly if the table is missing; relayctl replaces it later.
  if (!existsSync(opts.mapPath)) writeFileSync(opts.mapPath, "", { mode: 0o644 });
  const indexed = indexedMapPath(opts.mapType, opts.mapPath);
  if (indexed && !existsSync(indexed)) await postmap(opts.mapType, opts.mapPath);

  const listen = ipv6 ? `[${host}]:${port}` : `${host}:${port}`;
  writeFileSync(
    join(configDir, "main.cf"),
    mainCf(opts, { queue: queueDir, data: dataDir, log: join(opts.dir, "maillog") }, ipv6, host),
    { mode: 0o644 },
  );
  writeFileSync(join(configDir, "master.cf"), masterCf(listen), { mode: 0o644 });
  // Postfix waits (up to ~2.5 s per command) for a main.cf modified within the last second,
  // assuming an editor is still writing it. Backdating skips that wait on every postfix call.
  const past = new Date(Date.now() - 60_000);
  for (const f of ["main.cf", "master.cf"]) utimesSync(join(configDir, f), past, past);

  const postfix = bin("postfix");
  const check = await run([postfix, "-c", configDir, "check"], { timeoutMs: 20_000 });
  if (check.code !== 0 || check.stderr.includes("fatal")) {
    throw new Error(`postfix -c ${configDir} check failed (${check.code}):\n${check.stdout}${check.stderr}`);
  }
  // We just ran the (slow) integrity check; quick-start tells postfix-script not to repeat it.
  writeFileSync(join(queueDir, "quick-start"), "");
  const start = await run([postfix, "-c", configDir, "start"], { timeoutMs: 20_000 });
  const pid = readMasterPid(queueDir);
  if (pid) registerCleanup(`postfix:${configDir}`, () => killMaster(pid));
  if (start.code !== 0 || !pid) {
    if (pid) killMaster(pid);
    let log = "";
    try {
      log = readFileSync(join(opts.dir, "maillog"), "utf8");
    } catch {
      // no log yet
    }
    throw new Error(`postfix -c ${configDir} start failed (${start.code}):\n${start.stdout}${start.stderr}\n${log}`);
  }

  let stopped = false;
  return {
    configDir,
    queueDir,
    pid,
    async stop() {
      if (stopped) return;
      stopped = true;
      await run([postfix, "-c", configDir, "stop"], { timeoutMs: 10_000 });
      const deadline = Date.now() + 5_000;
      for (let i = 0; i < 100 && Date.now() < deadline && pidAlive(pid); i++) await Bun.sleep(50);
      if (pidAlive(pid)) killMaster(pid);
      cleanups.delete(`postfix:${configDir}`);
    },
  };
}

// ---------------------------------------------------------------------------
// Network namespaces

function checkPrefix(prefix: string): void {
  // bridge = prefix + id + "br" must fit IFNAMSIZ-1 = 15 chars, veths need room for an index.
  if (!/^[a-z][a-z0-9]{0,5}$/.test(prefix)) {
    throw new Error(`network prefix must match /^[a-z][a-z0-9]{0,5}$/, got ${JSON.stringify(prefix)}`);
  }
}

function hostOctet(ip: string): number {
  const m = NET_RE.exec(ip);
  const n = m ? Number(m[1]) : NaN;
  if (!(n >= 2 && n <= 254)) throw new Error(`host address must be 198.18.0.2-254, got ${ip}`);
  return n;
}

function writeSysctl(path: string, value: string): void {
  try {
    writeFileSync(path, value);
  } catch {
    // knob absent (e.g. IPv6 disabled in the kernel): nothing to tune
  }
}

// Every Net puts 198.18.0.1/24 on a bridge in the root namespace, so two at once (even with
// different names) would fight over the connected route. A host-wide lock serialises runs.
const NET_LOCK = "/run/relayctl-e2e-net.lock";
const NET_LOCK_WAIT_MS = 120_000;
let netActive = false;

async function acquireNetLock(): Promise<void> {
  const deadline = Date.now() + NET_LOCK_WAIT_MS;
  for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
    try {
      writeFileSync(NET_LOCK, `${process.pid}\n`, { flag: "wx" });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    let owner = NaN;
    try {
      owner = Number(readFileSync(NET_LOCK, "utf8").trim());
    } catch {
      continue; // released between our create and read
    }
    // A lock without a live owner is left over from a killed run.
    if (!Number.isInteger(owner) || owner === process.pid || !pidAlive(owner)) {
      rmSync(NET_LOCK, { force: true });
      continue;
    }
    await Bun.sleep(100);
  }
  throw new Error(`another e2e run (see ${NET_LOCK}) held the test network for ${NET_LOCK_WAIT_MS} ms`);
}

function releaseNetLock(): void {
  try {
    if (Number(readFileSync(NET_LOCK, "utf8").trim()) === process.pid) rmSync(NET_LOCK, { force: true });
  } catch {
    // already gone
  }
}

/** Creates a bridge holding 198.18.0.1/24 in the root namespace; hosts are netns attached to it. */
export async function createNetwork(prefix: string): Promise<Net> {
  checkPrefix(prefix);
  if (netActive) throw new Error("a Net is already active in this process; destroy() it first");
  const ip = bin("ip");
  await acquireNetLock();
  netActive = true;
  // Leftovers of killed runs (any prefix) would still own 198.18.0.1 and steal our replies.
  await cleanupStale(prefix);
  const clash = await run([ip, "-o", "-4", "addr", "show", "to", `${HOST_IP}/32`]);
  if (clash.stdout.trim()) {
    netActive = false;
    releaseNetLock();
    throw new Error(`${HOST_IP} is already assigned in the root namespace:\n${clash.stdout}`);
  }
  const id = crypto.getRandomValues(new Uint8Array(ID_LEN / 2)).reduce((s, b) => s + b.toString(16).padStart(2, "0"), "");
  const base = `${prefix}${id}`;
  const bridge = `${base}br`;
  const namespaces: string[] = [];
  let vethCount = 0;

  const veths: string[] = [];
  // Deleting a netns tears its interfaces down asynchronously; deleting the veth first is
  // synchronous (it removes both ends), so nothing is visible once destroy() returns.
  const destroySync = () => {
    for (const v of veths) runSync([ip, "link", "del", v]);
    for (const ns of namespaces) runSync([ip, "netns", "del", ns]);
    runSync([ip, "link", "del", bridge]);
    netActive = false;
    releaseNetLock();
  };
  registerCleanup(`net:${base}`, destroySync);

  try {
    // forward_delay 0: without STP a new port forwards at once, but be explicit about it.
    await runOk([ip, "link", "add", bridge, "type", "bridge", "forward_delay", "0"]);
    // The alias records the owner so cleanupStale never touches a concurrent run
    // (`ip link add ... alias` is silently ignored, hence a separate step).
    await runOk([ip, "link", "set", bridge, "alias", `relayctl-e2e owner=${process.pid}`]);
    // No IPv6 on the segment: nothing but our IPv4 test traffic should appear on it.
    writeSysctl(`/proc/sys/net/ipv6/conf/${bridge}/disable_ipv6`, "1");
    // Traffic ends at the bridge's own address (INPUT), so ip_forward is irrelevant; strict rp_filter
    // also passes because 198.18.0.0/24 is on-link via this bridge. Loosen ours anyway.
    writeSysctl(`/proc/sys/net/ipv4/conf/${bridge}/rp_filter`, "0");
    await runOk([ip, "addr", "add", `${HOST_IP}/24`, "dev", bridge]);
    await runOk([ip, "link", "set", bridge, "up"]);
  } catch (e) {
    destroySync();
    cleanups.delete(`net:${base}`);
    throw e;
  }

  const net: Net = {
    hostIp: HOST_IP,
    bridge,
    async addHost(name: string, hostIp: string): Promise<Host> {
      if (!/^[a-z0-9][a-z0-9_-]{0,30}$/i.test(name)) throw new Error(`bad host name ${name}`);
      hostOctet(hostIp);
      if (vethCount >= 99) throw new Error("too many hosts on one test network");
      const ns = `${base}-${name}`;
      const veth = `${base}v${vethCount++}`;
      namespaces.push(ns);
      await runOk([ip, "netns", "add", ns]);
      veths.push(veth);
      await runOk([ip, "-n", ns, "link", "set", "lo", "up"]);
      // Creating the peer directly inside the netns lets it be called eth0 without clashing with ours.
      await runOk([ip, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
      // No link-local IPv6 inside the host, so only the addresses we assign exist.
      await runOk([ip, "-n", ns, "link", "set", "eth0", "addrgenmode", "none"]);
      await runOk([ip, "link", "set", veth, "master", bridge]);
      await runOk([ip, "link", "set", veth, "up"]);
      await runOk([ip, "-n", ns, "addr", "add", `${hostIp}/24`, "dev", "eth0"]);
      await runOk([ip, "-n", ns, "link", "set", "eth0", "up"]);
      // No default route is ever added: the host can reach 198.18.0.0/24 and nothing else.
      const host: Host = {
        ns,
        ip: hostIp,
        run(argv, opts) {
          return run([ip, "netns", "exec", ns, ...argv], opts);
        },
        async setIp(newIp) {
          hostOctet(newIp);
          await runOk([ip, "-n", ns, "addr", "flush", "dev", "eth0"]);
          await runOk([ip, "-n", ns, "addr", "add", `${newIp}/24`, "dev", "eth0"]);
          host.ip = newIp;
        },
        async addIp(extraIp) {
          hostOctet(extraIp);
          await runOk([ip, "-n", ns, "addr", "add", `${extraIp}/24`, "dev", "eth0"]);
        },
      };
      return host;
    },
    async destroy() {
      if (!cleanups.has(`net:${base}`)) return;
      for (const v of veths) await run([ip, "link", "del", v]);
      for (const ns of namespaces) await run([ip, "netns", "del", ns]);
      await run([ip, "link", "del", bridge]);
      veths.length = 0;
      namespaces.length = 0;
      cleanups.delete(`net:${base}`);
      netActive = false;
      releaseNetLock();
    },
  };
  return net;
}

/** Removes what dead runs left: this prefix's netns/links, any harness bridge, Postfix master and temp dir. */
export async function cleanupStale(prefix: string): Promise<void> {
  checkPrefix(prefix);
  const ip = bin("ip");
  const idRe = `[a-z][a-z0-9]{0,5}[0-9a-f]{${ID_LEN}}`;
  // Bases to sweep: our prefix, plus any harness bridge (marked by its alias) whose owner died.
  const stale = (base: string) => base.startsWith(prefix) || deadBases.has(base);
  const liveBases = new Set<string>();
  const deadBases = new Set<string>();
  const links = await run([ip, "-o", "link", "show", "type", "bridge"]);
  for (const line of links.stdout.split("\n")) {
    const m = new RegExp(`^\\d+: (${idRe})br[:@]`).exec(line);
    if (!m) continue;
    const alias = /relayctl-e2e owner=(\d+)/.exec(line);
    // No alias: either not ours, or a concurrent run between "link add" and "set alias".
    const owner = Number(alias?.[1] ?? process.pid);
    if (owner === process.pid || pidAlive(owner)) liveBases.add(m[1]!);
    else deadBases.add(m[1]!);
  }
  // Veths first: deleting them is synchronous, unlike the teardown of a deleted netns.
  const all = await run([ip, "-o", "link", "show"]);
  for (const line of all.stdout.split("\n")) {
    const m = new RegExp(`^\\d+: ((${idRe})v\\d+)[:@]`).exec(line);
    if (m && stale(m[2]!) && !liveBases.has(m[2]!)) await run([ip, "link", "del", m[1]!]);
  }
  const nsList = await run([ip, "netns", "list"]);
  for (const line of nsList.stdout.split("\n")) {
    const m = new RegExp(`^((${idRe})-\\S+)`).exec(line);
    if (m && stale(m[2]!) && !liveBases.has(m[2]!)) await run([ip, "netns", "del", m[1]!]);
  }
  for (const base of deadBases) await run([ip, "link", "del", `${base}br`]);
  killStaleMasters();
  removeStaleDirs();
}

function removeStaleDirs(): void {
  let names: string[] = [];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const n of names.slice(0, 1_000)) {
    const dir = join(tmpdir(), n);
    try {
      const owner = Number(readFileSync(join(dir, OWNER_FILE), "utf8").trim());
      if (owner === process.pid || pidAlive(owner)) continue;
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // no owner file: not made by tmpDir(), leave it alone
    }
  }
}

function killStaleMasters(): void {
  // Any master whose config sits next to our owner file was started by this harness; that
  // holds whatever dir the test chose, so this does not depend on the network prefix.
  let pids: string[] = [];
  try {
    pids = readdirSync("/proc").filter((p) => /^\d+$/.test(p));
  } catch {
    return;
  }
  for (const p of pids.slice(0, 100_000)) {
    try {
      const exe = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0")[0] ?? "";
      if (!exe.endsWith("/master")) continue;
      const env = readFileSync(`/proc/${p}/environ`, "utf8").split("\0");
      const conf = env.find((e) => e.startsWith("MAIL_CONFIG="))?.slice("MAIL_CONFIG=".length);
      if (!conf) continue;
      const ownerFile = join(conf, "..", OWNER_FILE);
      // No owner file means someone else's instance (e.g. the system one): never ours to kill.
      if (!existsSync(ownerFile)) continue;
      const owner = Number(readFileSync(ownerFile, "utf8").trim());
      if (owner === process.pid || pidAlive(owner)) continue;
      killMaster(Number(p));
    } catch {
      // process vanished or is not ours to inspect
    }
  }
}

// ---------------------------------------------------------------------------
// swaks

/** Probes relaying with swaks up to RCPT (never DATA), from host's netns when given. */
export async function swaks(opts: SwaksOptions): Promise<SwaksResult> {
  const m = /^\[([0-9a-fA-F:]+)\]:(\d+)$/.exec(opts.server) ?? /^([\d.]+):(\d+)$/.exec(opts.server);
  if (!m) throw new Error(`server must be "ip:port" or "[ipv6]:port", got ${opts.server}`);
  const [, serverIp, port] = m;
  if (!(serverIp === "::1" || serverIp!.startsWith("127.") || NET_RE.test(serverIp!) || serverIp === HOST_IP)) {
    throw new Error(`refusing to contact ${serverIp}: only loopback or 198.18.0.0/24`);
  }
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const argv = [
    bin("swaks"),
    "--server", serverIp!,
    "--port", port!,
    // An explicit HELO stops swaks from resolving the local hostname.
    "--helo", "client.relayctl.test",
    "--from", opts.from ?? "sender@relayctl.test",
    "--to", opts.to ?? "user@example.net",
    "--quit-after", "RCPT",
    "--timeout", String(Math.max(1, Math.floor(timeoutMs / 1000) - 1)),
  ];
  if (opts.bind) {
    if (!(opts.bind.startsWith("127.") || opts.bind === "::1" || NET_RE.test(opts.bind))) {
      throw new Error(`refusing to bind ${opts.bind}: only loopback or 198.18.0.0/24`);
    }
    argv.push("--local-interface", opts.bind);
  }
  if (opts.xclientAddr) {
    if (!/^(192\.0\.2\.\d{1,3}|198\.18\.0\.\d{1,3}|2001:db8:[0-9a-f:]*)$/i.test(opts.xclientAddr)) {
      throw new Error(`refusing XCLIENT ADDR ${opts.xclientAddr}: only documentation prefixes or 198.18.0.0/24`);
    }
    argv.push("--xclient-addr", opts.xclientAddr.includes(":") ? `IPV6:${opts.xclientAddr}` : opts.xclientAddr);
  }
  // Give swaks' own timeout a head start so we normally get its output rather than a kill.
  const runOpts = { timeoutMs: timeoutMs + 2_000 };
  const r = opts.host ? await opts.host.run(argv, runOpts) : await run(argv, runOpts);
  const output = r.stdout + r.stderr;
  const lines = output.split("\n");
  const rcpt = lines.findIndex((l) => /^\s*~?-> RCPT TO:/.test(l));
  const reply = rcpt >= 0 ? lines.slice(rcpt + 1).find((l) => /^\s*<(~|-|\*\*|~\*\*)\s/.test(l)) : undefined;
  return {
    accepted: reply !== undefined && /^\s*<~?-\s+250[ -]/.test(reply),
    denied: output.includes("Relay access denied"),
    code: Number(/^\s*<[~*-]*\s+(\d{3})[ -]/.exec(reply ?? "")?.[1] ?? 0),
    output,
  };
}
