// Builds the single executable dist/relayctl with the version baked in.
// Run with `npm run build` (bun from node_modules; nothing else needed).
//
// `npm run build -- --release` also cross-compiles the release targets and packs
// dist/relayctl-VERSION-linux-ARCH[-musl].tar.gz, dist/relayctl_VERSION_ARCH.deb
// (amd64, arm64) and dist/SHA256SUMS; `--target linux-x64` (repeatable) builds only
// the named ones. The layout is described in docs/operations.md ("Release builds").
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { basename, join, relative } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";
import pkg from "./package.json" with { type: "json" };
import bunPkg from "./node_modules/bun/package.json" with { type: "json" };

/** One release artifact: what Bun calls the target and where npm keeps its runtime. */
interface ReleaseTarget {
  /** Suffix of the tarball name and of the directory inside it. */
  artifact: string;
  bunTarget: Bun.Build.CompileTarget;
  /** npm package holding that platform's bun binary at bin/bun. */
  npmPackage: string;
  /** Debian architecture, for the glibc targets that also get a .deb. */
  debArch?: "amd64" | "arm64";
}

// x64 uses the baseline (no AVX2) runtime: the modern one dies with SIGILL on the
// older Xeons and Atoms many small mail hosts still run on.
const RELEASE_TARGETS: ReleaseTarget[] = [
  { artifact: "linux-x64", bunTarget: "bun-linux-x64-baseline", npmPackage: "@oven/bun-linux-x64-baseline", debArch: "amd64" },
  { artifact: "linux-arm64", bunTarget: "bun-linux-arm64", npmPackage: "@oven/bun-linux-aarch64", debArch: "arm64" },
  { artifact: "linux-x64-musl", bunTarget: "bun-linux-x64-baseline-musl", npmPackage: "@oven/bun-linux-x64-musl-baseline" },
  { artifact: "linux-arm64-musl", bunTarget: "bun-linux-arm64-musl", npmPackage: "@oven/bun-linux-aarch64-musl" },
];

// Bun's own cross-compilation downloads runtimes from GitHub; the npm registry is
// what CI and most build hosts can reach, so runtimes come from there instead.
const RUNTIME_CACHE = join("node_modules", ".cache", "relayctl", `bun-${bunPkg.version}`);
const UNITS = ["relayctl.service", "relayctl-sweep.service", "relayctl-sweep.timer", "relayctl-client.service", "relayctl-client.timer", "relayctl-smtpctl.socket", "relayctl-smtpctl@.service"];

/** Runs a command from an argv array and fails the build with its stderr. */
function run(argv: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", cwd: opts.cwd });
  if (r.status !== 0) {
    throw new Error(`${argv.join(" ")} failed (${r.error?.message ?? `exit ${r.status}`}): ${r.stderr?.trim() ?? ""}`);
  }
  return r.stdout;
}

/**
 * git's answer for this directory, or undefined when it is not the top of a checkout: a
 * source tarball unpacked inside another repository must not take that one's commit or date.
 */
function git(args: string[]): string | undefined {
  const top = spawnSync("git", ["rev-parse", "--show-toplevel"], { encoding: "utf8" });
  if (top.status !== 0 || realpathSync(top.stdout.trim()) !== realpathSync(".")) return undefined;
  const r = spawnSync("git", args, { encoding: "utf8" });
  return r.status === 0 && r.stdout.trim() !== "" ? r.stdout.trim() : undefined;
}

/**
 * The date that stands for this source, in seconds: SOURCE_DATE_EPOCH, else the commit
 * date, else (a source tarball or `git archive` export, without .git) the newest source
 * file's mtime. Never 0: that dated every file in the packages 1970, which lintian rejects.
 */
function sourceEpoch(): string {
  const committed = process.env.SOURCE_DATE_EPOCH || git(["log", "-1", "--format=%ct"]);
  if (committed) return committed;
  const sources = [...["package.json", "build.ts", "install.sh", "README.md", "LICENSE"].filter((f) => existsSync(f)), ...["src", "packaging", "docs"].flatMap((d) => filesUnder(d).map((f) => join(d, f)))];
  return String(Math.max(...sources.map((f) => Math.floor(statSync(f).mtimeMs / 1000))));
}

