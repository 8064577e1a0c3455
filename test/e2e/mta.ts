/**
 * Exim and OpenSMTPD as relay hosts for e2e tests: the real daemons,
 * unpacked from Debian's packages by test/mta-debs.sh (never installed:
 * that would remove Postfix), each on a private config listening on the
 * test bridge only, with delivery disabled (the tests stop at RCPT), and the
 * shared suite that proves relayctl's promise through them with swaks.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { accessSync, chmodSync, chownSync, constants, existsSync, mkdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { renderLines } from "../../src/server/lookups/linefile.ts";
import { MAP_HEADER } from "../../src/server/lookups/map.ts";
import { SMTPD_PREAMBLE } from "../../src/server/lookups/opensmtpd.ts";
import { freePort, requireE2E, run, swaks, which, type Host } from "./harness.ts";
import { addClient, asUser, BIN, onHost, relayctl, stage, startServer, type Stage } from "./relayctl.ts";

/** Where test/mta-debs.sh unpacked the packages. */
export const MTA_ROOT = process.env.RELAYCTL_MTA_ROOT ?? "/var/cache/relayctl-test/mta";
const EXIM = join(MTA_ROOT, "usr/sbin/exim4");
const SMTPD = join(MTA_ROOT, "usr/sbin/smtpd");
const SMTPCTL = join(MTA_ROOT, "usr/sbin/smtpctl");
/** OpenSMTPD's control socket: compiled in, so one instance runs at a time. */
const SMTPD_SOCK = "/var/run/smtpd.sock";
/** OpenSMTPD's queue: compiled in too. */
const SMTPD_SPOOL = "/var/spool/smtpd";

type Kind = "exim" | "opensmtpd";

