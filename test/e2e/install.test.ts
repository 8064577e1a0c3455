/**
 * install.sh in throwaway roots (DESTDIR): files, modes, idempotence, checksum
 * verification, piping, uninstall, and the systemd units it writes.
 *
 * Safety: every run gets a DESTDIR under a fresh temp dir (runInstall refuses
 * otherwise) and a PATH whose first entry is a fake systemctl that records calls,
 * so nothing here can touch this machine's /etc, /usr/local/bin or services.
 * Doctor runs only for the fake binary (RELAYCTL_DOCTOR=1): the real one would
 * inspect this machine's Postfix and /var/lib.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, chownSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { loadServerConfig } from "../../src/lib/config.ts";
import { renderServerSkeleton } from "../../src/lib/schema.ts";
import { lineFileKeys } from "../../src/server/lookups/linefile.ts";
import { freePort } from "./harness.ts";
import { ensureBinary, relayctl, startServer, writeServerConfig } from "./relayctl.ts";

const REPO = join(import.meta.dir, "..", "..");
const INSTALL_SH = join(REPO, "install.sh");
const UNITS = ["relayctl.service", "relayctl-sweep.service", "relayctl-sweep.timer", "relayctl-client.service", "relayctl-client.timer"];

// Stands in for relayctl: answers --version, has a doctor that logs its argv to
// FAKE_LOG and exits FAKE_DOCTOR_EXIT, or no doctor at all without FAKE_DOCTOR.
const FAKE_RELAYCTL = `#!/bin/sh
case "$1" in
--version) echo "relayctl 9.9.9 (commit fake, test)" ;;
doctor)
	[ -n "\${FAKE_DOCTOR:-}" ] || exit 2
	[ "\${2:-}" = --help ] && exit 0
	echo "$*" >>"$FAKE_LOG"
	echo "doctor: one problem found"
	exit "\${FAKE_DOCTOR_EXIT:-0}" ;;
*) exit 2 ;;
esac
`;

const FAKE_SYSTEMCTL = `#!/bin/sh
echo "$*" >>"$FAKE_SYSTEMCTL_LOG"
exit 1
`;

let work: string;
let fakeBinDir: string;
let fakeRelayctl: string;
let systemctlLog: string;
let seq = 0;

/** A fresh directory under this file's temp dir. */
function freshDir(name: string): string {
  const d = join(work, `${name}-${++seq}`);
  mkdirSync(d, { recursive: true });
  return d;
}

type RunResult = { code: number; stdout: string; stderr: string };

