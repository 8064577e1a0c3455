/**
 * Release artifacts: tarball and .deb names, SHA256SUMS, the layout inside each
 * tarball and package, lintian, a package installed into and purged from a
 * throwaway root, and that every binary is an ELF file for its architecture and libc.
 *
 * The release build fetches four ~50 MB runtimes from npm (once; they are cached
 * in node_modules/.cache/relayctl), so it runs only with RELAYCTL_TEST_RELEASE=1.
 * RELAYCTL_TEST_RELEASE=existing checks what is already in dist/ without building
 * (artifacts from an older tree would fail, which is why that is not the default).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };

const REPO = join(import.meta.dir, "..", "..");
const DIST = join(REPO, "dist");

/** What each artifact must be: ELF machine, and a word its PT_INTERP contains. */
const ARTIFACTS = [
  { artifact: "linux-x64", machine: 0x3e, interp: "ld-linux-x86-64", target: "linux-x64-baseline" },
  { artifact: "linux-arm64", machine: 0xb7, interp: "ld-linux-aarch64", target: "linux-arm64" },
  { artifact: "linux-x64-musl", machine: 0x3e, interp: "ld-musl-x86_64", target: "linux-x64-baseline-musl" },
  { artifact: "linux-arm64-musl", machine: 0xb7, interp: "ld-musl-aarch64", target: "linux-arm64-musl" },
];
const tarball = (artifact: string) => `relayctl-${pkg.version}-${artifact}.tar.gz`;
/** The Debian packages: architecture and the ELF machine of their binary. */
const DEBS = [
  { arch: "amd64", machine: 0x3e },
  { arch: "arm64", machine: 0xb7 },
];
const deb = (arch: string) => `relayctl_${pkg.version}_${arch}.deb`;
const UNITS = ["relayctl.service", "relayctl-sweep.service", "relayctl-sweep.timer", "relayctl-client.service", "relayctl-client.timer", "relayctl-smtpctl.socket", "relayctl-smtpctl@.service"];

const mode = process.env.RELAYCTL_TEST_RELEASE;

function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** The ELF machine and program interpreter of a 64-bit little-endian executable, from its headers. */
function elfInfo(path: string): { machine: number; interp: string } {
  const fd = openSync(path, "r");
  try {
    // Headers and the interpreter string sit in the first pages of every Bun executable.
    const buf = Buffer.alloc(65536);
    readSync(fd, buf, 0, buf.length, 0);
    if (buf.toString("latin1", 0, 4) !== "\x7fELF") throw new Error(`${path}: not an ELF file`);
    if (buf[4] !== 2 || buf[5] !== 1) throw new Error(`${path}: not 64-bit little-endian`);
    const machine = buf.readUInt16LE(18);
    const phoff = Number(buf.readBigUInt64LE(32));
    const phentsize = buf.readUInt16LE(54);
    const phnum = buf.readUInt16LE(56);
    let interp = "";
    for (let i = 0; i < phnum; i++) {
      const ph = phoff + i * phentsize;
      if (buf.readUInt32LE(ph) !== 3 /* PT_INTERP */) continue;
      const off = Number(buf.readBigUInt64LE(ph + 8));
      const size = Number(buf.readBigUInt64LE(ph + 32));
      interp = buf.toString("latin1", off, off + size).replace(/\0+$/, "");
    }
    return { machine, interp };
  } finally {
    closeSync(fd);
  }
}

