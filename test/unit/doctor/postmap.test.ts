import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { postmapVerdict, refusedSetting, settingVerdict, type PostmapRun } from "../../../src/doctor/postmap.ts";
import { configCheck } from "../../../src/doctor/server.ts";

const MAIN_CF = "compatibility_level = 3.6\nsmtputf8_enable = yes\nmyhostname = mail.example.org\nsmtputf8_enable = maybe\n";
const base: PostmapRun = { path: "/usr/sbin/postmap", configDir: "/etc/postfix", code: 1, stdout: "", stderr: "", timedOut: false, mainCf: MAIN_CF };
const run = (o: Partial<PostmapRun>) => postmapVerdict({ ...base, ...o });

describe("postfix.postmap", () => {
  test("passes when postmap answers ok", () => {
    expect(run({ code: 0, stdout: "ok\n" })).toEqual({ id: "postfix.postmap", status: "pass", message: "/usr/sbin/postmap runs" });
  });

  test("a refused main.cf setting names the line Postfix uses (the last) and removes it, never a reinstall", () => {
    // What Postfix 3.7 prints for `smtputf8_enable = maybe`, warnings about the repeated setting first.
    const stderr = "postmap: warning: /etc/postfix/main.cf, line 4: overriding earlier entry: smtputf8_enable=yes\npostmap: fatal: bad boolean configuration: smtputf8_enable = maybe\n";
    const v = run({ stderr });
    expect(v.status).toBe("fail");
    expect(v.message).toContain("/etc/postfix/main.cf:4 sets smtputf8_enable");
    expect(v.message).toContain("postmap: fatal: bad boolean configuration: smtputf8_enable = maybe");
    expect(v.hint).toContain("postconf -c /etc/postfix -X smtputf8_enable");
    expect(v.hint).not.toContain("reinstall");
  });

  test("every wording Postfix uses for a bad value is traced to its parameter", () => {
    const cases: [string, string][] = [
      ["bad numerical configuration: berkeley_db_create_buffer_size = abc", "berkeley_db_create_buffer_size"],
      ["bad string length 0 < 1: myhostname = ", "myhostname"],
      ["file /etc/postfix/main.cf: parameter myhostname: bad parameter value: vm.a..b", "myhostname"],
      ['unknown inet_protocols value "bogus" in "bogus"', "inet_protocols"],
      ['malformed compatibility level syntax: "x"', "compatibility_level"],
    ];
    const mainCf = "inet_protocols = bogus\ncompatibility_level = x\nberkeley_db_create_buffer_size = abc\nmyhostname =\n";
    for (const [fatal, name] of cases) expect(refusedSetting(`postmap: fatal: ${fatal}\n`, mainCf)?.name).toBe(name);
  });

  test("a parameter postmap refuses but main.cf does not set: says so and how to set it", () => {
    const v = run({ mainCf: "mydomain = a..b\n", stderr: "postmap: fatal: file /etc/postfix/main.cf: parameter myhostname: bad parameter value: vm.a..b\n" });
    expect(v.message).toContain("postmap refuses the value myhostname gets (it is not set in /etc/postfix/main.cf)");
    expect(v.hint).toContain("postconf -c /etc/postfix -e 'myhostname = VALUE'");
  });

  test("an unreadable main.cf gets chmod; a missing one is not a permission problem; an unnamed fatal gets the command that shows it again", () => {
    expect(refusedSetting("postmap: fatal: open /etc/postfix/main.cf: No such file or directory\n", "")).toEqual({ line: "postmap: fatal: open /etc/postfix/main.cf: No such file or directory", fatal: "open /etc/postfix/main.cf: No such file or directory" });
    const unreadable = run({ stderr: "postmap: fatal: open /etc/postfix/main.cf: Permission denied\n" });
    expect(unreadable.hint).toBe("chmod 644 /etc/postfix/main.cf");
    const unnamed = run({ stderr: "postmap: fatal: update_env: missing attribute name in: =\n" });
    expect(unnamed.message).toContain("update_env: missing attribute name");
    expect(unnamed.hint).toStartWith("correct what the message names, usually in /etc/postfix/main.cf");
    expect(unnamed.hint).toContain("postmap -c /etc/postfix -q relayctl-doctor static:ok");
  });

  test("postconf stopping at the same setting gets the same fix (its fatal line carries its path)", () => {
    const refused = refusedSetting("/usr/sbin/postconf: fatal: bad boolean configuration: smtputf8_enable = maybe\n", MAIN_CF)!;
    expect(refused.line).toBe("postconf: fatal: bad boolean configuration: smtputf8_enable = maybe");
    const v = settingVerdict("postfix.postconf", "doctor cannot check main.cf", "/etc/postfix", MAIN_CF, refused);
    expect(v.message).toStartWith("/etc/postfix/main.cf:4 sets smtputf8_enable, which postconf refuses, so doctor cannot check main.cf");
    expect(v.hint).toContain("postconf -c /etc/postfix -X smtputf8_enable");
  });

  test("reinstall only for a binary that does not run: no fatal line, a crash, a hang", () => {
    for (const o of [
      { code: 127, stderr: "/usr/sbin/postmap: error while loading shared libraries: libpostfix-util.so.1: cannot open shared object file\n" },
      { code: -1, stderr: "EACCES" },
      { code: 0, stdout: "garbage\n" },
      { code: -1, timedOut: true },
    ]) {
      const v = run(o);
      expect(v.status).toBe("fail");
      expect(v.hint).toBe("reinstall Postfix (apt-get install --reinstall postfix)");
    }
  });
});

describe("server.config", () => {
  test("no config file: fails with what `relayctl server` says; an existing one passes", () => {
    const dir = mkdtempSync(join(tmpdir(), "relayctl-doctor-config-"));
    try {
      const missing = join(dir, "server.toml");
      const v = configCheck(missing);
      expect(v.status).toBe("fail");
      expect(v.message).toContain(`no server config at ${missing}, so the server does not start`);
      expect(v.hint).toContain("install.sh server");
      writeFileSync(missing, "");
      expect(configCheck(missing).status).toBe("pass");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