/** True when e2e runs and the daemon binaries are unpacked; throws under RELAYCTL_REQUIRE_E2E=1 when they are not. */
export function requireMta(kind: Kind): boolean {
  if (!requireE2E()) return false;
  const bins = kind === "exim" ? [EXIM] : [SMTPD, SMTPCTL];
  const missing = bins.filter((b) => {
    try {
      accessSync(b, constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
  if (!missing.length) return true;
  const why = `${missing.join(", ")} missing: run test/mta-debs.sh (unpacks Debian's exim4 and opensmtpd without installing them)`;
  if (process.env.RELAYCTL_REQUIRE_E2E === "1") throw new Error(`RELAYCTL_REQUIRE_E2E=1 but ${why}`);
  return false;
}

/** uid and gid of a system user, from /etc/passwd. */
function userIds(name: string): { uid: number; gid: number } {
  const line = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no user ${name}: run test/mta-debs.sh`);
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}

/** True when something accepts connections at host:port or on a unix socket path. */
function answers(target: { host: string; port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(target as never);
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
    sock.setTimeout(1000, () => done(false));
  });
}

/** A running daemon: its pid, its output, and how to stop it. */
export interface Daemon {
  pid: number;
  output(): string;
  stop(): Promise<void>;
}

/** Spawns argv, collects its output, waits until host:port answers (or it exits). */
async function spawnDaemon(argv: string[], host: string, port: number, cleanup: () => void = () => undefined): Promise<Daemon> {
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  let out = "";
  const decode = new TextDecoder();
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const c of s) out += decode.decode(c);
  };
  void pump(proc.stdout);
  void pump(proc.stderr);
  // A test process that dies without its cleanup must not leave the daemon running.
  const onExit = () => {
    if (proc.exitCode === null) proc.kill("SIGKILL");
  };
  process.on("exit", onExit);
  const stop = async () => {
    process.off("exit", onExit);
    if (proc.exitCode === null) {
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await proc.exited;
      clearTimeout(t);
    }
    cleanup();
  };
  const deadline = Date.now() + 10_000;
  for (let i = 0; i < 100 && Date.now() < deadline; i++) {
    if (proc.exitCode !== null) break;
    if (await answers({ host, port })) return { pid: proc.pid, output: () => out, stop };
    await Bun.sleep(100);
  }
  await stop();
  throw new Error(`${argv.join(" ")} did not start listening on ${host}:${port}:\n${out}`);
}

/**
 * Exim on a private config: its own spool and log directory, listening on
 * host:port, the RCPT ACL admitting the lease file before the relay refusal
 * (worded as Debian's default config words it), and a single router that
 * defers everything, so nothing accepted is ever delivered. Exim drops root
 * for a -C config not in /etc/exim4/trusted_configs, so it runs as
 * Debian-exim from the start (a port above 1024 needs no privilege).
 */
export async function startExim(dir: string, host: string, port: number, hostsFile: string): Promise<Daemon & { config: string }> {
  const exim = userIds("Debian-exim");
  for (const d of ["spool", "log"]) {
    mkdirSync(join(dir, d), { recursive: true });
    chownSync(join(dir, d), exim.uid, exim.gid);
  }
  const config = join(dir, "exim.conf");
  writeFileSync(
    config,
    [
      "primary_hostname = relay.relayctl.test",
      `spool_directory = ${dir}/spool`,
      `log_file_path = ${dir}/log/%slog`,
      `pid_file_path = ${dir}/spool/exim.pid`,
      `local_interfaces = <; ${host}.${port}`,
      "domainlist local_domains = relay.relayctl.test",
      "acl_smtp_rcpt = acl_check_rcpt",
      "host_lookup =",
      "rfc1413_hosts =",
      "tls_advertise_hosts =",
      "queue_only = true",
      "begin acl",
      "acl_check_rcpt:",
      "  accept domains = +local_domains",
      `  accept hosts = net-iplsearch;${hostsFile}`,
      "  require message = relay not permitted",
      "          domains = +local_domains",
      "begin routers",
      "never:",
      "  driver = redirect",
      "  data = :defer: delivery is disabled in tests",
      "",
    ].join("\n"),
  );
  const d = await spawnDaemon(asUser(exim, [EXIM, "-C", config, "-bdf", "-oX", String(port)]), host, port);
  return { ...d, config };
}

/** Exim's verdict on RCPT to an outside domain for a client at `addr`, from `exim -bh` (a fake SMTP session, no connection). */
export async function eximBh(config: string, addr: string): Promise<boolean> {
  const proc = Bun.spawn(asUser(userIds("Debian-exim"), [EXIM, "-C", config, "-bh", addr]), { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  proc.stdin.write("EHLO client.relayctl.test\r\nMAIL FROM:<sender@relayctl.test>\r\nRCPT TO:<user@example.net>\r\nQUIT\r\n");
  await proc.stdin.end();
  const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  clearTimeout(t);
  if (/^250 Accepted/m.test(out)) return true;
  if (/^550 relay not permitted/m.test(out)) return false;
  throw new Error(`exim -bh ${addr} gave neither verdict:\n${out}`);
}

/**
 * OpenSMTPD on a private config: the <relayctl> table, a listener on
 * host:port and one with PROXYv2 (how a test presents an IPv6 client, as
 * XCLIENT does for Postfix), relaying only to a dead loopback port. Its
 * control socket and queue directory are compiled in: a live system smtpd
 * is refused, never disturbed, and a queue directory this run created goes.
 */
export async function startSmtpd(dir: string, host: string, port: number, proxyPort: number, table: string): Promise<Daemon> {
  if (existsSync(SMTPD_SOCK)) {
    if (await answers({ path: SMTPD_SOCK })) throw new Error(`an OpenSMTPD already answers on ${SMTPD_SOCK}; the test runs its own only where none runs`);
    unlinkSync(SMTPD_SOCK);
  }
  const spoolExisted = existsSync(SMTPD_SPOOL);
  const config = join(dir, "smtpd.conf");
  writeFileSync(
    config,
    [
      `table relayctl file:${table}`,
      `listen on ${host} port ${port}`,
      `listen on ${host} port ${proxyPort} proxy-v2`,
      'action "relay" relay host smtp://127.0.0.1:9',
      'match from src <relayctl> for any action "relay"',
      "",
    ].join("\n"),
  );
  const cleanup = () => {
    if (!spoolExisted) rmSync(SMTPD_SPOOL, { recursive: true, force: true });
  };
  // smtpd -n creates the queue directory already.
  const check = await run([SMTPD, "-n", "-f", config]);
  if (check.code !== 0) {
    cleanup();
    throw new Error(`smtpd -n -f ${config}: ${check.stdout}${check.stderr}`);
  }
  return spawnDaemon([SMTPD, "-d", "-f", config], host, port, cleanup);
}

/** swaks through a PROXYv2 listener, claiming to relay for `addr` (documentation prefixes only). */
export async function proxyRelays(server: string, port: number, addr: string): Promise<boolean> {
  if (!/^2001:db8:[0-9a-f:]*$/i.test(addr)) throw new Error(`refusing PROXY source ${addr}: only 2001:db8::/32`);
  const r = await run(
    ["swaks", "--server", server, "--port", String(port), "--helo", "client.relayctl.test", "--from", "sender@relayctl.test", "--to", "user@example.net", "--quit-after", "RCPT", "--timeout", "8",
      "--proxy-version", "2", "--proxy-family", "AF_INET6", "--proxy-protocol", "STREAM", "--proxy-source", addr, "--proxy-source-port", "40000", "--proxy-dest", "2001:db8::25", "--proxy-dest-port", "25"],
    { timeoutMs: 12_000 },
  );
  const out = r.stdout + r.stderr;
  if (/^<-\s+250 .*Recipient ok/m.test(out)) return true;
  if (/^<\*\*\s+550 /m.test(out)) return false;
  throw new Error(`swaks via PROXYv2 for ${addr} gave neither verdict:\n${out}`);
}

/** RCPT verdict of a real connection from host: true on 250, false on 550, an error otherwise. */
async function relaysFrom(host: Host, server: string): Promise<boolean> {
  const r = await swaks({ host, server });
  if (!r.accepted && r.code !== 550) throw new Error(`swaks gave neither verdict:\n${r.output}`);
  return r.accepted;
}

/** Polls cond (bounded) until it is true or ms have passed; returns its last value. */
async function within(ms: number, cond: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (let i = 0; i < 100; i++) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await Bun.sleep(100);
  }
  return false;
}

/**
 * The relay promise through a real Exim or OpenSMTPD: leased clients relay,
 * others are refused; release, revoke (with and without a server) and expiry
 * refuse at the next RCPT; a deleted file is written again; an IPv6 /64
 * lease admits its /64 only; for OpenSMTPD, a failed `smtpctl update table`
 * is reported and retried.
 */
export function mtaSuite(kind: Kind): void {
  const enabled = requireMta(kind);
  describe.if(enabled)(`lookup = "${kind}" with a real ${kind === "exim" ? "Exim" : "OpenSMTPD"}`, () => {
    let s: Stage;
    let daemon: Daemon & { config?: string };
    let file: string;
    let smtp: string;
    let port: number;
    let proxyPort: number;
    const startDaemon = async (st: Stage) => {
      daemon = kind === "exim" ? await startExim(join(st.tmp.path, "exim"), "198.18.0.1", port, file) : await startSmtpd(st.tmp.path, "198.18.0.1", port, proxyPort, file);
    };
    beforeAll(async () => {
      s = await stage({
        prefix: kind === "exim" ? "exm" : "osd",
        prepare: async (st) => {
          port = freePort();
          proxyPort = freePort();
          smtp = `198.18.0.1:${port}`;
          mkdirSync(join(st.tmp.path, kind));
          file = join(st.tmp.path, kind, kind === "exim" ? "hosts" : "clients");
          // The daemons need the file to start (smtpd one with an entry); relayctl keeps a file with its header as its own.
          writeFileSync(file, renderLines([], (t) => t, kind === "opensmtpd" ? SMTPD_PREAMBLE : ""));
          st.writeConfig(kind === "exim" ? { lookup: "exim", exim_hosts: file, renewals_per_minute: 0 } : { lookup: "opensmtpd", smtpd_table: file, smtpctl: SMTPCTL, renewals_per_minute: 0 });
          await startDaemon(st);
          st.onCleanup(() => daemon.stop());
        },
        ready: async (st) => {
          await st.enroll(st.h1, "h1");
        },
      });
    }, 90_000);
    afterAll(async () => s?.cleanup());

    const renew = (host: Host, name: string, extra: string[] = []) => onHost(host, ["client", "--config", s.cfg(name), ...extra]);
    const relays = (host: Host) => relaysFrom(host, smtp);
    // OpenSMTPD's file always holds 0.0.0.0 first (SMTPD_PREAMBLE): no client can have it.
    const entries = () => readFileSync(file, "utf8").split("\n").filter((l) => l && !l.startsWith("#") && l !== "0.0.0.0");

    test("leased relays (250), others are refused (550); the file holds the lease under relayctl's header", async () => {
      expect((await renew(s.h1, "h1")).code).toBe(0);
      expect(await relays(s.h1)).toBe(true);
      expect(await relays(s.h2)).toBe(false);
      expect(readFileSync(file, "utf8").split("\n")[0]).toBe(MAP_HEADER);
      expect(entries()).toEqual(["198.18.0.2"]);
    });

    test("release and revoke refuse at the next RCPT", async () => {
      expect((await renew(s.h1, "h1", ["--release"])).code).toBe(0);
      expect(await relays(s.h1)).toBe(false);
      expect((await renew(s.h1, "h1")).code).toBe(0);
      expect(await relays(s.h1)).toBe(true);
      expect((await relayctl(["server", "revoke", "h1", "--config", s.config])).code).toBe(0);
      expect(await within(1500, async () => !(await relays(s.h1)))).toBe(true);
      expect((await renew(s.h1, "h1")).code).toBe(3);
    });

    test("expiry refuses within a second of the lease's end", async () => {
      const line = await addClient(s.config, "brief", ["--ttl", "10s"]);
      expect((await onHost(s.h2, [...line, "--config", s.cfg("brief")])).code).toBe(0);
      expect((await renew(s.h2, "brief")).code).toBe(0);
      const renewedAt = Date.now();
      expect(await relays(s.h2)).toBe(true);
      await Bun.sleep(Math.max(0, renewedAt + 10_000 - Date.now()));
      expect(await within(1000, async () => !(await relays(s.h2)))).toBe(true);
      await relayctl(["server", "revoke", "brief", "--config", s.config]);
    });

    test("a deleted file is written again within seconds, leases intact", async () => {
      await s.enroll(s.h1, "again");
      expect((await renew(s.h1, "again")).code).toBe(0);
      rmSync(file);
      expect(await within(8000, async () => existsSync(file) && entries().includes("198.18.0.2"))).toBe(true);
      expect(await relays(s.h1)).toBe(true);
    });

    test("revoke with the server stopped updates the file itself", async () => {
      expect(await s.server!.stop()).toBe(0);
      s.server = undefined;
      expect((await relayctl(["server", "revoke", "again", "--config", s.config])).code).toBe(0);
      expect(await relays(s.h1)).toBe(false);
      await s.start();
    });

    test("with the server stopped, an expired lease still relays (status says FROZEN) until `server sweep` expires it", async () => {
      const line = await addClient(s.config, "brief2", ["--ttl", "10s"]);
      expect((await onHost(s.h2, [...line, "--config", s.cfg("brief2")])).code).toBe(0);
      expect((await renew(s.h2, "brief2")).code).toBe(0);
      const renewedAt = Date.now();
      expect(await relays(s.h2)).toBe(true);
      expect(await s.server!.stop()).toBe(0);
      s.server = undefined;
      await Bun.sleep(Math.max(0, renewedAt + 10_500 - Date.now()));
      expect(await relays(s.h2)).toBe(true);
      const st = await relayctl(["server", "status", "--config", s.config]);
      expect(st.stdout).toContain(`map: ${kind}:${file}, 1 entries`);
      expect(st.stdout).toContain("FROZEN: 1 entries have no live lease");
      expect((await relayctl(["server", "sweep", "--config", s.config])).code).toBe(0);
      expect(await relays(s.h2)).toBe(false);
      await s.start();
    });

    test("an IPv6 /64 lease admits its /64 and nothing else", async () => {
      const line = await addClient(s.config, "lan", ["--ipv6-prefix", "64", "--allow", "2001:db8:1:2::/64"]);
      expect((await onHost(s.h1, [...line, "--config", s.cfg("lan")])).code).toBe(0);
      expect((await renew(s.h1, "lan", ["--ip", "2001:db8:1:2::10"])).code).toBe(0);
      expect(entries()).toContain(kind === "exim" ? '"2001:db8:1:2::/64"' : "2001:db8:1:2::/64");
      const v6 = (addr: string) => (kind === "exim" ? eximBh(daemon.config!, addr) : proxyRelays("198.18.0.1", proxyPort, addr));
      for (const inside of ["2001:db8:1:2::10", "2001:db8:1:2:aaaa:bbbb:cccc:dddd"]) expect(await v6(inside)).toBe(true);
      for (const outside of ["2001:db8:1:3::10", "2001:db8:1::10"]) expect(await v6(outside)).toBe(false);
      expect((await renew(s.h1, "lan", ["--release"])).code).toBe(0);
      expect(await v6("2001:db8:1:2::10")).toBe(false);
    });

    if (kind === "exim") {
      test("doctor reads the running Exim's configuration (exim -bP config): hook before the refusal passes, after it fails with the fix", async () => {
        // doctor finds exim4 on PATH; this one runs the test's configuration.
        const bin = join(s.tmp.path, "bin");
        mkdirSync(bin, { recursive: true });
        const doctor = async (config: string) => {
          writeFileSync(join(bin, "exim4"), `#!/bin/sh\nexec ${EXIM} -C ${config} "$@"\n`, { mode: 0o755 });
          const r = await run([BIN, "doctor", "--config", s.config], { env: { PATH: `${bin}:${process.env.PATH}` } });
          return r.stdout + r.stderr;
        };
        const good = await doctor(daemon.config!);
        expect(good).toMatch(new RegExp(`PASS\\s+exim\\.config\\s+.*reads ${daemon.config}`));
        expect(good).toMatch(/PASS\s+exim\.hook\s+the RCPT ACL acl_check_rcpt accepts net-iplsearch;/);
        expect(good).toMatch(/PASS\s+exim\.file\s/);
        // The same configuration with the hook moved below the relay refusal.
        const text = readFileSync(daemon.config!, "utf8");
        const hook = `  accept hosts = net-iplsearch;${file}\n`;
        const late = join(s.tmp.path, "exim-late.conf");
        writeFileSync(late, text.replace(hook, "").replace("begin routers", `${hook}begin routers`));
        const bad = await doctor(late);
        expect(bad).toMatch(/FAIL\s+exim\.hook\s+the RCPT ACL acl_check_rcpt accepts net-iplsearch;.* only after its relay refusal/);
        expect(bad).toContain(`hosts = net-iplsearch;${file}`);
      });
    }

    if (kind === "opensmtpd") {
      test("smtpctl failing (smtpd down): the renewal says so, status is degraded, and the retry lands once smtpd is back", async () => {
        await s.enroll(s.h2, "back");
        expect((await renew(s.h2, "back", ["--release"])).code).toBe(0);
        await daemon.stop();
        const r = await renew(s.h2, "back");
        expect(r.code).not.toBe(0);
        expect(r.stderr).toContain("smtpctl update table relayctl failed");
        const st = await relayctl(["server", "status", "--config", s.config]);
        expect(st.stdout + st.stderr).toContain("smtpctl update table relayctl failed");
        await startDaemon(s);
        // smtpd read the file (already rewritten) at start; the retried reload then succeeds too.
        expect(await relays(s.h2)).toBe(true);
        expect(await within(10_000, async () => !(await relayctl(["server", "status", "--config", s.config, "--json"])).stdout.includes("smtpctl update table relayctl failed"))).toBe(true);
      });
    }
  });
}

