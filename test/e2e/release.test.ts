/**
 * Release artifacts: tarball names, SHA256SUMS, the layout inside each tarball,
 * and that every binary is an ELF file for its architecture and libc.
 *
 * The release build fetches four ~50 MB runtimes from npm (once; they are cached
 * in node_modules/.cache/relayctl), so it runs only with RELAYCTL_TEST_RELEASE=1.
 * RELAYCTL_TEST_RELEASE=existing checks what is already in dist/ without building
 * (artifacts from an older tree would fail, which is why that is not the default).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync } from "node:fs";
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

  test("dist/SHA256SUMS lists exactly the four tarballs, with their hashes", () => {
    const lines = readFileSync(join(DIST, "SHA256SUMS"), "utf8").trim().split("\n");
    expect(lines.map((l) => l.split(/\s+/)[1]).sort()).toEqual(ARTIFACTS.map((a) => tarball(a.artifact)).sort());
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
        for (const f of ["relayctl", "install.sh", "systemd/relayctl.service", "systemd/relayctl-client.service", "systemd/relayctl-client.timer"]) {
          expect(files).toContain(f);
        }
        for (const [hash, f] of sums) expect(sha256(join(dir(), f!))).toBe(hash!);
        expect(statSync(join(dir(), "relayctl")).mode & 0o777).toBe(0o755);
        expect(statSync(join(dir(), "install.sh")).mode & 0o777).toBe(0o755);
        for (const u of ["relayctl.service", "relayctl-client.service", "relayctl-client.timer"]) {
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
