/**
 * The test prerequisites: one list in test/prereqs.sh that CI installs and
 * the docs point to, and `npm test` failing at once, on one line, when the
 * e2e tests could not run, unless skipping them was asked for.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { skipSummary } from "../summary.ts";
import { removeTempDirs, tempDir } from "./helpers.ts";

const REPO = join(import.meta.dir, "..", "..");
const PREREQS = join(REPO, "test", "prereqs.sh");

afterAll(removeTempDirs);

/** A bin directory whose `id -u` says uid and whose dpkg-query reports `absent` as not installed. */
function fakeSystem(uid: number, absent: string[]): string {
  const bin = join(tempDir("relayctl-prereqs-"), "bin");
  mkdirSync(bin);
  const script = (name: string, body: string) => {
    writeFileSync(join(bin, name), `#!/bin/sh\n${body}\n`);
    chmodSync(join(bin, name), 0o755);
  };
  script("id", `echo ${uid}`);
  // dpkg-query -W -f=FORMAT PACKAGE: the package is the last argument.
  script("dpkg-query", `for p; do :; done; case " ${absent.join(" ")} " in *" $p "*) exit 1 ;; esac; printf 'install ok installed'`);
  return bin;
}

function runWith(bin: string, argv: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const r = Bun.spawnSync(argv, { cwd: REPO, env: { PATH: `${bin}:${process.env.PATH}`, ...env }, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

describe("test/prereqs.sh --check", () => {
  test("all there, as root: silent, exit 0 (or, without Postfix's main.cf, that alone)", () => {
    const r = runWith(fakeSystem(0, []), ["sh", PREREQS, "--check"]);
    if (existsSync("/etc/postfix/main.cf")) expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    else expect(r.stderr).toStartWith("relayctl tests: the e2e tests cannot run: no /etc/postfix/main.cf: ");
  });

  test("not root and packages missing: one line naming each, and the setup command; exit 1", () => {
    const r = runWith(fakeSystem(1000, ["curl", "swaks"]), ["sh", PREREQS, "--check"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trimEnd().split("\n")).toEqual([
      "relayctl tests: the e2e tests cannot run: not root (the e2e tests create network namespaces and run Postfix); missing packages: swaks curl: as root, run test/prereqs.sh (installs them), then npm test as root; or npm run test:unit for the unit tests alone, or RELAYCTL_SKIP_E2E=1 npm test to skip the e2e tests",
    ]);
  });

  test("RELAYCTL_SKIP_E2E=1 turns it into a note, exit 0; CI's RELAYCTL_REQUIRE_E2E=1 wins over it", () => {
    const bin = fakeSystem(1000, []);
    const skip = runWith(bin, ["sh", PREREQS, "--check"], { RELAYCTL_SKIP_E2E: "1" });
    expect(skip.code).toBe(0);
    expect(skip.stderr).toBe("relayctl tests: skipping the e2e tests (RELAYCTL_SKIP_E2E=1): not root (the e2e tests create network namespaces and run Postfix)\n");
    expect(runWith(bin, ["sh", PREREQS, "--check"], { RELAYCTL_SKIP_E2E: "1", RELAYCTL_REQUIRE_E2E: "1" }).code).toBe(1);
  });

  test("installing refuses without root, saying so", () => {
    const r = runWith(fakeSystem(1000, ["curl"]), ["sh", PREREQS]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("needs root");
  });
});

describe("npm test", () => {
  test("stops before building when the e2e tests cannot run, with the check's one line", () => {
    const r = runWith(fakeSystem(1000, ["postfix"]), ["sh", join(REPO, "test", "run.sh")]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toStartWith("relayctl tests: the e2e tests cannot run: not root");
    expect(r.stderr).toContain("missing packages: postfix:");
    // main.cf comes with Postfix: no second complaint about it.
    expect(r.stderr).not.toContain("main.cf");
  });

  test("is test/run.sh; test:unit is the quick path", () => {
    const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8"));
    expect(pkg.scripts.test).toBe("sh test/run.sh");
    expect(pkg.scripts["test:unit"]).toBe("bun test test/unit");
  });
});

describe("an e2e file that cannot run", () => {
  // Not root is the missing prerequisite: as root, the file runs as nobody, keeping only the right
  // to read (a clone under /root is closed to nobody). The file stops at its support check,
  // before any namespace or Postfix exists.
  function e2eFileAsNonRoot(env: Record<string, string>): { code: number; out: string } {
    const home = tempDir("relayctl-nonroot-");
    chmodSync(home, 0o777);
    const argv = [process.execPath, "test", "test/e2e/harness.test.ts"];
    const asUser = process.getuid?.() === 0 ? ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", ...argv] : argv;
    const r = Bun.spawnSync(asUser, { cwd: REPO, env: { PATH: "/usr/bin:/bin", HOME: home, TMPDIR: home, ...env }, stdout: "pipe", stderr: "pipe" });
    return { code: r.exitCode ?? -1, out: r.stdout.toString() + r.stderr.toString() };
  }

  test("fails by default, naming why and the setup command", () => {
    const r = e2eFileAsNonRoot({});
    expect(r.code).not.toBe(0);
    expect(r.out).toContain("e2e tests cannot run: not root (the e2e tests create network namespaces and run Postfix): as root, test/prereqs.sh installs what they need; RELAYCTL_SKIP_E2E=1 skips them");
  });

  test("skips with RELAYCTL_SKIP_E2E=1, saying why; fails again with RELAYCTL_REQUIRE_E2E=1", () => {
    const r = e2eFileAsNonRoot({ RELAYCTL_SKIP_E2E: "1" });
    expect(r.code).toBe(0);
    expect(r.out).toContain("relayctl e2e: skipping the e2e tests (RELAYCTL_SKIP_E2E=1): not root");
    expect(r.out).toMatch(/\b0 fail\b/);
    expect(e2eFileAsNonRoot({ RELAYCTL_SKIP_E2E: "1", RELAYCTL_REQUIRE_E2E: "1" }).code).not.toBe(0);
  });
});

describe("one list", () => {
  const list = /^PACKAGES="([^"]+)"$/m.exec(readFileSync(PREREQS, "utf8"))![1]!.split(" ");

  test("CI installs through test/prereqs.sh and names no package itself", () => {
    const ci = readFileSync(join(REPO, ".ci", "run"), "utf8");
    expect(ci).toContain("sh test/prereqs.sh ||");
    expect(ci).not.toContain("apt-get");
    for (const p of ["swaks", "postfix-lmdb", "libio-socket-ssl-perl"]) expect(ci).not.toContain(p);
    expect(list).toContain("curl");
  });

  test("docs/hacking.md points at it and lists no packages of its own", () => {
    const hacking = readFileSync(join(REPO, "docs", "hacking.md"), "utf8");
    expect(hacking).toContain("test/prereqs.sh");
    for (const p of ["postfix-lmdb", "libio-socket-ssl-perl", "dpkg-dev"]) expect(hacking).not.toContain(p);
  });
});

describe("the skip summary at the end of npm test", () => {
  const junit = (cases: string) => `<testsuites>\n<testsuite name="x">\n${cases}\n</testsuite>\n</testsuites>`;
  const skipped = (file: string, line: number, name: string) => `<testcase name="${name}" classname="" time="0" file="${file}" line="${line}" assertions="0">\n  <skipped />\n</testcase>`;

  test("nothing skipped: nothing said", () => {
    expect(skipSummary(junit('<testcase name="ok" classname="" file="test/unit/a.test.ts" line="1" />'), null)).toEqual([]);
  });

  test("names each skipped test by file:line, counts a file with many, and gives the e2e reason", () => {
    const cases = [skipped("test/unit/cli.test.ts", 172, "bare `relayctl server` with &quot;no&quot; default config")];
    for (let i = 0; i < 5; i++) cases.push(skipped("test/e2e/relay.test.ts", 20 + i, `t${i}`));
    expect(skipSummary(junit(cases.join("\n")), "not root: as root, test/prereqs.sh installs what they need")).toEqual([
      "skipped: 6 tests; each was skipped by the condition at the line named (a tool, root or a file this machine lacks, or an opt-out)",
      "  e2e: 5 skipped because the e2e tests cannot run here: not root: as root, test/prereqs.sh installs what they need",
      "  test/e2e/relay.test.ts: 5 tests",
      '  test/unit/cli.test.ts:172: bare `relayctl server` with "no" default config',
    ]);
  });
});