/** Compiles src/cli.ts into one executable; without executablePath Bun uses itself (host build). */
async function compile(opts: { outfile: string; targetName: string; bunTarget?: Bun.Build.CompileTarget; executablePath?: string }): Promise<void> {
  const result = await Bun.build({
    entrypoints: ["src/cli.ts"],
    minify: true,
    // Precompiled bytecode: the CLI starts on every cron run, and parsing the bundle dominated start-up.
    bytecode: true,
    // One chunk per lazily imported command: a chunk's node: imports are evaluated only when it
    // loads, so a cron-run `relayctl client` never pays for the server's or doctor's modules.
    splitting: true,
    format: "esm",
    sourcemap: "none",
    define: {
      RELAYCTL_VERSION: JSON.stringify(pkg.version),
      RELAYCTL_COMMIT: JSON.stringify(git(["rev-parse", "--short=12", "HEAD"]) ?? "unknown"),
      RELAYCTL_TARGET: JSON.stringify(opts.targetName),
    },
    compile: {
      outfile: opts.outfile,
      ...(opts.bunTarget ? { target: opts.bunTarget } : {}),
      ...(opts.executablePath ? { executablePath: opts.executablePath } : {}),
      // A binary in /usr/local/bin must not change behaviour with whatever .env
      // or bunfig.toml happens to sit in the directory cron runs it from.
      autoloadDotenv: false,
      autoloadBunfig: false,
      autoloadTsconfig: false,
      autoloadPackageJson: false,
    },
  });
  if (!result.success) {
    for (const m of result.logs) console.error(m);
    process.exit(1);
  }
}

/** Returns the path of the target's bun runtime, fetching it with `npm pack` (integrity-checked by npm) once. */
function runtimeFor(t: ReleaseTarget): string {
  const dir = join(RUNTIME_CACHE, basename(t.npmPackage));
  const bin = join(dir, "package", "bin", "bun");
  if (existsSync(bin)) return bin;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const spec = `${t.npmPackage}@${bunPkg.version}`;
  console.log(`fetching ${spec}`);
  const out = run(["npm", "pack", spec, "--pack-destination", dir, "--json", "--silent"]);
  const [{ filename }] = JSON.parse(out) as [{ filename: string }];
  run(["tar", "-xzf", join(dir, filename), "-C", dir, "package/bin/bun"]);
  rmSync(join(dir, filename));
  return bin;
}

/** Lines in `sha256sum` format (verifiable with `sha256sum -c`) for files relative to dir. */
function sha256sums(dir: string, files: string[]): string {
  return files.map((f) => `${createHash("sha256").update(readFileSync(join(dir, f))).digest("hex")}  ${f}\n`).join("");
}

/** Copies a file into the staging tree with an explicit mode, so umask does not leak into the tarball. */
function stage(from: string, root: string, to: string, mode: number): string {
  mkdirSync(join(root, to, ".."), { recursive: true });
  copyFileSync(from, join(root, to));
  chmodSync(join(root, to), mode);
  return to;
}

const DEB_MAINTAINER = "relayctl maintainers <maintainers@users.noreply.r-seed-0f3b198b.example>";

/** Every file under dir, relative to it, sorted. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

/** debian/copyright in the machine-readable format, with LICENSE as the license text. */
function debCopyright(): string {
  const license = readFileSync("LICENSE", "utf8").trim().split("\n").slice(4).map((l) => (l.trim() ? ` ${l}` : " .")).join("\n");
  return [
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
    "Upstream-Name: relayctl",
    "Comment: The executable embeds the Bun runtime and the npm packages citty,",
    " consola and ofetch, all under the MIT license.",
    "",
    "Files: *",
    "Copyright: 2026 the relayctl authors",
    "License: BSD-3-Clause",
    license,
    "",
  ].join("\n");
}

/** The Debian changelog of a native package: one entry for this version, dated at the commit. */
function debChangelog(sourceEpoch: string): string {
  const date = new Date(Number(sourceEpoch) * 1000).toUTCString().replace("GMT", "+0000");
  return `relayctl (${pkg.version}) unstable; urgency=medium\n\n  * Release ${pkg.version}.\n\n -- ${DEB_MAINTAINER}  ${date}\n`;
}

/** The line of prerm and postrm that stands for the functions they share with install.sh. */
const SHARED_PLACEHOLDER = /^# install\.sh's shared block goes here \(build\.ts\)\.\n/m;

/** install.sh's block of functions shared with the maintainer scripts, from its BEGIN to its END line. */
function sharedShell(): string {
  const m = /^# BEGIN shared with the \.deb[^]*?^# END shared with the \.deb\n/m.exec(readFileSync("install.sh", "utf8"));
  if (!m) throw new Error("install.sh: no block between '# BEGIN shared with the .deb' and '# END shared with the .deb'");
  return m[0];
}

/** A maintainer script as shipped: install.sh's shared block put in place of its placeholder line. */
function maintainerScript(name: string): string {
  const text = readFileSync(join("packaging", "deb", name), "utf8");
  return SHARED_PLACEHOLDER.test(text) ? text.replace(SHARED_PLACEHOLDER, () => sharedShell()) : text;
}