/** Runs install.sh with sh (dash on Debian) inside a throwaway root; never without DESTDIR. */
function runInstall(destdir: string, args: string[], opts: { env?: Record<string, string>; cwd?: string; script?: string; stdinScript?: boolean } = {}): RunResult {
  if (!destdir.startsWith(work + "/")) throw new Error(`refusing to run install.sh outside the test dir: ${destdir}`);
  const env: Record<string, string> = {
    PATH: `${fakeBinDir}:${process.env.PATH ?? "/usr/bin:/bin"}`,
    HOME: work,
    DESTDIR: destdir,
    FAKE_SYSTEMCTL_LOG: systemctlLog,
    FAKE_LOG: join(destdir, "doctor.log"),
    RELAYCTL_INIT: "systemd",
    RELAYCTL_BINARY: fakeRelayctl,
    ...opts.env,
  };
  const script = opts.script ?? INSTALL_SH;
  const r = opts.stdinScript
    ? spawnSync("sh", ["-s", "--", ...args], { env, cwd: opts.cwd ?? work, input: readFileSync(script), encoding: "utf8" })
    : spawnSync("sh", [script, ...args], { env, cwd: opts.cwd ?? work, encoding: "utf8" });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Mode bits of a path, as an octal string like "750". */
function mode(path: string): string {
  return (statSync(path).mode & 0o7777).toString(8);
}

/** Every path under root with its mode and content hash, to compare two runs. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      const rel = relative(root, p);
      if (e.isDirectory()) {
        out[rel] = `dir ${mode(p)}`;
        walk(p);
      } else {
        out[rel] = `${mode(p)} ${createHash("sha256").update(readFileSync(p)).digest("hex")}`;
      }
    }
  };
  walk(root);
  return out;
}

function writeExecutable(path: string, text: string): void {
  writeFileSync(path, text);
  chmodSync(path, 0o755);
}

/** Puts a program into a target root's bin directory (a symlink when `linkTo` is given), as its package would. */
function targetProgram(root: string, path: string, linkTo?: string): void {
  mkdirSync(join(root, path, ".."), { recursive: true });
  if (linkTo) symlinkSync(linkTo, join(root, path));
  else writeExecutable(join(root, path), "#!/bin/sh\nexit 0\n");
}

/** Gives a target root a relayctl user with this uid in its etc/passwd. */
function targetUser(root: string, uid: number): void {
  mkdirSync(join(root, "etc"), { recursive: true });
  writeFileSync(join(root, "etc/passwd"), `root:x:0:0:root:/root:/bin/sh\nrelayctl:x:${uid}:${uid}::/var/lib/relayctl:/usr/sbin/nologin\n`);
}

/** `install.sh server|client` with RELAYCTL_INIT=init into a fresh root that has /etc/cron.d and these programs (path, or [path, symlink target]). */
function installWith(name: string, what: "server" | "client", programs: (string | [string, string])[], init = "cron"): { root: string; r: RunResult } {
  const root = freshDir(name);
  mkdirSync(join(root, "etc/cron.d"), { recursive: true });
  for (const p of programs) (typeof p === "string" ? targetProgram(root, p) : targetProgram(root, p[0], p[1]));
  return { root, r: runInstall(root, [what], { env: { RELAYCTL_INIT: init } }) };
}

/** Writes a server.toml into a target root before install.sh runs. */
function targetConfig(root: string, text: string): void {
  mkdirSync(join(root, "etc/relayctl"), { recursive: true });
  writeFileSync(join(root, "etc/relayctl/server.toml"), text);
}

/** Puts install.sh, a binary and a matching SHA256SUMS into dir, like an unpacked release. */
function makeReleaseDir(dir: string, binary = FAKE_RELAYCTL): void {
  copyFileSync(INSTALL_SH, join(dir, "install.sh"));
  writeExecutable(join(dir, "relayctl"), binary);
  const sum = (f: string) => createHash("sha256").update(readFileSync(join(dir, f))).digest("hex");
  writeFileSync(join(dir, "SHA256SUMS"), `${sum("install.sh")}  install.sh\n${sum("relayctl")}  relayctl\n`);
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "relayctl-install-"));
  fakeBinDir = join(work, "fakebin");
  mkdirSync(fakeBinDir);
  writeExecutable(join(fakeBinDir, "systemctl"), FAKE_SYSTEMCTL);
  fakeRelayctl = join(work, "relayctl");
  writeExecutable(fakeRelayctl, FAKE_RELAYCTL);
  systemctlLog = join(work, "systemctl.log");
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("install.sh server", () => {
  test("installs binary, directories, config skeleton and unit with the documented modes", () => {
    const root = freshDir("server");
    const r = runInstall(root, ["server"]);
    expect(r.stderr).toContain("checksum not verified");
    expect(r.code).toBe(0);
    expect(mode(join(root, "usr/local/bin/relayctl"))).toBe("755");
    expect(readFileSync(join(root, "usr/local/bin/relayctl"), "utf8")).toBe(FAKE_RELAYCTL);
    expect(mode(join(root, "etc/relayctl"))).toBe("750");
    expect(mode(join(root, "etc/relayctl/server.toml"))).toBe("640");
    expect(mode(join(root, "var/lib/relayctl"))).toBe("700");
    expect(mode(join(root, "etc/postfix/relayctl"))).toBe("755");
    expect(mode(join(root, "etc/systemd/system/relayctl.service"))).toBe("644");
    expect(readFileSync(join(root, "etc/systemd/system/relayctl.service"), "utf8")).toBe(readFileSync(join(REPO, "packaging/systemd/relayctl.service"), "utf8"));
    for (const u of ["relayctl-sweep.service", "relayctl-sweep.timer"]) {
      expect(readFileSync(join(root, "etc/systemd/system", u), "utf8")).toBe(readFileSync(join(REPO, "packaging/systemd", u), "utf8"));
    }
    expect(existsSync(join(root, "etc/systemd/system/relayctl-client.timer"))).toBe(false);
    expect(r.stdout).toContain(`postconf -e "mynetworks = $(postconf -h mynetworks) hash:/etc/postfix/relayctl/clients"`);
    expect(r.stdout).toContain("check_client_access hash:/etc/postfix/relayctl/clients");
    expect(r.stdout).toContain("DESTDIR set: run relayctl doctor in the target system");
    expect(existsSync(systemctlLog)).toBe(false);
  });

  test("re-running changes nothing and keeps an edited config", () => {
    const root = freshDir("rerun");
    expect(runInstall(root, ["server"]).code).toBe(0);
    const config = join(root, "etc/relayctl/server.toml");
    writeFileSync(config, 'ttl = "30m"\n');
    chmodSync(config, 0o640);
    const before = snapshot(root);
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`kept existing ${config}`);
    expect(snapshot(root)).toEqual(before);
  });

  test("the unit follows state_dir, map and a privileged port from server.toml", () => {
    const root = freshDir("custom");
    mkdirSync(join(root, "etc/relayctl"), { recursive: true });
    writeFileSync(join(root, "etc/relayctl/server.toml"), ['listen = "0.0.0.0:443"', "state_dir = '/srv/relayctl'", 'map = "/srv/maps/clients"', 'map_type = "lmdb"'].join("\n"));
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(0);
    const unit = readFileSync(join(root, "etc/systemd/system/relayctl.service"), "utf8");
    expect(unit).toContain("ReadWritePaths=/srv/relayctl /srv/maps\n");
    expect(unit).toContain("CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n");
    expect(unit).toContain("AmbientCapabilities=CAP_NET_BIND_SERVICE\n");
    expect(mode(join(root, "srv/relayctl"))).toBe("700");
    expect(mode(join(root, "srv/maps"))).toBe("755");
    expect(r.stdout).toContain("lmdb:/srv/maps/clients");
    expect(r.stdout).toContain("TCP port 443");
  });

  test("default port: no capability at all", () => {
    const unit = readFileSync(join(REPO, "packaging/systemd/relayctl.service"), "utf8");
    expect(unit).toMatch(/^CapabilityBoundingSet=$/m);
    expect(unit).not.toContain("AmbientCapabilities");
    for (const line of ["User=relayctl", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "ExecStart=/usr/local/bin/relayctl server --config /etc/relayctl/server.toml", "ReadWritePaths=/var/lib/relayctl /etc/postfix/relayctl"]) {
      expect(unit.split("\n")).toContain(line);
    }
    expect(unit).toMatch(/^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6$/m);
  });

  test("the sweep runs every minute as the server's user, in the server's sandbox", () => {
    const server = readFileSync(join(REPO, "packaging/systemd/relayctl.service"), "utf8").split("\n");
    const sweep = readFileSync(join(REPO, "packaging/systemd/relayctl-sweep.service"), "utf8").split("\n");
    for (const line of ["Type=oneshot", "ExecStart=/usr/local/bin/relayctl server sweep --config /etc/relayctl/server.toml", "CapabilityBoundingSet="]) expect(sweep).toContain(line);
    const shared = server.filter((l) => /^(User|Group|ReadWritePaths|RestrictAddressFamilies|NoNewPrivileges|Protect\w+|Private\w+|Restrict\w+|LockPersonality|SystemCallArchitectures)=/.test(l));
    expect(shared.length).toBeGreaterThan(15);
    for (const line of shared) expect(sweep).toContain(line);
    const timer = readFileSync(join(REPO, "packaging/systemd/relayctl-sweep.timer"), "utf8").split("\n");
    for (const line of ["OnUnitActiveSec=1min", "AccuracySec=1s", "WantedBy=timers.target"]) expect(timer).toContain(line);
    expect(server).toContain("Also=relayctl-sweep.timer");
  });

  test("without systemd, with cron: the sweep goes to cron.d, and the foreground command and log are printed", () => {
    const { root, r } = installWith("server-cron", "server", ["usr/sbin/cron"]);
    expect(r.code).toBe(0);
    expect(existsSync(join(root, "etc/systemd"))).toBe(false);
    expect(readFileSync(join(root, "etc/cron.d/relayctl"), "utf8")).toEndWith("\n* * * * * relayctl /usr/local/bin/relayctl server sweep --config /etc/relayctl/server.toml\n");
    expect(mode(join(root, "etc/cron.d/relayctl"))).toBe("644");
    expect(r.stdout).toContain("runuser -u relayctl -- /usr/local/bin/relayctl server --config /etc/relayctl/server.toml\n");
    expect(r.stdout).toContain('on stderr (JSON lines with log_format = "json"');
    // Without systemd, nothing tells you to run systemctl.
    expect(r.stdout).not.toContain("systemctl");
    expect(r.stdout).toContain("  1. Review /etc/relayctl/server.toml (public_url above all), then start the server from your init system\n     (stop it there first if it runs): runuser -u relayctl -- /usr/local/bin/relayctl server --config /etc/relayctl/server.toml\n");
    // Without /etc/cron.d the line is printed instead.
    const noCronD = freshDir("server-nocrond");
    targetProgram(noCronD, "usr/sbin/crond");
    const bare = runInstall(noCronD, ["server"], { env: { RELAYCTL_INIT: "cron" } });
    expect(bare.stdout).toContain("no /etc/cron.d: add the sweep to the system crontab (/etc/crontab format, with the user field):\n  * * * * * relayctl /usr/local/bin/relayctl server sweep --config /etc/relayctl/server.toml\n");
    expect(runInstall(root, ["uninstall"]).code).toBe(0);
    expect(existsSync(join(root, "etc/cron.d/relayctl"))).toBe(false);
  });

  test("without systemd or any cron daemon: no cron file that never runs, but the exact alternatives", () => {
    // /etc/cron.d alone (packages create it) is not a cron daemon.
    const { root, r } = installWith("server-nocron", "server", ["usr/bin/apt-get"]);
    expect(r.code).toBe(0);
    expect(existsSync(join(root, "etc/cron.d/relayctl"))).toBe(false);
    expect(r.stderr).toContain("install.sh: warning: no cron daemon (cron, crond) found, so /etc/cron.d/relayctl was not written: nothing would run the sweep");
    expect(r.stdout).toContain("install cron, then run install.sh server again:\n  apt-get install cron\n");
    expect(r.stdout).toContain("or run it as a service of its own from your init system:\n  runuser -u relayctl -- sh -c 'while :; do /usr/local/bin/relayctl server sweep --config /etc/relayctl/server.toml; sleep 60; done'\n");
    expect(r.stdout).not.toContain("systemctl");
    expect(r.stdout).toContain("(stop it there first if it runs): runuser -u relayctl -- /usr/local/bin/relayctl server --config /etc/relayctl/server.toml\n");
    // Another package manager, another package; none known: said in words.
    expect(installWith("server-nocron-dnf", "server", ["usr/bin/dnf"]).r.stdout).toContain("\n  dnf install cronie\n");
    expect(installWith("server-nocron-none", "server", []).r.stdout).toContain("\n  install cron or cronie with your package manager\n");
  });

  test("without systemd, with BusyBox crond (no /etc/cron.d support): the sweep line for relayctl's crontab", () => {
    const { root, r } = installWith("server-busybox", "server", ["bin/busybox", ["usr/sbin/crond", "/bin/busybox"]]);
    expect(r.code).toBe(0);
    expect(existsSync(join(root, "etc/cron.d/relayctl"))).toBe(false);
    expect(r.stdout).toContain("BusyBox crond reads no /etc/cron.d");
    expect(r.stdout).toContain("  echo '* * * * * /usr/local/bin/relayctl server sweep --config /etc/relayctl/server.toml' | crontab -u relayctl -\n");
    expect(r.stderr).not.toContain("no cron daemon");
  });

  test("auto-detection in a DESTDIR root follows the target's systemctl, not this machine's", () => {
    // This machine's PATH has the fake systemctl; the target decides.
    const plain = installWith("auto-plain", "server", ["usr/sbin/cron"], "auto");
    expect(plain.r.code).toBe(0);
    expect(existsSync(join(plain.root, "etc/systemd/system/relayctl.service"))).toBe(false);
    expect(plain.r.stdout).toContain("no systemd: run the server in the foreground");
    expect(plain.r.stdout).not.toContain("systemctl");
    const systemd = installWith("auto-systemd", "server", ["usr/bin/systemctl"], "auto");
    expect(systemd.r.code).toBe(0);
    expect(existsSync(join(systemd.root, "etc/systemd/system/relayctl.service"))).toBe(true);
    expect(systemd.r.stdout).toContain("then: systemctl restart relayctl\n");
    expect(existsSync(systemctlLog)).toBe(false);
  });

  test("the skeleton is the schema's, word for word", () => {
    const r = runInstall(freshDir("skeleton-print"), ["skeleton", "server"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(renderServerSkeleton());
  });

  test('lookup = "policy": the socket directory is made (group postfix, setgid) and the units may write it', () => {
    const root = freshDir("policy");
    mkdirSync(join(root, "etc/relayctl"), { recursive: true });
    writeFileSync(join(root, "etc/relayctl/server.toml"), 'lookup = "policy"\n');
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(0);
    expect(mode(join(root, "var/spool/postfix/relayctl"))).toBe("2750");
    for (const u of ["relayctl.service", "relayctl-sweep.service"]) {
      expect(readFileSync(join(root, "etc/systemd/system", u), "utf8")).toContain("ReadWritePaths=/var/lib/relayctl /etc/postfix/relayctl /var/spool/postfix/relayctl\n");
    }
    expect(r.stdout).toContain("check_policy_service { unix:relayctl/policy, timeout=5s }");
    expect(r.stdout).not.toContain("mynetworks =");
    // Its own default directory is repaired on a re-run.
    chmodSync(join(root, "var/spool/postfix/relayctl"), 0o700);
    expect(runInstall(root, ["server"]).code).toBe(0);
    expect(mode(join(root, "var/spool/postfix/relayctl"))).toBe("2750");
  });

  test('lookup = "policy" in a directory that is not relayctl\'s (Postfix\'s private/): refused, nothing changed or installed', () => {
    const root = freshDir("policy-private");
    const priv = join(root, "var/spool/postfix/private");
    mkdirSync(priv, { recursive: true });
    chmodSync(priv, 0o700);
    targetConfig(root, 'lookup = "policy"\npolicy_socket = "/var/spool/postfix/private/relayctl-policy"\n');
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith(`install.sh: policy_socket = "/var/spool/postfix/private/relayctl-policy" lies in ${priv}, which exists and is not relayctl's own (owner `);
    expect(r.stderr).toContain("so install.sh will not chown or chmod it: set policy_socket in /etc/relayctl/server.toml to a path in a directory of its own, such as the default /var/spool/postfix/relayctl/policy");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(mode(priv)).toBe("700");
    for (const p of ["usr/local/bin/relayctl", "etc/systemd", "var/lib/relayctl"]) expect(existsSync(join(root, p))).toBe(false);
  });

  test('lookup = "policy": a symlink, even at the default path, is not relayctl\'s own and its target keeps its mode', () => {
    const root = freshDir("policy-symlink");
    const priv = join(root, "var/spool/postfix/private");
    mkdirSync(priv, { recursive: true });
    chmodSync(priv, 0o700);
    symlinkSync(priv, join(root, "var/spool/postfix/relayctl"));
    targetConfig(root, 'lookup = "policy"\n');
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("which exists and is not relayctl's own");
    expect(mode(priv)).toBe("700");
  });

  test("an existing policy or map directory that the target's relayctl user owns is handed over (made 2750 / 755)", () => {
    if (process.getuid?.() !== 0) throw new Error("this test must run as root: it chowns directories to the target's relayctl uid");
    const root = freshDir("policy-ours");
    targetUser(root, 4711);
    const dirs = { policy: join(root, "srv/relayctl-policy"), map: join(root, "srv/relayctl-map") };
    for (const d of Object.values(dirs)) {
      mkdirSync(d, { recursive: true, mode: 0o700 });
      chownSync(d, 4711, 4711);
    }
    targetConfig(root, 'lookup = "policy"\npolicy_socket = "/srv/relayctl-policy/policy"\nmap = "/srv/relayctl-map/clients"\n');
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain("not relayctl's own");
    expect(mode(dirs.policy)).toBe("2750");
    expect(mode(dirs.map)).toBe("755");
    // Someone else's map directory is left alone, with a warning naming its owner.
    const other = freshDir("map-theirs");
    targetUser(other, 4711);
    mkdirSync(join(other, "srv/maps"), { recursive: true, mode: 0o700 });
    chownSync(join(other, "srv/maps"), 4712, 4712);
    targetConfig(other, 'map = "/srv/maps/clients"\n');
    const w = runInstall(other, ["server"]);
    expect(w.code).toBe(0);
    expect(w.stderr).toContain(`install.sh: warning: /srv/maps exists and is not relayctl's own (owner `);
    expect(mode(join(other, "srv/maps"))).toBe("700");
  });

  for (const mta of [
    { lookup: "exim", key: "exim_hosts", dir: "etc/exim4/relayctl", hook: ["accept hosts = net-iplsearch;/etc/exim4/relayctl/hosts", "update-exim4.conf && systemctl reload exim4"] },
    { lookup: "opensmtpd", key: "smtpd_table", dir: "etc/smtpd/relayctl", hook: ["table relayctl file:/etc/smtpd/relayctl/clients", 'match from src <relayctl> for any action "relay"', "systemctl restart opensmtpd"] },
  ]) {
    test(`lookup = "${mta.lookup}": the line file's directory is made (755), the units may write it (and not Postfix's), and the MTA's hook is printed`, () => {
      const root = freshDir(mta.lookup);
      targetConfig(root, `lookup = "${mta.lookup}"\nsmtpctl_socket = "/run/relayctl-smtpctl.sock"\n`);
      const r = runInstall(root, ["server"]);
      expect(r.code).toBe(0);
      expect(mode(join(root, mta.dir))).toBe("755");
      expect(existsSync(join(root, "etc/postfix"))).toBe(false);
      for (const u of ["relayctl.service", "relayctl-sweep.service"]) {
        expect(readFileSync(join(root, "etc/systemd/system", u), "utf8")).toContain(`ReadWritePaths=/var/lib/relayctl /${mta.dir}\n`);
      }
      for (const line of mta.hook) expect(r.stdout).toContain(line);
      expect(r.stdout).not.toContain("postconf");
      // A directory set in server.toml is the one made and opened, also on a re-run.
      targetConfig(root, `lookup = "${mta.lookup}"\n${mta.key} = "/srv/${mta.lookup}/file"\nsmtpctl_socket = "/run/relayctl-smtpctl.sock"\n`);
      expect(runInstall(root, ["server"]).code).toBe(0);
      expect(mode(join(root, "srv", mta.lookup))).toBe("755");
      expect(readFileSync(join(root, "etc/systemd/system/relayctl.service"), "utf8")).toContain(`ReadWritePaths=/var/lib/relayctl /srv/${mta.lookup}\n`);
    });
  }

  test('lookup = "exim": a directory that is not relayctl\'s own is left as it is, with a warning', () => {
    const root = freshDir("exim-theirs");
    mkdirSync(join(root, "etc/exim4"), { recursive: true, mode: 0o750 });
    chmodSync(join(root, "etc/exim4"), 0o750);
    targetConfig(root, 'lookup = "exim"\nexim_hosts = "/etc/exim4/relayctl-hosts"\n');
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("install.sh: warning: /etc/exim4 exists and is not relayctl's own (owner ");
    expect(mode(join(root, "etc/exim4"))).toBe("750");
  });

  test('lookup = "opensmtpd": the root socket unit running exactly smtpctl update table relayctl, which the services wait for', () => {
    const root = freshDir("smtpctl-units");
    targetProgram(root, "usr/local/sbin/smtpctl");
    // As Debian ships it: setgid to the queue group, which smtpctl insists on.
    chownSync(join(root, "usr/local/sbin/smtpctl"), 0, 991);
    chmodSync(join(root, "usr/local/sbin/smtpctl"), 0o2755);
    const group = spawnSync("stat", ["-c", "%G", join(root, "usr/local/sbin/smtpctl")], { encoding: "utf8" }).stdout.trim();
    targetConfig(root, 'lookup = "opensmtpd"\nsmtpctl_socket = "/run/relayctl/smtpctl.sock"\n');
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain("smtpctl_socket");
    const unit = (u: string) => readFileSync(join(root, "etc/systemd/system", u), "utf8");
    const socket = unit("relayctl-smtpctl.socket");
    for (const line of ["ListenStream=/run/relayctl/smtpctl.sock", "SocketUser=root", "SocketGroup=relayctl", "SocketMode=0660", "Accept=yes", "WantedBy=sockets.target"]) expect(socket).toContain(`\n${line}\n`);
    const service = unit("relayctl-smtpctl@.service");
    // The argv is fixed, found in the target (smtpctl is not in its /usr/sbin), and the connection is only its output.
    for (const line of ["ExecStart=/usr/local/sbin/smtpctl update table relayctl", `Group=${group}`, "StandardInput=socket", "StandardOutput=socket", "StandardError=socket", "CapabilityBoundingSet=", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX"]) {
      expect(service).toContain(`\n${line}\n`);
    }
    expect(service).not.toMatch(/^User=/m);
    for (const u of ["relayctl.service", "relayctl-sweep.service"]) expect(unit(u)).toContain("\nWants=relayctl-smtpctl.socket\nAfter=relayctl-smtpctl.socket\n");
    expect(r.stdout).toContain("systemctl enable --now relayctl-smtpctl.socket relayctl.service relayctl-sweep.timer");
    // Other lookups get neither the units nor the dependency.
    const plain = freshDir("smtpctl-none");
    targetConfig(plain, 'lookup = "exim"\n');
    expect(runInstall(plain, ["server"]).code).toBe(0);
    expect(existsSync(join(plain, "etc/systemd/system/relayctl-smtpctl.socket"))).toBe(false);
    expect(readFileSync(join(plain, "etc/systemd/system/relayctl.service"), "utf8")).not.toContain("smtpctl");
    // uninstall removes them with the rest.
    const u = runInstall(root, ["uninstall"]);
    expect(u.code).toBe(0);
    for (const f of ["relayctl-smtpctl.socket", "relayctl-smtpctl@.service"]) expect(existsSync(join(root, "etc/systemd/system", f))).toBe(false);
  });

  test('lookup = "opensmtpd" without smtpctl_socket: a warning naming the line to add; the units use the default socket', () => {
    const root = freshDir("smtpctl-unset");
    targetConfig(root, 'lookup = "opensmtpd"\n');
    const r = runInstall(root, ["server"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('add smtpctl_socket = "/run/relayctl-smtpctl.sock" to /etc/relayctl/server.toml (the server refuses to start without it)');
    expect(readFileSync(join(root, "etc/systemd/system/relayctl-smtpctl.socket"), "utf8")).toContain("\nListenStream=/run/relayctl-smtpctl.sock\n");
    expect(readFileSync(join(root, "etc/systemd/system/relayctl-smtpctl@.service"), "utf8")).toContain("\nGroup=opensmtpq\nExecStart=/usr/sbin/smtpctl update table relayctl\n");
    expect(r.stderr).toContain("install.sh: warning: no smtpctl at /usr/sbin/smtpctl: install OpenSMTPD and run install.sh server again");
  });

  test('lookup = "opensmtpd" without systemd: the root socket line for another init system', () => {
    const root = freshDir("smtpctl-cron");
    mkdirSync(join(root, "etc/cron.d"), { recursive: true });
    targetProgram(root, "usr/sbin/cron");
    targetConfig(root, 'lookup = "opensmtpd"\nsmtpctl_socket = "/run/relayctl-smtpctl.sock"\n');
    const r = runInstall(root, ["server"], { env: { RELAYCTL_INIT: "cron" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("  socat UNIX-LISTEN:/run/relayctl-smtpctl.sock,user=root,group=relayctl,mode=0660,unlink-early,fork EXEC:'/usr/sbin/smtpctl update table relayctl',stderr\n");
    expect(existsSync(join(root, "etc/systemd"))).toBe(false);
  });

  test("the skeleton's keys and example values are ones the server accepts", () => {
    const root = freshDir("skeleton");
    expect(runInstall(root, ["server"]).code).toBe(0);
    const skeleton = readFileSync(join(root, "etc/relayctl/server.toml"), "utf8");
    const asIs = join(root, "as-is.toml");
    writeFileSync(asIs, skeleton);
    expect(loadServerConfig(asIs).listen).toEqual({ host: "::", port: 8443 });
    const uncommented = join(root, "uncommented.toml");
    writeFileSync(uncommented, skeleton.replace(/^#([a-z0-9_]+ = )/gm, "$1"));
    const c = loadServerConfig(uncommented);
    expect(c.map).toBe("/etc/postfix/relayctl/clients");
    expect(c.stateDir).toBe("/var/lib/relayctl");
    expect(c.ttl).toBe(1200);
  });

  test("the skeleton documents every key the server knows", () => {
    // The unknown-key error's hint is the server's own list of keys.
    const probe = join(freshDir("keys"), "probe.toml");
    writeFileSync(probe, "no_such_key = 1\n");
    let hint = "";
    try {
      loadServerConfig(probe);
    } catch (err) {
      hint = (err as { hint?: string }).hint ?? "";
    }
    const known = hint.replace(/^known keys: /, "").split(", ").filter(Boolean);
    expect(known.length).toBeGreaterThan(5);
    const root = freshDir("keys-root");
    expect(runInstall(root, ["server"]).code).toBe(0);
    const documented = [...readFileSync(join(root, "etc/relayctl/server.toml"), "utf8").matchAll(/^#([a-z0-9_]+) = /gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(known.sort());
  });

  test("skips doctor silently when the binary has none", () => {
    const r = runInstall(freshDir("nodoctor"), ["server"], { env: { RELAYCTL_DOCTOR: "1" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("no doctor command");
  });

  test("runs doctor with the installed config and survives its complaints", () => {
    const root = freshDir("doctor");
    const r = runInstall(root, ["server"], { env: { RELAYCTL_DOCTOR: "1", FAKE_DOCTOR: "1", FAKE_DOCTOR_EXIT: "1" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("doctor: one problem found");
    expect(r.stdout).toContain("relayctl doctor reported problems");
    expect(readFileSync(join(root, "doctor.log"), "utf8")).toBe(`doctor --config ${root}/etc/relayctl/server.toml\n`);
  });
});

describe("install.sh client", () => {
  test("with systemd: timer and oneshot service, config 0600", () => {
    const root = freshDir("client");
    const r = runInstall(root, ["client"], { env: { RELAYCTL_DOCTOR: "1", FAKE_DOCTOR: "1" } });
    expect(r.code).toBe(0);
    for (const u of ["relayctl-client.service", "relayctl-client.timer"]) {
      expect(readFileSync(join(root, "etc/systemd/system", u), "utf8")).toBe(readFileSync(join(REPO, "packaging/systemd", u), "utf8"));
    }
    expect(existsSync(join(root, "etc/systemd/system/relayctl.service"))).toBe(false);
    expect(mode(join(root, "etc/relayctl"))).toBe("750");
    expect(mode(join(root, "etc/relayctl/client.toml"))).toBe("600");
    expect(mode(join(root, "var/lib/relayctl"))).toBe("700");
    expect(readFileSync(join(root, "doctor.log"), "utf8")).toBe(`doctor --client-config ${root}/etc/relayctl/client.toml\n`);
    const timer = readFileSync(join(REPO, "packaging/systemd/relayctl-client.timer"), "utf8");
    expect(timer).toMatch(/^OnUnitActiveSec=4min$/m);
    expect(timer).toMatch(/^OnBootSec=/m);
    expect(timer).toMatch(/^RandomizedDelaySec=/m);
    expect(readFileSync(join(REPO, "packaging/systemd/relayctl-client.service"), "utf8")).toMatch(/^Type=oneshot$/m);
    expect(existsSync(systemctlLog)).toBe(false);
  });

  test("without systemd: prints the cron line and writes no unit", () => {
    const { root, r } = installWith("cron", "client", ["usr/sbin/cron"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("*/4 * * * * sleep $(($(od -An -N1 -tu1 /dev/urandom) / 6)) && /usr/local/bin/relayctl client --config /etc/relayctl/client.toml");
    expect(r.stderr).not.toContain("no cron daemon");
    expect(existsSync(join(root, "etc/systemd"))).toBe(false);
  });

  test("without systemd or cron: says so and gives the --watch service line", () => {
    const { r } = installWith("client-nocron", "client", ["usr/bin/apt-get"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("install.sh: warning: no systemd and no cron daemon (cron, crond) found: nothing renews the lease yet");
    expect(r.stdout).toContain("  /usr/local/bin/relayctl client --watch --config /etc/relayctl/client.toml\n");
    expect(r.stdout).toContain("or install cron (apt-get install cron)");
  });

  test("auto-detection with only the tools install.sh needs on PATH: the cron way, no tool missing", () => {
    const root = freshDir("nosystemctl");
    // Only the tools install.sh needs, so systemctl is certainly absent.
    const bin = freshDir("minimal-path");
    for (const tool of ["sh", "cat", "chmod", "cp", "dirname", "basename", "head", "hostname", "mkdir", "mv", "rm", "sed", "awk", "cut", "id", "sha256sum", "readlink", "stat", "grep"]) {
      const found = spawnSync("sh", ["-c", 'command -v "$1"', "sh", tool], { encoding: "utf8" }).stdout.trim();
      if (found) writeExecutable(join(bin, tool), `#!/bin/sh\nexec ${found} "$@"\n`);
    }
    const r = runInstall(root, ["client"], { env: { PATH: bin, RELAYCTL_INIT: "auto" } });
    expect(r.stderr).not.toContain("not found");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("add this line to root's crontab");
  });

  test("on a host that is also the server, keeps the server's directory owners and modes", () => {
    const root = freshDir("both");
    expect(runInstall(root, ["server"]).code).toBe(0);
    chmodSync(join(root, "var/lib/relayctl"), 0o710);
    expect(runInstall(root, ["client"]).code).toBe(0);
    expect(mode(join(root, "var/lib/relayctl"))).toBe("710");
    expect(existsSync(join(root, "etc/systemd/system/relayctl.service"))).toBe(true);
    expect(existsSync(join(root, "etc/systemd/system/relayctl-client.timer"))).toBe(true);
  });
});

describe("install.sh binary sources", () => {
  test("from a release directory: verifies SHA256SUMS", () => {
    const rel = freshDir("release");
    makeReleaseDir(rel);
    const root = freshDir("from-release");
    const r = runInstall(root, ["client"], { script: join(rel, "install.sh"), env: { RELAYCTL_BINARY: "" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`verified ${rel}/relayctl against ${rel}/SHA256SUMS`);
    expect(readFileSync(join(root, "usr/local/bin/relayctl"), "utf8")).toBe(FAKE_RELAYCTL);
  });

  test("a binary that does not match SHA256SUMS is refused and not installed", () => {
    const rel = freshDir("tampered");
    makeReleaseDir(rel);
    writeFileSync(join(rel, "relayctl"), FAKE_RELAYCTL + "# tampered\n");
    const root = freshDir("from-tampered");
    const r = runInstall(root, ["server"], { script: join(rel, "install.sh"), env: { RELAYCTL_BINARY: "" } });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("does not match");
    expect(existsSync(join(root, "usr/local/bin/relayctl"))).toBe(false);
  });

  test("a SHA256SUMS without the binary (the tarballs' list) is refused", () => {
    const rel = freshDir("wrong-sums");
    makeReleaseDir(rel);
    writeFileSync(join(rel, "SHA256SUMS"), `${"0".repeat(64)}  relayctl-1.0.0-linux-x64.tar.gz\n`);
    const r = runInstall(freshDir("from-wrong-sums"), ["client"], { script: join(rel, "install.sh"), env: { RELAYCTL_BINARY: "" } });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("lists no relayctl");
  });

  test("piped into sh: installs ./relayctl from the current directory", () => {
    const cwd = freshDir("piped-cwd");
    makeReleaseDir(cwd);
    rmSync(join(cwd, "install.sh"));
    const root = freshDir("piped");
    const r = runInstall(root, ["client"], { stdinScript: true, cwd, env: { RELAYCTL_BINARY: "" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("verified ./relayctl");
    expect(existsSync(join(root, "usr/local/bin/relayctl"))).toBe(true);
  });

  test("piped with nothing to install: a clear error", () => {
    const r = runInstall(freshDir("piped-empty"), ["client"], { stdinScript: true, cwd: freshDir("empty-cwd"), env: { RELAYCTL_BINARY: "" } });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("RELAYCTL_BINARY");
  });

  test("the real host build installs and reports its version", () => {
    const built = join(REPO, "dist/relayctl");
    if (!existsSync(built)) return;
    const root = freshDir("real");
    const r = runInstall(root, ["server"], { env: { RELAYCTL_BINARY: built } });
    expect(r.code).toBe(0);
    const v = spawnSync(join(root, "usr/local/bin/relayctl"), ["--version"], { encoding: "utf8" });
    expect(v.stdout).toMatch(/^relayctl \S+ \(commit \S+, linux-\S+\)$/m);
  });

  test("from a clone without dist/relayctl: builds it with bun from node_modules, or says to run npm ci", () => {
    const clone = freshDir("clone");
    copyFileSync(INSTALL_SH, join(clone, "install.sh"));
    writeFileSync(join(clone, "build.ts"), "");
    const before = runInstall(freshDir("clone-root"), ["server"], { script: join(clone, "install.sh"), env: { RELAYCTL_BINARY: "" } });
    expect(before.code).toBe(1);
    expect(before.stderr).toContain("run `npm ci` there first");
    // Stands in for `bun build.ts`: what the real build leaves in dist/.
    mkdirSync(join(clone, "node_modules/.bin"), { recursive: true });
    const fakeBuild = ["#!/bin/sh", "[ \"$1\" = build.ts ] || exit 9", "mkdir -p dist/completions", `cp ${fakeRelayctl} dist/relayctl`, "echo .TH RELAYCTL 1 >dist/relayctl.1", "echo complete >dist/completions/relayctl", "echo '#compdef relayctl' >dist/completions/_relayctl", ""].join("\n");
    writeExecutable(join(clone, "node_modules/.bin/bun"), fakeBuild);
    const root = freshDir("clone-root");
    const r = runInstall(root, ["server"], { script: join(clone, "install.sh"), env: { RELAYCTL_BINARY: "" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`building ${clone}/dist/relayctl`);
    expect(readFileSync(join(root, "usr/local/bin/relayctl"), "utf8")).toBe(FAKE_RELAYCTL);
    expect(readFileSync(join(root, "usr/local/share/man/man1/relayctl.1"), "utf8")).toBe(".TH RELAYCTL 1\n");
    expect(readFileSync(join(root, "usr/local/share/bash-completion/completions/relayctl"), "utf8")).toBe("complete\n");
    expect(readFileSync(join(root, "usr/local/share/zsh/site-functions/_relayctl"), "utf8")).toBe("#compdef relayctl\n");
    expect(runInstall(root, ["uninstall"]).code).toBe(0);
    for (const p of ["usr/local/share/man/man1/relayctl.1", "usr/local/share/bash-completion/completions/relayctl", "usr/local/share/zsh/site-functions/_relayctl"]) expect(existsSync(join(root, p))).toBe(false);
  });

  test("from a fresh copy of this tree, as README says: after npm ci, install.sh server builds and installs", () => {
    // The tracked files as they are now, and this tree's node_modules standing in for `npm ci`.
    const clone = freshDir("fresh-clone");
    const files = spawnSync("git", ["-C", REPO, "ls-files", "-z"], { encoding: "utf8" }).stdout.split("\0").filter((f) => f && existsSync(join(REPO, f)));
    expect(files).toContain("build.ts");
    for (const f of files) {
      mkdirSync(join(clone, f, ".."), { recursive: true });
      copyFileSync(join(REPO, f), join(clone, f));
    }
    symlinkSync(join(REPO, "node_modules"), join(clone, "node_modules"));
    const root = freshDir("fresh-clone-root");
    const r = runInstall(root, ["server"], { script: join(clone, "install.sh"), cwd: clone, env: { RELAYCTL_BINARY: "" } });
    expect(r.code).toBe(0);
    const v = spawnSync(join(root, "usr/local/bin/relayctl"), ["--version"], { encoding: "utf8" });
    expect(v.stdout).toMatch(/^relayctl \S+ \(commit \S+, linux-\S+\)$/m);
    expect(readFileSync(join(root, "usr/local/share/man/man1/relayctl.1"), "utf8")).toContain('.SS "relayctl server add"');
    expect(existsSync(join(root, "etc/systemd/system/relayctl-sweep.timer"))).toBe(true);
  }, 120_000);

  test("usage errors exit 2", () => {
    const r = runInstall(freshDir("usage"), ["frobnicate"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("usage: install.sh");
  });
});

describe("install.sh uninstall", () => {
  test("removes units and binary, keeps config and state", () => {
    const root = freshDir("uninstall");
    expect(runInstall(root, ["server"]).code).toBe(0);
    expect(runInstall(root, ["client"]).code).toBe(0);
    const r = runInstall(root, ["uninstall"]);
    expect(r.code).toBe(0);
    for (const u of UNITS) expect(existsSync(join(root, "etc/systemd/system", u))).toBe(false);
    expect(existsSync(join(root, "usr/local/bin/relayctl"))).toBe(false);
    expect(existsSync(join(root, "etc/relayctl/server.toml"))).toBe(true);
    expect(existsSync(join(root, "etc/relayctl/client.toml"))).toBe(true);
    expect(existsSync(join(root, "var/lib/relayctl"))).toBe(true);
    // No Postfix in the root, so nothing names the map: nothing to unhook or empty.
    expect(r.stdout).not.toContain("Postfix");
    expect(runInstall(root, ["uninstall"]).code).toBe(0);
  });

  test("--purge also removes config, state and the map directory", () => {
    const root = freshDir("purge");
    expect(runInstall(root, ["server"]).code).toBe(0);
    expect(runInstall(root, ["uninstall", "--purge"]).code).toBe(0);
    for (const p of ["etc/relayctl", "var/lib/relayctl", "etc/postfix/relayctl", "usr/local/bin/relayctl"]) expect(existsSync(join(root, p))).toBe(false);
    expect(existsSync(systemctlLog)).toBe(false);
  });

  test("Exim's and OpenSMTPD's files, which nothing expires once relayctl is gone, are emptied (kept, mode kept); a foreign one is left with a warning", () => {
    for (const [lookup, key, mta, keep] of [["exim", "exim_hosts", "Exim", []], ["opensmtpd", "smtpd_table", "OpenSMTPD", ["0.0.0.0"]]] as const) {
      const root = freshDir(`uninstall-${lookup}`);
      targetConfig(root, `lookup = "${lookup}"\n${key} = "/srv/${lookup}/file"\nsmtpctl_socket = "/run/relayctl-smtpctl.sock"\n`);
      expect(runInstall(root, ["server"]).code).toBe(0);
      const file = join(root, "srv", lookup, "file");
      writeFileSync(file, `${MAP_HEADER}\n# Each line ...\n${keep.map((k) => k + "\n").join("")}198.51.100.7\n"2001:db8::/64"\n`, { mode: 0o644 });
      const r = runInstall(root, ["uninstall"]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`emptied /srv/${lookup}/file, which ${mta} still reads: it relays for nobody through it now`);
      expect(lineFileKeys(readFileSync(file, "utf8"))).toEqual([]);
      expect(readFileSync(file, "utf8").split("\n").filter((l) => l && !l.startsWith("#"))).toEqual([...keep]);
      expect(mode(file)).toBe("644");
      const foreign = `198.51.100.9\n`;
      writeFileSync(file, foreign);
      const w = runInstall(root, ["uninstall"]);
      expect(w.stderr).toContain(`install.sh: warning: /srv/${lookup}/file has no relayctl header, so it was left as it is: ${mta} relays for every address in it`);
      expect(readFileSync(file, "utf8")).toBe(foreign);
    }
  });
});

/** The first line of every map relayctl writes (src/server/lookups/map.ts). */
const MAP_HEADER = "# Generated by relayctl: do not edit, every change is overwritten.";

/** What relayctl server leaves in a root: the map's source with one lease and the table postmap built (hash, unless type says). */
function targetMap(root: string, type = "hash"): void {
  mkdirSync(join(root, "etc/postfix/relayctl"), { recursive: true });
  writeFileSync(join(root, "etc/postfix/relayctl/clients"), `${MAP_HEADER}\n198.18.0.5 OK\n`);
  const r = spawnSync("postmap", ["-c", join(root, "etc/postfix"), `${type}:${join(root, "etc/postfix/relayctl/clients")}`], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`postmap failed: ${r.stderr}`);
}

/** What the real postmap finds for 198.18.0.5 in the root's map: its value, or "" (exit 1: no entry; anything else fails). */
function lookup(root: string, type = "hash"): string {
  const r = spawnSync("postmap", ["-c", join(root, "etc/postfix"), "-q", "198.18.0.5", `${type}:${join(root, "etc/postfix/relayctl/clients")}`], { encoding: "utf8" });
  if (r.status !== 0 && r.status !== 1) throw new Error(`postmap -q failed: ${r.stderr}`);
  return r.stdout.trim();
}

/** Every setting of the root's Postfix, expanded (postconf -x, -Px), as relayctl's removal checks them. */
function postfixSettings(root: string): string {
  return ["-x", "-Px"].map((flag) => spawnSync("postconf", ["-c", join(root, "etc/postfix"), flag], { encoding: "utf8" }).stdout).join("");
}

describe("install.sh uninstall while main.cf uses the map", () => {
  /** A server install whose target main.cf hooks the map in, as the quick start says. */
  function hookedRoot(): string {
    const root = freshDir("hooked");
    expect(runInstall(root, ["server"]).code).toBe(0);
    mkdirSync(join(root, "etc/postfix"), { recursive: true });
    writeFileSync(join(root, "etc/postfix/master.cf"), "smtp inet n - y - - smtpd\n");
    writeFileSync(
      join(root, "etc/postfix/main.cf"),
      [
        "mynetworks = 127.0.0.0/8 [::1]/128 hash:/etc/postfix/relayctl/clients",
        "smtpd_relay_restrictions = permit_mynetworks, check_client_access lmdb:/etc/postfix/relayctl/clients, check_policy_service unix:private/relayctl/policy, reject_unauth_destination",
        "smtpd_recipient_restrictions = reject_unauth_pipelining",
        "",
      ].join("\n"),
    );
    return root;
  }

  test("--purge refuses, prints the postconf commands that unhook it, and removes nothing", () => {
    const root = hookedRoot();
    const r = runInstall(root, ["uninstall", "--purge"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Postfix still uses /etc/postfix/relayctl/clients");
    expect(r.stderr).toContain("postconf -e 'mynetworks = 127.0.0.0/8 [::1]/128'\n");
    expect(r.stderr).toContain("postconf -e 'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination'\n");
    expect(r.stderr).not.toContain("smtpd_recipient_restrictions");
    expect(r.stderr).toContain("--unhook");
    for (const p of ["usr/local/bin/relayctl", "etc/relayctl/server.toml", "etc/postfix/relayctl", "etc/systemd/system/relayctl.service"]) expect(existsSync(join(root, p))).toBe(true);
  });

  test("--purge --unhook takes the map out of main.cf first, then purges", () => {
    const root = hookedRoot();
    const r = runInstall(root, ["uninstall", "--purge", "--unhook"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const mainCf = readFileSync(join(root, "etc/postfix/main.cf"), "utf8");
    expect(mainCf).not.toContain("relayctl");
    expect(mainCf).toContain("mynetworks = 127.0.0.0/8 [::1]/128\n");
    expect(mainCf).toContain("smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n");
    expect(mainCf).toContain("smtpd_recipient_restrictions = reject_unauth_pipelining\n");
    for (const p of ["usr/local/bin/relayctl", "etc/relayctl", "etc/postfix/relayctl"]) expect(existsSync(join(root, p))).toBe(false);
  });

  test("a plain uninstall goes ahead, keeps the map and says how to unhook it", () => {
    const root = hookedRoot();
    const r = runInstall(root, ["uninstall"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("  postconf -e 'mynetworks = 127.0.0.0/8 [::1]/128'\n");
    expect(existsSync(join(root, "usr/local/bin/relayctl"))).toBe(false);
    expect(existsSync(join(root, "etc/postfix/relayctl"))).toBe(true);
    expect(readFileSync(join(root, "etc/postfix/main.cf"), "utf8")).toContain("hash:/etc/postfix/relayctl/clients");
  });

  test("a plain uninstall empties the map Postfix still reads, keeps it valid, and says so", () => {
    const root = hookedRoot();
    targetMap(root);
    expect(lookup(root)).toBe("OK");
    const r = runInstall(root, ["uninstall"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("emptied /etc/postfix/relayctl/clients (hash), which Postfix still names: it relays for nobody through it now");
    expect(lookup(root)).toBe("");
    const source = readFileSync(join(root, "etc/postfix/relayctl/clients"), "utf8");
    expect(source.startsWith(`${MAP_HEADER}\n`)).toBe(true);
    expect(source.split("\n").filter((l) => l && !l.startsWith("#"))).toEqual([]);
    expect(readdirSync(join(root, "etc/postfix/relayctl")).sort()).toEqual(["clients", "clients.db"]);
  });

  test("a map it cannot empty (not written by relayctl) is left as it was, with a warning that it still relays", () => {
    const root = hookedRoot();
    mkdirSync(join(root, "etc/postfix/relayctl"), { recursive: true });
    writeFileSync(join(root, "etc/postfix/relayctl/clients"), "198.18.0.5 OK\n");
    const r = runInstall(root, ["uninstall"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("install.sh: warning: Postfix still relays for the leases in /etc/postfix/relayctl/clients, and nothing expires them any more; it could not be emptied: /etc/postfix/relayctl/clients has no relayctl header");
    expect(readFileSync(join(root, "etc/postfix/relayctl/clients"), "utf8")).toBe("198.18.0.5 OK\n");
  });

  test("a map set in server.toml is the one looked for", () => {
    const root = hookedRoot();
    writeFileSync(join(root, "etc/relayctl/server.toml"), 'map = "/srv/maps/clients"\n');
    writeFileSync(join(root, "etc/postfix/main.cf"), "mynetworks = 127.0.0.0/8 cdb:/srv/maps/clients\n");
    const r = runInstall(root, ["uninstall", "--purge"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("postconf -e 'mynetworks = 127.0.0.0/8'\n");
  });
});

// The hook spelled through a parameter of its own, or only in one smtpd's master.cf override:
// postconf -h of a fixed list of parameters sees neither, postconf -x and -Px do.
describe("install.sh uninstall while Postfix uses the map through a $parameter or a master.cf override", () => {
  const MASTER_CF = "smtp inet n - y - - smtpd\n";
  const spellings = [
    {
      name: "a $parameter",
      mainCf: "relayctl_clients = hash:/etc/postfix/relayctl/clients\nmynetworks = 127.0.0.0/8 $relayctl_clients\nsmtpd_relay_restrictions = permit_mynetworks, check_client_access ${relayctl_clients}, reject_unauth_destination\n",
      masterCf: MASTER_CF,
      commands: ["postconf -e 'mynetworks = 127.0.0.0/8'", "postconf -X relayctl_clients", "postconf -e 'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination'"],
      mainAfter: "mynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n",
    },
    {
      name: "only a master.cf -o override",
      mainCf: "mynetworks = 127.0.0.0/8\n",
      masterCf: `${MASTER_CF}2525 inet n - y - - smtpd\n  -o smtpd_client_restrictions=check_client_access,hash:/etc/postfix/relayctl/clients,permit\n`,
      commands: ["postconf -P '2525/inet/smtpd_client_restrictions=permit'"],
      mainAfter: "mynetworks = 127.0.0.0/8\n",
    },
  ];

  /** A server install with a map holding one lease, hooked into the root's Postfix as spelled. */
  function spelledRoot(s: (typeof spellings)[number]): string {
    const root = freshDir("spelled");
    expect(runInstall(root, ["server"]).code).toBe(0);
    mkdirSync(join(root, "etc/postfix"), { recursive: true });
    writeFileSync(join(root, "etc/postfix/main.cf"), s.mainCf);
    writeFileSync(join(root, "etc/postfix/master.cf"), s.masterCf);
    targetMap(root);
    expect(postfixSettings(root)).toContain("hash:/etc/postfix/relayctl/clients");
    return root;
  }

  for (const s of spellings) {
    describe(s.name, () => {
      test("--purge refuses, prints the exact commands that unhook it, and removes nothing", () => {
        const root = spelledRoot(s);
        const r = runInstall(root, ["uninstall", "--purge"]);
        expect(r.code).toBe(1);
        expect(r.stderr).toContain("install.sh: Postfix still uses /etc/postfix/relayctl/clients; deleting it would make Postfix defer all mail. Unhook it first:\n");
        expect(r.stderr).toContain(`\n${s.commands.join("\n")}\npostfix reload\n`);
        for (const p of ["usr/local/bin/relayctl", "etc/relayctl/server.toml", "etc/postfix/relayctl/clients.db", "etc/systemd/system/relayctl.service"]) expect(existsSync(join(root, p))).toBe(true);
        expect(lookup(root)).toBe("OK");
      });

      test("--purge --unhook takes it out of Postfix, then purges", () => {
        const root = spelledRoot(s);
        const r = runInstall(root, ["uninstall", "--purge", "--unhook"]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        for (const c of s.commands) expect(r.stdout).toContain(`unhooked: ${c}\n`);
        expect(postfixSettings(root)).not.toContain("/etc/postfix/relayctl");
        expect(readFileSync(join(root, "etc/postfix/main.cf"), "utf8")).toBe(s.mainAfter);
        for (const p of ["usr/local/bin/relayctl", "etc/relayctl", "etc/postfix/relayctl"]) expect(existsSync(join(root, p))).toBe(false);
      });

      test("a plain uninstall prints the commands and empties the map, which Postfix still reads", () => {
        const root = spelledRoot(s);
        const r = runInstall(root, ["uninstall"]);
        expect(r.code).toBe(0);
        expect(r.stdout).toContain(s.commands.map((c) => `  ${c}\n`).join(""));
        expect(r.stdout).toContain("emptied /etc/postfix/relayctl/clients (hash)");
        expect(lookup(root)).toBe("");
        expect(postfixSettings(root)).toContain("hash:/etc/postfix/relayctl/clients");
      });
    });
  }
});

describe("systemd units", () => {
  test("packaging/systemd holds exactly what install.sh writes by default", () => {
    const dir = freshDir("units");
    expect(runInstall(freshDir("units-root"), ["units", dir]).code).toBe(0);
    const all = [...UNITS, "relayctl-smtpctl.socket", "relayctl-smtpctl@.service"];
    for (const u of all) expect(readFileSync(join(dir, u), "utf8")).toBe(readFileSync(join(REPO, "packaging/systemd", u), "utf8"));
    expect(readdirSync(join(REPO, "packaging/systemd")).sort()).toEqual(all.sort());
  });

  const analyze = spawnSync("systemd-analyze", ["--version"]).status === 0;
  /**
   * systemd-analyze verify on units install.sh wrote into root. verify checks that
   * ExecStart's binary exists and loads the targets the units name, so root gets
   * those (this machine's unit directory, kill) instead of this machine's /.
   */
  function verifyUnits(root: string, units: string[]): void {
    const systemDir = ["/usr/lib/systemd/system", "/lib/systemd/system"].find((d) => existsSync(d));
    if (!systemDir) throw new Error("systemd-analyze is installed but no systemd unit directory is");
    cpSync(systemDir, join(root, "usr/lib/systemd/system"), { recursive: true, dereference: false });
    mkdirSync(join(root, "bin"), { recursive: true });
    copyFileSync(existsSync("/bin/kill") ? "/bin/kill" : "/usr/bin/kill", join(root, "bin/kill"));
    chmodSync(join(root, "bin/kill"), 0o755);
    // --man=no: Documentation=man:relayctl(1) names a page this machine has not installed
    // (the release and first-contact tests check the page itself).
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", `--root=${root}`, ...units.map((u) => join(root, "etc/systemd/system", u))], { encoding: "utf8" });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  }

  test.skipIf(!analyze)("systemd-analyze verify accepts them without warnings", () => {
    const root = freshDir("analyze");
    expect(runInstall(root, ["server"]).code).toBe(0);
    expect(runInstall(root, ["client"]).code).toBe(0);
    verifyUnits(root, UNITS);
  });

  test.skipIf(!analyze)("systemd-analyze verify accepts the opensmtpd units (relayctl-smtpctl.socket, an instance of relayctl-smtpctl@.service)", () => {
    const root = freshDir("analyze-smtpctl");
    targetProgram(root, "usr/sbin/smtpctl");
    targetConfig(root, 'lookup = "opensmtpd"\nsmtpctl_socket = "/run/relayctl-smtpctl.sock"\n');
    expect(runInstall(root, ["server"]).code).toBe(0);
    // verify takes no template: the instance a connection would start.
    const dir = join(root, "etc/systemd/system");
    copyFileSync(join(dir, "relayctl-smtpctl@.service"), join(dir, "relayctl-smtpctl@0.service"));
    verifyUnits(root, ["relayctl-smtpctl.socket", "relayctl-smtpctl@0.service", "relayctl.service", "relayctl-sweep.service"]);
  });
});

describe("dist/relayctl server and the policy socket directory install.sh would not hand over", () => {
  // As root, the server could bind in any directory, so only its own check stops it.
  test("another non-root user's directory: exit 2 and one line naming it, its owner and the fix; its own: starts", async () => {
    if (process.getuid?.() !== 0) throw new Error("this test must run as root: it chowns a directory to uid 65534");
    await ensureBinary();
    const dir = freshDir("server-policy-owner");
    const priv = join(dir, "private");
    mkdirSync(priv, { mode: 0o700 });
    chownSync(priv, 65534, 65534);
    const port = freePort();
    const config = writeServerConfig(dir, { listen: `127.0.0.1:${port}`, public_url: `https://127.0.0.1:${port}`, state_dir: join(dir, "state"), lookup: "policy", policy_socket: join(priv, "policy") });
    const r = await relayctl(["server", "--config", config], 20_000);
    const owner = spawnSync("id", ["-nu", "65534"], { encoding: "utf8" }).stdout.trim();
    expect(owner).not.toBe("");
    expect(r.stderr).toBe(
      `relayctl: the policy socket directory ${priv} belongs to ${owner} (uid 65534), not to root (the user relayctl runs as), so that user could replace the socket and answer for relayctl: ` +
        `set policy_socket to a path in a directory of relayctl's own (the default /var/spool/postfix/relayctl/policy), or, if nothing but relayctl uses ${priv}: chown root:postfix ${priv} && chmod 2750 ${priv}\n`,
    );
    expect(r.code).toBe(2);
    expect(existsSync(join(priv, "policy"))).toBe(false);
    // Once the directory is the server's own (root's here), it starts and binds the socket.
    chownSync(priv, 0, 0);
    const server = await startServer(config, `https://127.0.0.1:${port}`);
    try {
      expect(statSync(join(priv, "policy")).isSocket()).toBe(true);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  }, 60_000);
});

const shellcheck = spawnSync("shellcheck", ["--version"]).status === 0;
test.skipIf(!shellcheck)("install.sh is shellcheck clean as POSIX sh", () => {
  const r = spawnSync("shellcheck", ["--shell=sh", INSTALL_SH], { encoding: "utf8" });
  expect(r.stdout + r.stderr).toBe("");
  expect(r.status).toBe(0);
});