/** The unprivileged user the server runs as in smtpctlSocketSuite (nobody:nogroup), standing in for relayctl. */
const NOBODY = { uid: 65534, gid: 65534 };

/**
 * What relayctl-smtpctl.socket does, with the same limits: one root smtpctl
 * per connection (systemd-socket-activate --accept --inetd: the connection
 * is its stdin and stdout), with smtpd's queue group given instead of the
 * setgid bit, no new privileges and no capabilities, on a socket of root's,
 * group `gid`, mode 0660.
 */
async function startSmtpctlSocket(path: string, gid: number): Promise<{ stop: () => Promise<void> }> {
  rmSync(path, { force: true });
  const argv = ["systemd-socket-activate", "-l", path, "--accept", "--inetd", "--",
    "setpriv", `--regid=${userIds("opensmtpq").gid}`, "--clear-groups", "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", SMTPCTL, "update", "table", "relayctl"];
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  const onExit = () => {
    if (proc.exitCode === null) proc.kill("SIGKILL");
  };
  process.on("exit", onExit);
  const stop = async () => {
    process.off("exit", onExit);
    if (proc.exitCode === null) proc.kill("SIGTERM");
    await proc.exited;
    rmSync(path, { force: true });
  };
  for (let i = 0; i < 50 && !existsSync(path); i++) await Bun.sleep(100);
  if (!existsSync(path)) {
    await stop();
    throw new Error(`${argv.join(" ")} made no socket at ${path}`);
  }
  chownSync(path, 0, gid);
  chmodSync(path, 0o660);
  return { stop };
}