/**
 * Packs relayctl_VERSION_ARCH.deb with dpkg-deb from an already built binary:
 * units in /lib/systemd/system (none enabled), man page, completions, docs, and
 * the maintainer scripts in packaging/deb. Returns the file name.
 */
function buildDeb(t: ReleaseTarget & { debArch: string }, binary: string, sourceEpoch: string): string {
  const name = `relayctl_${pkg.version}_${t.debArch}`;
  const root = join("dist", "deb", name);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  stage(binary, root, "usr/bin/relayctl", 0o755);
  run(["sh", "install.sh", "units", join(root, "lib/systemd/system"), "/usr/bin/relayctl"]);
  const write = (to: string, data: string | Buffer, mode = 0o644): void => {
    mkdirSync(join(root, to, ".."), { recursive: true });
    writeFileSync(join(root, to), data);
    chmodSync(join(root, to), mode);
  };
  // mtime 0 in the gzip header (zlib's default), so the file does not record the build time.
  write("usr/share/man/man1/relayctl.1.gz", gzipSync(readFileSync(MAN_PAGE), { level: 9 }));
  stage(BASH_COMPLETION, root, "usr/share/bash-completion/completions/relayctl", 0o644);
  stage(ZSH_COMPLETION, root, "usr/share/zsh/vendor-completions/_relayctl", 0o644);
  write("usr/share/relayctl/server.toml", run(["sh", "install.sh", "skeleton", "server"]));
  write("usr/share/doc/relayctl/copyright", debCopyright());
  write("usr/share/doc/relayctl/changelog.gz", gzipSync(debChangelog(sourceEpoch), { level: 9 }));
  stage("README.md", root, "usr/share/doc/relayctl/README.md", 0o644);
  for (const f of readdirSync("docs").filter((f) => f.endsWith(".md"))) stage(join("docs", f), root, join("usr/share/doc/relayctl/docs", f), 0o644);
  stage(join("packaging", "deb", "lintian-overrides"), root, "usr/share/lintian/overrides/relayctl", 0o644);
  const payload = filesUnder(root);
  const installedKiB = payload.reduce((sum, f) => sum + Math.ceil(statSync(join(root, f)).size / 1024), 0);
  for (const script of ["postinst", "prerm", "postrm"]) write(join("DEBIAN", script), maintainerScript(script), 0o755);
  write("DEBIAN/md5sums", payload.map((f) => `${createHash("md5").update(readFileSync(join(root, f))).digest("hex")}  ${f}\n`).join(""));
  write(
    "DEBIAN/control",
    [
      "Package: relayctl",
      `Version: ${pkg.version}`,
      `Architecture: ${t.debArch}`,
      `Maintainer: ${DEB_MAINTAINER}`,
      `Installed-Size: ${installedKiB}`,
      "Depends: libc6 (>= 2.17), adduser",
      "Recommends: postfix",
      "Section: mail",
      "Priority: optional",
      "Description: Postfix relay leases for hosts on dynamic IP addresses",
      " relayctl lets hosts on dynamic IP addresses (a home server, a NAS, a",
      " scanner, a laptop) relay mail through a Postfix server without SMTP AUTH,",
      " by short, authenticated, expiring leases.",
      " .",
      " One executable for both ends: relayctl server, on the mail host, keeps a",
      " Postfix lookup table holding exactly the live leases; relayctl client,",
      " run by a timer on each dynamic host, renews its lease. Nothing is started",
      " on installation.",
      "",
    ].join("\n"),
  );
  // Directories get 0755 whatever the umask, as the files got explicit modes; every
  // mtime is the commit's, so the package does not record when it was built.
  for (const e of readdirSync(root, { recursive: true, withFileTypes: true })) {
    const path = join(e.parentPath, e.name);
    if (e.isDirectory()) chmodSync(path, 0o755);
    utimesSync(path, Number(sourceEpoch), Number(sourceEpoch));
  }
  chmodSync(root, 0o755);
  utimesSync(root, Number(sourceEpoch), Number(sourceEpoch));
  const deb = `${name}.deb`;
  // xz level 1, not dpkg-deb's 6: level 6 spent a minute of CPU per package, most of the
  // whole release build, to make it 5 MB (12 %) smaller; it stays below the gzip tarball.
  const r = spawnSync("dpkg-deb", ["--root-owner-group", "-Zxz", "-z1", "--build", root, join("dist", deb)], { encoding: "utf8", env: { ...process.env, SOURCE_DATE_EPOCH: sourceEpoch } });
  if (r.status !== 0) throw new Error(`dpkg-deb failed: ${r.error?.message ?? r.stderr}`);
  return deb;
}