describe.skipIf(mode !== "1" && mode !== "existing")("release artifacts", () => {
  let unpacked: string;

  beforeAll(() => {
    if (mode === "1") {
      const started = Date.now();
      const r = spawnSync(process.execPath, ["build.ts", "--release"], { cwd: REPO, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
      if (r.status !== 0) throw new Error(`release build failed: ${r.stderr}`);
      console.log(`release build: ${((Date.now() - started) / 1000).toFixed(1)}s`);
    }
    unpacked = mkdtempSync(join(tmpdir(), "relayctl-release-"));
    for (const a of ARTIFACTS) {
      const r = spawnSync("tar", ["-xzf", join(DIST, tarball(a.artifact)), "-C", unpacked], { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`cannot unpack ${tarball(a.artifact)}: ${r.stderr}`);
    }
  }, 600_000);

  afterAll(() => {
    if (unpacked) rmSync(unpacked, { recursive: true, force: true });
  });

  test("dist/SHA256SUMS lists exactly the four tarballs and two packages, with their hashes", () => {
    const lines = readFileSync(join(DIST, "SHA256SUMS"), "utf8").trim().split("\n");
    expect(lines.map((l) => l.split(/\s+/)[1]).sort()).toEqual([...ARTIFACTS.map((a) => tarball(a.artifact)), ...DEBS.map((d) => deb(d.arch))].sort());
    for (const line of lines) {
      const [hash, file] = line.split(/\s+/);
      expect(sha256(join(DIST, file!))).toBe(hash!);
    }
  });

  for (const a of ARTIFACTS) {
    describe(a.artifact, () => {
      const dir = () => join(unpacked, `relayctl-${pkg.version}-${a.artifact}`);

      test("holds the binary, install.sh, units and a SHA256SUMS that matches them", () => {
        const sums = readFileSync(join(dir(), "SHA256SUMS"), "utf8").trim().split("\n").map((l) => l.split(/\s+/));
        const files = sums.map(([, f]) => f!);
        for (const f of ["relayctl", "install.sh", "relayctl.1", "completions/relayctl", "completions/_relayctl", ...UNITS.map((u) => `systemd/${u}`)]) {
          expect(files).toContain(f);
        }
        for (const [hash, f] of sums) expect(sha256(join(dir(), f!))).toBe(hash!);
        expect(statSync(join(dir(), "relayctl")).mode & 0o777).toBe(0o755);
        expect(statSync(join(dir(), "install.sh")).mode & 0o777).toBe(0o755);
        for (const u of UNITS) {
          expect(readFileSync(join(dir(), "systemd", u), "utf8")).toBe(readFileSync(join(REPO, "packaging/systemd", u), "utf8"));
        }
      });

      test(`is an ELF executable for machine 0x${a.machine.toString(16)} with ${a.interp}`, () => {
        const info = elfInfo(join(dir(), "relayctl"));
        expect(info.machine).toBe(a.machine);
        expect(info.interp).toContain(a.interp);
      });

      // The glibc build of this machine's architecture; CI and dev hosts are glibc systems.
      const runsHere = a.artifact === `linux-${process.arch}`;
      // Only defined where it can run: CI counts skipped e2e tests as failures.
      if (runsHere) {
        test("--version names version, commit and target", () => {
          const r = spawnSync(join(dir(), "relayctl"), ["--version"], { encoding: "utf8" });
          expect(r.stdout.trim()).toMatch(new RegExp(`^relayctl ${pkg.version.replace(/\./g, "\\.")} \\(commit (?:[0-9a-f]{12}|unknown), ${a.target}\\)$`));
        });
      }
    });
  }

  for (const d of DEBS) {
    describe(deb(d.arch), () => {
      const path = () => join(DIST, deb(d.arch));

      test("control: name, version, architecture, dependencies", () => {
        const r = spawnSync("dpkg-deb", ["--field", path()], { encoding: "utf8" });
        expect(r.status).toBe(0);
        for (const line of ["Package: relayctl", `Version: ${pkg.version}`, `Architecture: ${d.arch}`, "Depends: libc6 (>= 2.17), adduser", "Section: mail"]) expect(r.stdout).toContain(`${line}\n`);
        const scripts = spawnSync("dpkg-deb", ["--info", path()], { encoding: "utf8" }).stdout;
        for (const s of ["postinst", "prerm", "postrm", "md5sums"]) expect(scripts).toMatch(new RegExp(`\\s${s}\\b`));
      });

      test("contents: binary, units, man page, completions, docs; all owned by root, nothing in /etc", () => {
        const lines = spawnSync("dpkg-deb", ["--contents", path()], { encoding: "utf8" }).stdout.trim().split("\n");
        const entries = new Map(lines.map((l) => [l.split(/\s+/).at(-1)!, l]));
        for (const f of ["./usr/bin/relayctl", ...UNITS.map((u) => `./lib/systemd/system/${u}`), "./usr/share/man/man1/relayctl.1.gz", "./usr/share/bash-completion/completions/relayctl", "./usr/share/zsh/vendor-completions/_relayctl", "./usr/share/doc/relayctl/copyright", "./usr/share/doc/relayctl/changelog.gz", "./usr/share/relayctl/server.toml"]) {
          expect(entries.has(f)).toBe(true);
        }
        expect(entries.get("./usr/bin/relayctl")).toStartWith("-rwxr-xr-x root/root");
        for (const l of lines) expect(l).toContain(" root/root ");
        expect([...entries.keys()].filter((f) => f.startsWith("./etc/"))).toEqual([]);
      });

      test(`its binary is an ELF executable for machine 0x${d.machine.toString(16)}; its units run /usr/bin/relayctl`, () => {
        const dir = mkdtempSync(join(unpacked, `x-${d.arch}-`));
        expect(spawnSync("dpkg-deb", ["-x", path(), dir]).status).toBe(0);
        expect(elfInfo(join(dir, "usr/bin/relayctl")).machine).toBe(d.machine);
        const service = readFileSync(join(dir, "lib/systemd/system/relayctl.service"), "utf8");
        expect(service).toContain("ExecStart=/usr/bin/relayctl server --config /etc/relayctl/server.toml\n");
        expect(readFileSync(join(dir, "lib/systemd/system/relayctl-sweep.service"), "utf8")).toContain("ExecStart=/usr/bin/relayctl server sweep --config /etc/relayctl/server.toml\n");
        expect(readFileSync(join(dir, "usr/share/relayctl/server.toml"), "utf8")).toStartWith("# relayctl server configuration (TOML).");
      });

      test("lintian reports no errors", () => {
        const r = spawnSync("lintian", ["--fail-on", "error", path()], { encoding: "utf8" });
        expect(r.stdout.split("\n").filter((l) => l.startsWith("E:"))).toEqual([]);
        expect(r.status).toBe(0);
      }, 120_000);
    });
  }

  /**
   * An empty dpkg database in a new throwaway root with /etc/postfix, and dpkg run on it
   * chrootless: the maintainer scripts run here with DPKG_ROOT set, so they must touch
   * only the root. PATH decides whether they find postconf.
   */
  function dpkgRoot(name: string, path = process.env.PATH ?? "/usr/bin:/bin") {
    const root = join(unpacked, name);
    for (const d of ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc/postfix"]) mkdirSync(join(root, d), { recursive: true });
    writeFileSync(join(root, "var/lib/dpkg/status"), "");
    const dpkg = (...args: string[]) => spawnSync("dpkg", [`--root=${root}`, "--force-script-chrootless", "--force-depends", "--log=/dev/null", ...args], { encoding: "utf8", env: { ...process.env, PATH: path } });
    return { root, dpkg };
  }

  test("the amd64 package installs into a throwaway root, starts nothing, and purges only on purge", () => {
    const { root, dpkg } = dpkgRoot("dpkg-root");
    const install = dpkg("-i", join(DIST, deb("amd64")));
    expect(install.stderr).not.toMatch(/error/i);
    expect(install.status).toBe(0);
    expect(install.stdout).toContain("nothing runs yet");
    const mode = (p: string) => (statSync(join(root, p)).mode & 0o7777).toString(8);
    expect(mode("usr/bin/relayctl")).toBe("755");
    expect(mode("etc/relayctl")).toBe("750");
    expect(mode("etc/relayctl/server.toml")).toBe("640");
    expect(mode("var/lib/relayctl")).toBe("700");
    expect(mode("etc/postfix/relayctl")).toBe("755");
    expect(existsSync(join(root, "etc/systemd/system"))).toBe(false);
    // An edited config survives a re-install, and a remove; only purge takes it and the state.
    writeFileSync(join(root, "etc/relayctl/server.toml"), 'ttl = "30m"\n');
    expect(dpkg("-i", join(DIST, deb("amd64"))).status).toBe(0);
    expect(readFileSync(join(root, "etc/relayctl/server.toml"), "utf8")).toBe('ttl = "30m"\n');
    expect(dpkg("-r", "relayctl").status).toBe(0);
    expect(existsSync(join(root, "usr/bin/relayctl"))).toBe(false);
    expect(existsSync(join(root, "etc/relayctl/server.toml"))).toBe(true);
    expect(existsSync(join(root, "var/lib/relayctl"))).toBe(true);
    expect(dpkg("-P", "relayctl").status).toBe(0);
    for (const p of ["etc/relayctl", "var/lib/relayctl", "etc/postfix/relayctl"]) expect(existsSync(join(root, p))).toBe(false);
  });

  // What Postfix in the root says about the map decides whether remove empties it (fails
  // closed: with the server gone nothing would expire its leases) and purge keeps
  // /etc/postfix/relayctl: deleting a map Postfix still reads makes it defer all mail.
  const MASTER_CF = "smtp inet n - y - - smtpd\n";
  const MAP_HEADER = "# Generated by relayctl: do not edit, every change is overwritten.";
  const hooks: { name: string; files: Record<string, string>; type?: string; noPostconf?: boolean; used: boolean }[] = [
    { name: "main.cf through a $parameter", used: true, files: { "etc/postfix/main.cf": "relayctl_clients = hash:/etc/postfix/relayctl/clients\nmynetworks = 127.0.0.0/8 $relayctl_clients\n" } },
    {
      name: "only a master.cf -o override",
      used: true,
      files: { "etc/postfix/main.cf": "mynetworks = 127.0.0.0/8\n", "etc/postfix/master.cf": `${MASTER_CF}2525 inet n - y - - smtpd\n  -o smtpd_client_restrictions=check_client_access,hash:/etc/postfix/relayctl/clients\n` },
    },
    {
      name: "a second Postfix instance",
      used: true,
      type: "lmdb",
      files: { "etc/postfix/main.cf": "multi_instance_directories = /etc/postfix-out\n", "etc/postfix-out/main.cf": "mynetworks = 127.0.0.0/8, lmdb:/etc/postfix/relayctl/clients\n", "etc/postfix-out/master.cf": MASTER_CF },
    },
    { name: "no hook", used: false, files: { "etc/postfix/main.cf": "mynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n" } },
    // Postfix removed but not purged: its main.cf stays, and nothing reads the map any more.
    { name: "a hook, but no postconf", used: false, noPostconf: true, files: { "etc/postfix/main.cf": "mynetworks = 127.0.0.0/8 hash:/etc/postfix/relayctl/clients\n" } },
  ];
  for (const h of hooks) {
    const type = h.type ?? "hash";
    test(`with ${h.name}, remove ${h.used ? "empties the map (an upgrade does not)" : "leaves it alone"} and purge ${h.used ? "keeps" : "deletes"} /etc/postfix/relayctl`, () => {
      const name = `dpkg-root-${h.name.replace(/\W+/g, "-")}`;
      let path: string | undefined;
      if (h.noPostconf) {
        // /usr/sbin holds postconf, so PATH gets of it only the two programs dpkg insists on.
        const sbin = join(unpacked, `${name}-sbin`);
        mkdirSync(sbin);
        for (const p of ["ldconfig", "start-stop-daemon"]) symlinkSync(join("/usr/sbin", p), join(sbin, p));
        path = `${sbin}:/usr/bin:/bin`;
        expect(spawnSync("sh", ["-c", "command -v postconf"], { env: { PATH: path } }).status).not.toBe(0);
      }
      const { root, dpkg } = dpkgRoot(name, path);
      expect(dpkg("-i", join(DIST, deb("amd64"))).status).toBe(0);
      for (const [f, text] of Object.entries({ "etc/postfix/master.cf": MASTER_CF, ...h.files })) {
        mkdirSync(join(root, f, ".."), { recursive: true });
        writeFileSync(join(root, f), text);
      }
      // What relayctl server leaves there: the map's source with a lease, and the table postmap built.
      const map = join(root, "etc/postfix/relayctl/clients");
      const postmap = (...args: string[]) => spawnSync("postmap", ["-c", join(root, "etc/postfix"), ...args], { encoding: "utf8" });
      writeFileSync(map, `${MAP_HEADER}\n198.18.0.5 OK\n`);
      expect(postmap(`${type}:${map}`).status).toBe(0);
      /** postmap -q's answer for the lease: "OK", or "" when the map has no entry (exit 1); any other exit fails. */
      const lookup = () => {
        const q = postmap("-q", "198.18.0.5", `${type}:${map}`);
        expect([0, 1]).toContain(q.status ?? -1);
        return q.stdout.trim();
      };
      expect(lookup()).toBe("OK");
      // An upgrade runs prerm upgrade: the server comes back, so the map stays as it was.
      const upgrade = dpkg("-i", join(DIST, deb("amd64")));
      expect(upgrade.status).toBe(0);
      expect(lookup()).toBe("OK");
      const remove = dpkg("-r", "relayctl");
      expect(remove.status).toBe(0);
      expect({
        removeSaidEmptied: remove.stderr.includes(`relayctl: emptied /etc/postfix/relayctl/clients (${type}), which Postfix still names: it now relays for nobody through it`),
        lookup: lookup(),
      }).toEqual({ removeSaidEmptied: h.used, lookup: h.used ? "" : "OK" });
      if (h.used) {
        // A valid table (postmap -s reads it through) behind a source with the header and no entry.
        const dump = postmap("-s", `${type}:${map}`);
        expect([dump.status, dump.stdout]).toEqual([0, ""]);
        expect(readFileSync(map, "utf8").split("\n").filter((l) => l && !l.startsWith("#"))).toEqual([]);
        expect(readFileSync(map, "utf8").startsWith(`${MAP_HEADER}\n`)).toBe(true);
        expect(readdirSync(join(root, "etc/postfix/relayctl")).sort()).toEqual(["clients", `clients${type === "lmdb" ? ".lmdb" : ".db"}`]);
      }
      const purge = dpkg("-P", "relayctl");
      expect(purge.status).toBe(0);
      expect({
        purgeSaidKept: purge.stderr.includes("relayctl: kept /etc/postfix/relayctl"),
        mapKept: existsSync(map),
      }).toEqual({ purgeSaidKept: h.used, mapKept: h.used });
      for (const p of ["etc/relayctl", "var/lib/relayctl"]) expect(existsSync(join(root, p))).toBe(false);
    });
  }

  test("the packaged maintainer scripts have install.sh's shared functions inlined and are shellcheck clean as POSIX sh", () => {
    const control = join(unpacked, "control");
    expect(spawnSync("dpkg-deb", ["-e", join(DIST, deb("amd64")), control]).status).toBe(0);
    const shared = /^# BEGIN shared with the \.deb[^]*?^# END shared with the \.deb\n/m.exec(readFileSync(join(REPO, "install.sh"), "utf8"))![0];
    expect(shared).toContain("postfix_uses() {");
    expect(shared).toContain("empty_map() {");
    for (const s of ["prerm", "postrm"]) {
      const text = readFileSync(join(control, s), "utf8");
      expect(text).toContain(shared);
      expect(text).not.toContain("shared block goes here");
    }
    const r = spawnSync("shellcheck", ["--shell=sh", ...["postinst", "prerm", "postrm"].map((s) => join(control, s))], { encoding: "utf8" });
    expect(r.stdout).toBe("");
    expect(r.status).toBe(0);
  });

  test("the tarball's install.sh verifies and installs its own binary", () => {
    const dir = join(unpacked, `relayctl-${pkg.version}-linux-x64`);
    const root = join(unpacked, "root");
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", DESTDIR: root, RELAYCTL_INIT: "cron" };
    const r = spawnSync("sh", [join(dir, "install.sh"), "client"], { env, cwd: unpacked, encoding: "utf8" });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`verified ${dir}/relayctl against ${dir}/SHA256SUMS`);
    expect(sha256(join(root, "usr/local/bin/relayctl"))).toBe(sha256(join(dir, "relayctl")));
  });
});

// A source tarball or `git archive` export has no .git: the packages are then dated by the
// newest source file (git archive gives every file the commit's date), never 1970, which
// lintian rejects (package-contains-ancient-file). One target keeps the build short.
describe.skipIf(mode !== "1")("release build from a source tree without .git", () => {
  /** What git archive would give: every file dated the same, here 2026-01-02 03:04:05 UTC. */
  const SOURCE_DATE = Date.UTC(2026, 0, 2, 3, 4, 5) / 1000;
  let tree: string;

  beforeAll(() => {
    tree = mkdtempSync(join(tmpdir(), "relayctl-nogit-"));
    // The working tree, not HEAD, so uncommitted changes are what gets tested.
    const files = spawnSync("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], { cwd: REPO, encoding: "utf8" }).stdout.split("\0").filter((f) => f && existsSync(join(REPO, f)));
    expect(files).toContain("build.ts");
    for (const f of files) {
      mkdirSync(join(tree, f, ".."), { recursive: true });
      copyFileSync(join(REPO, f), join(tree, f));
      utimesSync(join(tree, f), SOURCE_DATE, SOURCE_DATE);
    }
    // Shared, so the cached runtimes are not fetched again.
    symlinkSync(join(REPO, "node_modules"), join(tree, "node_modules"));
    const env = { ...process.env };
    delete env.SOURCE_DATE_EPOCH;
    const r = spawnSync(process.execPath, ["build.ts", "--release", "--target", "linux-x64"], { cwd: tree, env, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`release build failed: ${r.stderr}`);
  }, 600_000);

  afterAll(() => {
    if (tree) rmSync(tree, { recursive: true, force: true });
  });

  test("builds only the named target, and SHA256SUMS lists just its artifacts", () => {
    const built = [deb("amd64"), tarball("linux-x64")].sort();
    expect(readdirSync(join(tree, "dist")).filter((f) => /\.(tar\.gz|deb)$/.test(f)).sort()).toEqual(built);
    const sums = readFileSync(join(tree, "dist", "SHA256SUMS"), "utf8").trim().split("\n");
    expect(sums.map((l) => l.split(/\s+/)[1]).sort()).toEqual(built);
  });

  test("every file in the .deb and the tarball, and the changelog, carry the sources' date", () => {
    const stamp = "2026-01-02 03:04";
    const env = { ...process.env, TZ: "UTC" };
    const entries = spawnSync("dpkg-deb", ["--contents", join(tree, "dist", deb("amd64"))], { env, encoding: "utf8" }).stdout.trim().split("\n");
    expect(entries.length).toBeGreaterThan(10);
    expect(entries.filter((l) => !l.includes(` ${stamp} `))).toEqual([]);
    const tarEntries = spawnSync("tar", ["-tvzf", join(tree, "dist", tarball("linux-x64"))], { env, encoding: "utf8" }).stdout.trim().split("\n");
    expect(tarEntries.filter((l) => !l.includes(` ${stamp} `))).toEqual([]);
    const changelog = spawnSync("sh", ["-c", 'dpkg-deb --fsys-tarfile "$1" | tar -xOf - ./usr/share/doc/relayctl/changelog.gz | gunzip', "sh", join(tree, "dist", deb("amd64"))], { encoding: "utf8" }).stdout;
    expect(changelog).toContain("Fri, 02 Jan 2026 03:04:05 +0000");
  });

  test("lintian reports no errors", () => {
    const r = spawnSync("lintian", ["--fail-on", "error", join(tree, "dist", deb("amd64"))], { encoding: "utf8" });
    expect(r.stdout.split("\n").filter((l) => l.startsWith("E:"))).toEqual([]);
    expect(r.status).toBe(0);
  }, 120_000);

  // Only defined where the x64 binary runs: CI counts skipped e2e tests as failures.
  if (process.arch === "x64") test("--version says the commit is unknown", () => {
    const dir = mkdtempSync(join(tree, "x-"));
    expect(spawnSync("tar", ["-xzf", join(tree, "dist", tarball("linux-x64")), "-C", dir]).status).toBe(0);
    const r = spawnSync(join(dir, `relayctl-${pkg.version}-linux-x64`, "relayctl"), ["--version"], { encoding: "utf8" });
    expect(r.stdout).toContain("(commit unknown, linux-x64-baseline)");
  });
});