/**
 * lookup = "opensmtpd" with the server as an unprivileged user, as
 * install.sh runs it: it refuses to start without smtpctl_socket or with no
 * one there, and with the socket it relays for the lease, refuses after the
 * release, and a reload that cannot be had is reported (the entry that still
 * relays named) and lands once the socket is back.
 */
export function smtpctlSocketSuite(): void {
  const activator = which("systemd-socket-activate");
  if (!activator && process.env.RELAYCTL_REQUIRE_E2E === "1") throw new Error("RELAYCTL_REQUIRE_E2E=1 but systemd-socket-activate is missing: apt-get install systemd");
  describe.if(requireMta("opensmtpd") && !!activator)('lookup = "opensmtpd" run as an unprivileged user, reloading through smtpctl_socket', () => {
    let s: Stage;
    let file: string;
    let smtp: string;
    let socketPath: string;
    let socket: { stop: () => Promise<void> } | undefined;
    const config = (withSocket: boolean) => s.writeConfig({ lookup: "opensmtpd", smtpd_table: file, smtpctl: SMTPCTL, renewals_per_minute: 0, ...(withSocket ? { smtpctl_socket: socketPath } : {}) });
    const asNobody = (args: string[]) => run(asUser(NOBODY, [BIN, ...args]), { timeoutMs: 20_000 });
    beforeAll(async () => {
      s = await stage({
        prefix: "osu",
        start: false,
        prepare: async (st) => {
          const port = freePort();
          smtp = `198.18.0.1:${port}`;
          for (const d of [st.stateDir, join(st.tmp.path, "opensmtpd")]) {
            mkdirSync(d, { recursive: true });
            chownSync(d, NOBODY.uid, NOBODY.gid);
          }
          mkdirSync(join(st.tmp.path, "run"));
          socketPath = join(st.tmp.path, "run", "smtpctl.sock");
          file = join(st.tmp.path, "opensmtpd", "clients");
          writeFileSync(file, renderLines([], (t) => t, SMTPD_PREAMBLE));
          chownSync(file, NOBODY.uid, NOBODY.gid);
          const daemon = await startSmtpd(st.tmp.path, "198.18.0.1", port, freePort(), file);
          st.onCleanup(async () => {
            await socket?.stop();
            await daemon.stop();
          });
        },
      });
    }, 90_000);
    afterAll(async () => s?.cleanup());

    const relays = (host: Host) => relaysFrom(host, smtp);
    const renew = (host: Host, name: string, extra: string[] = []) => onHost(host, ["client", "--config", s.cfg(name), ...extra]);

    test("without smtpctl_socket: exit 2 before anything is written, naming the key to add", async () => {
      config(false);
      const before = readFileSync(file, "utf8");
      const r = await asNobody(["server", "--config", s.config]);
      expect(r.code).toBe(2);
      expect(r.stderr).toStartWith('relayctl: lookup = "opensmtpd" needs `smtpctl update table relayctl`, which smtpd takes from root only, and this process runs as uid 65534: ');
      expect(r.stderr).toContain('add smtpctl_socket = "/run/relayctl-smtpctl.sock"');
      expect(readFileSync(file, "utf8")).toBe(before);
      // `server sweep` (the timer, as the same user) says the same.
      expect((await asNobody(["server", "sweep", "--config", s.config])).code).toBe(2);
    });

    test("smtpctl_socket with nothing there (the units not installed): exit 2 with the reason", async () => {
      config(true);
      const r = await asNobody(["server", "--config", s.config]);
      expect(r.code).toBe(2);
      // The last line is the error; the log line before it is the failed rewrite's.
      expect(r.stderr.trim().split("\n").at(-1)).toStartWith(`relayctl: smtpctl update table relayctl failed: smtpctl_socket ${socketPath} does not exist: smtpd keeps its last table; `);
    });

    test("through the socket: the leased host relays, others and the released lease are refused", async () => {
      socket = await startSmtpctlSocket(socketPath, NOBODY.gid);
      s.server = await startServer(s.config, s.url, undefined, NOBODY);
      await s.enroll(s.h1, "h1");
      expect((await renew(s.h1, "h1")).code).toBe(0);
      expect(await relays(s.h1)).toBe(true);
      expect(await relays(s.h2)).toBe(false);
      expect((await renew(s.h1, "h1", ["--release"])).code).toBe(0);
      expect(await relays(s.h1)).toBe(false);
      expect((await renew(s.h1, "h1")).code).toBe(0);
      expect(await relays(s.h1)).toBe(true);
    });

    test("the socket gone: the release is not acknowledged (not even to the client's retry), status names the entry smtpd still relays for, and the retry lands once it is back", async () => {
      await socket!.stop();
      const r = await renew(s.h1, "h1", ["--release"]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("smtpctl update table relayctl failed");
      // smtpd keeps its table: said, not hidden.
      expect(await relays(s.h1)).toBe(true);
      const st = await relayctl(["server", "status", "--config", s.config]);
      expect(st.stdout + st.stderr).toContain("opensmtpd: 1 entries without a live lease still relay");
      socket = await startSmtpctlSocket(socketPath, NOBODY.gid);
      expect(await within(10_000, async () => !(await relays(s.h1)))).toBe(true);
    });
  });
}