/** Builds one release target and packs its tarball (and .deb); returns their file names. */
async function buildRelease(t: ReleaseTarget, sourceEpoch: string): Promise<string[]> {
  const name = `relayctl-${pkg.version}-${t.artifact}`;
  const root = join("dist", "release", name);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  await compile({ outfile: join(root, "relayctl"), targetName: t.bunTarget.replace(/^bun-/, ""), bunTarget: t.bunTarget, executablePath: runtimeFor(t) });
  chmodSync(join(root, "relayctl"), 0o755);
  const files = [
    "relayctl",
    stage("install.sh", root, "install.sh", 0o755),
    ...UNITS.map((u) => stage(join("packaging", "systemd", u), root, join("systemd", u), 0o644)),
    stage(MAN_PAGE, root, "relayctl.1", 0o644),
    stage(BASH_COMPLETION, root, "completions/relayctl", 0o644),
    stage(ZSH_COMPLETION, root, "completions/_relayctl", 0o644),
    ...["README.md", "LICENSE"].filter((f) => existsSync(f)).map((f) => stage(f, root, f, 0o644)),
  ];
  writeFileSync(join(root, "SHA256SUMS"), sha256sums(root, files.sort()));
  chmodSync(join(root, "SHA256SUMS"), 0o644);
  const tarball = `${name}.tar.gz`;
  // Fixed owner, order and mtime, so the tarball does not record who built it where, or when.
  run(["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", `--mtime=@${sourceEpoch}`, "-czf", join("..", tarball), name], { cwd: join("dist", "release") });
  return t.debArch ? [tarball, buildDeb({ ...t, debArch: t.debArch }, join(root, "relayctl"), sourceEpoch)] : [tarball];
}

/** Generated from the command definitions, so they list exactly what the binary accepts. */
const MAN_PAGE = join("dist", "relayctl.1");
const BASH_COMPLETION = join("dist", "completions", "relayctl");
const ZSH_COMPLETION = join("dist", "completions", "_relayctl");

/** Writes the man page and the bash and zsh completions from src/cli.ts's command tree. */
async function writeDocs(sourceEpoch: string): Promise<void> {
  const { main } = await import("./src/cli.ts");
  const { commandTree } = await import("./src/lib/cmdtree.ts");
  const { renderManPage } = await import("./src/lib/manpage.ts");
  const { bashCompletion, zshCompletion } = await import("./src/commands/completion.ts");
  const tree = await commandTree(main);
  mkdirSync(join("dist", "completions"), { recursive: true });
  writeFileSync(MAN_PAGE, renderManPage(tree, { version: pkg.version, date: new Date(Number(sourceEpoch) * 1000) }));
  writeFileSync(BASH_COMPLETION, bashCompletion(tree));
  writeFileSync(ZSH_COMPLETION, zshCompletion(tree));
}

const { values: args } = parseArgs({ options: { release: { type: "boolean", default: false }, target: { type: "string", multiple: true } } });
const targets = RELEASE_TARGETS.filter((t) => !args.target || args.target.includes(t.artifact));
for (const name of args.target ?? []) {
  if (RELEASE_TARGETS.some((t) => t.artifact === name)) continue;
  console.error(`build.ts: --target ${name} is not a release target: use one of ${RELEASE_TARGETS.map((t) => t.artifact).join(", ")}`);
  process.exit(2);
}
const hostTarget = `bun-linux-${process.arch === "arm64" ? "arm64" : "x64"}`;
// The source's date, not now: the man page's date and the packages' mtimes must not depend on when the build ran.
const epoch = sourceEpoch();
mkdirSync("dist", { recursive: true });
await compile({ outfile: "dist/relayctl", targetName: `linux-${process.arch}` });
await writeDocs(epoch);
console.log(`built dist/relayctl ${pkg.version} (${hostTarget}), ${MAN_PAGE} and dist/completions/`);

if (args.release) {
  const started = Date.now();
  // Stale artifacts of other versions would otherwise end up next to a SHA256SUMS that does not list them.
  for (const f of readdirSync("dist")) if (/^relayctl[-_].*\.(tar\.gz|deb)$/.test(f)) rmSync(join("dist", f));
  const artifacts: string[] = [];
  for (const t of targets) {
    for (const a of await buildRelease(t, epoch)) {
      artifacts.push(a);
      console.log(`built dist/${a} (${statSync(join("dist", a)).size} bytes)`);
    }
  }
  writeFileSync(join("dist", "SHA256SUMS"), sha256sums("dist", artifacts));
  // 400 MB of unpacked binaries that the tarballs and packages already hold.
  rmSync(join("dist", "release"), { recursive: true, force: true });
  rmSync(join("dist", "deb"), { recursive: true, force: true });
  console.log(`wrote dist/SHA256SUMS; release build took ${((Date.now() - started) / 1000).toFixed(1)}s`);
}
