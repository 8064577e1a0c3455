/**
 * `relayctl doctor` against real Postfix configuration directories (read through the real
 * postconf), a private running Postfix for the SMTP probe, and a running relayctl server.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { DEFAULT_SERVER_CONFIG } from "../../src/lib/config.ts";
import { createNetwork, freePort, postmap, requireE2E, run, startPostfix, tmpDir, which, type Postfix, type RunResult, type TmpDir } from "./harness.ts";
import { enrollmentArgv } from "./relayctl.ts";

const ROOT = resolve(import.meta.dir, "../..");
const BIN = join(ROOT, "dist", "relayctl");
const PREFIX = "rlcd";
const STATUSES = ["pass", "warn", "fail"];

type Check = { id: string; status: string; message: string; hint?: string };
type Report = { ok: boolean; checks: Check[] };

/** Checks the documented --json shape exactly: no missing, extra or mistyped keys. */
function validateReport(value: unknown): Report {
  const r = value as Record<string, unknown>;
  expect(Object.keys(r).sort()).toEqual(["checks", "ok"]);
  expect(typeof r.ok).toBe("boolean");
  expect(Array.isArray(r.checks)).toBe(true);
  for (const c of r.checks as Record<string, unknown>[]) {
    for (const k of Object.keys(c)) expect(["id", "status", "message", "hint"]).toContain(k);
    expect(typeof c.id).toBe("string");
    expect(c.id as string).toMatch(/^[a-z]+(\.[a-z_]+)+$/);
    expect(STATUSES).toContain(c.status as string);
    expect(typeof c.message).toBe("string");
    if ("hint" in c) expect(typeof c.hint).toBe("string");
  }
  const report = r as unknown as Report;
  expect(report.ok).toBe(!report.checks.some((c) => c.status === "fail"));
  return report;
}

async function relayctl(args: string[]): Promise<RunResult> {
  return run([BIN, ...args], { timeoutMs: 60_000 });
}

/** Runs doctor with --json; returns the exit code, the validated report and a lookup by id. */
async function doctorJson(args: string[]): Promise<{ code: number; report: Report; check: (id: string) => Check; raw: RunResult }> {
  const raw = await relayctl(["doctor", "--json", ...args]);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.stdout);
  } catch {
    throw new Error(`doctor printed no JSON (exit ${raw.code}):\n${raw.stdout}\n${raw.stderr}`);
  }
  const report = validateReport(parsed);
  const check = (id: string): Check => {
    const c = report.checks.find((x) => x.id === id);
    if (!c) throw new Error(`no check ${id} in ${JSON.stringify(report, null, 2)}`);
    return c;
  };
  return { code: raw.code, report, check, raw };
}

describe.skipIf(!requireE2E())("relayctl doctor", () => {
  let dir: TmpDir;
  let pf: Postfix;
  let smtp: string;
  let mapPath: string;
  let serverToml: string;
  let server: ReturnType<typeof Bun.spawn> | undefined;
  let apiPort: number;
  let copies = 0;

  beforeAll(async () => {
    if (!existsSync(BIN)) {
      const b = await run([process.execPath, "build.ts"], { timeoutMs: 120_000, env: { PWD: ROOT } });
      if (b.code !== 0 || !existsSync(BIN)) throw new Error(`build failed:\n${b.stdout}${b.stderr}`);
    }
    dir = tmpDir(`${PREFIX}-`);
    mkdirSync(join(dir.path, "map"), { mode: 0o755 });
    mapPath = join(dir.path, "map", "clients");
    writeFileSync(mapPath, "");
    await postmap("hash", mapPath);
    smtp = `127.0.0.1:${freePort()}`;
    pf = await startPostfix({ dir: join(dir.path, "pf"), mapPath, mapType: "hash", listen: smtp });
    apiPort = freePort();
    serverToml = join(dir.path, "server.toml");
    writeFileSync(serverToml, [
      `listen = "127.0.0.1:${apiPort}"`,
      `public_url = "https://127.0.0.1:${apiPort}"`,
      `state_dir = "${join(dir.path, "state")}"`,
      `map = "${mapPath}"`,
      `map_type = "hash"`,
      "",
    ].join("\n"));
  }, 120_000);

  afterAll(async () => {
    if (server) {
      process.kill(server.pid, "SIGTERM");
      const exited = await Promise.race([server.exited, Bun.sleep(5_000).then(() => null)]);
      if (exited === null) process.kill(server.pid, "SIGKILL");
    }
    await pf?.stop().catch(() => {});
    dir?.remove();
  }, 30_000);

  /** A copy of the live config directory with main.cf edited by `edit`. */
  function brokenCopy(edit: (mainCf: string) => string): string {
    const copy = join(dir.path, `copy${copies++}`);
    mkdirSync(copy);
    for (const f of ["main.cf", "master.cf"]) cpSync(join(pf.configDir, f), join(copy, f));
    writeFileSync(join(copy, "main.cf"), edit(readFileSync(join(copy, "main.cf"), "utf8")));
    return copy;
  }

  const withMynetworks = (value: string) => (cf: string) => cf.replace(/^mynetworks = .*$/m, value);
  const withRelay = (value: string) => (cf: string) => cf.replace(/^smtpd_relay_restrictions = .*$/m, value);

  test("the live good setup passes, except that the server is not started yet: a failure on the mail host", async () => {
    const { code, report, check } = await doctorJson(["--config", serverToml, "--postfix-dir", pf.configDir]);
    expect(code, JSON.stringify(report, null, 2)).toBe(1);
    expect(report.ok).toBe(false);
    expect(report.checks.filter((c) => c.status === "fail").map((c) => c.id)).toEqual(["server.health"]);
    for (const id of ["postfix.postmap", "postfix.postconf", "postfix.version", "map.type", "postfix.hook", "postfix.relay_restrictions", "map.files", "map.fresh", "map.permissions", "map.lookup"]) {
      expect(check(id).status, `${id}: ${check(id).message}`).toBe("pass");
    }
    expect(check("postfix.hook").hint).toContain("postscreen");
    expect(check("server.tls").status).toBe("warn");
    expect(check("server.health").status).toBe("fail");
    expect(check("server.health").hint).toStartWith("systemctl start relayctl");
  }, 60_000);

  test("human output: PASS/WARN/FAIL lines, indented exact fixes, no colour off a TTY", async () => {
    const copy = brokenCopy(withMynetworks("mynetworks = 127.0.0.0/8"));
    const r = await relayctl(["doctor", "--config", serverToml, "--postfix-dir", copy]);
    expect(r.code).toBe(1);
    expect(r.stdout).not.toContain("\x1b[");
    expect(r.stdout).toMatch(/^PASS {2}postfix\.postconf /m);
    expect(r.stdout).toMatch(/^FAIL {2}postfix\.hook /m);
    expect(r.stdout).toContain(`fix: postconf -c ${copy} -e 'mynetworks = 127.0.0.0/8 hash:${mapPath}'`);
    expect(r.stderr).toContain("postfix.hook");
    expect(r.stderr).not.toMatch(/\n\s+at /);
  }, 60_000);

  const cases: { name: string; edit: (cf: string) => string; id: string; status: string; hint?: (copy: string) => string; message?: string }[] = [
    { name: "map missing from mynetworks", edit: withMynetworks("mynetworks = 127.0.0.0/8 [::1]/128"), id: "postfix.hook", status: "fail", hint: (c) => `postconf -c ${c} -e 'mynetworks = 127.0.0.0/8 [::1]/128 hash:${"MAP"}'` },
    { name: "map only on a continuation line", edit: withMynetworks("mynetworks = 127.0.0.0/8,\n    [::1]/128\n\thash:MAP"), id: "postfix.hook", status: "pass" },
    { name: "map via a $variable", edit: withMynetworks("relayctl_clients = hash:MAP\nmynetworks = 127.0.0.0/8 ${relayctl_clients}"), id: "postfix.hook", status: "pass" },
    { name: "commented-out line", edit: withMynetworks("#mynetworks = hash:MAP"), id: "postfix.hook", status: "fail", message: "commented out" },
    { name: "wrong table type", edit: withMynetworks("mynetworks = 127.0.0.0/8 btree:MAP"), id: "postfix.hook", status: "fail", hint: (c) => `postconf -c ${c} -e 'mynetworks = 127.0.0.0/8 hash:MAP'` },
    { name: "relay restrictions without permit_mynetworks", edit: withRelay("smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination"), id: "postfix.relay_restrictions", status: "fail", hint: (c) => `postconf -c ${c} -e 'smtpd_relay_restrictions = permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination'` },
    { name: "check_client_access hook instead of mynetworks", edit: (cf) => withRelay("smtpd_relay_restrictions = check_client_access hash:MAP, reject_unauth_destination")(withMynetworks("mynetworks = 127.0.0.0/8")(cf)), id: "postfix.relay_restrictions", status: "pass" },
    { name: "an open-relay network in mynetworks", edit: withMynetworks("mynetworks = 0.0.0.0/0 hash:MAP"), id: "postfix.mynetworks_broad", status: "warn", hint: (c) => `postconf -c ${c} -e 'mynetworks = hash:MAP'` },
  ];

  for (const c of cases) {
    test(`broken copy: ${c.name} -> ${c.id} ${c.status}`, async () => {
      const copy = brokenCopy((cf) => c.edit(cf).replaceAll("MAP", mapPath));
      const { code, check, report } = await doctorJson(["--config", serverToml, "--postfix-dir", copy]);
      const got = check(c.id);
      expect(got.status, JSON.stringify(got)).toBe(c.status);
      expect(code).toBe(report.checks.some((x) => x.status === "fail") ? 1 : 0);
      if (c.status !== "fail") expect(check("postfix.hook").status).toBe("pass");
      if (c.hint) expect(got.hint).toContain(c.hint(copy).replaceAll("MAP", mapPath));
      if (c.message) expect(got.message).toContain(c.message);
      if (c.name.startsWith("check_client_access")) expect(check("postfix.hook").hint).toBeUndefined();
    }, 60_000);
  }

  test("postmap path missing: fail with the path that exists", async () => {
    const toml = join(dir.path, "badpostmap.toml");
    writeFileSync(toml, readFileSync(serverToml, "utf8") + `postmap = "${join(dir.path, "no", "postmap")}"\n`);
    const { code, check } = await doctorJson(["--config", toml, "--postfix-dir", pf.configDir]);
    expect(code).toBe(1);
    expect(check("postfix.postmap").status).toBe("fail");
    expect(check("postfix.postmap").hint).toContain(`postmap = "${which("postmap")}"`);
  }, 60_000);

  test("a main.cf setting postmap refuses: postfix.postmap names file:line, and its fix (not a reinstall) makes it pass", async () => {
    const copy = brokenCopy((cf) => `${cf}smtputf8_enable = maybe\n`);
    const line = readFileSync(join(copy, "main.cf"), "utf8").split("\n").indexOf("smtputf8_enable = maybe") + 1;
    const { code, check } = await doctorJson(["--config", serverToml, "--postfix-dir", copy]);
    expect(code).toBe(1);
    const got = check("postfix.postmap");
    expect(got.status).toBe("fail");
    expect(got.message).toContain(`${copy}/main.cf:${line} sets smtputf8_enable`);
    expect(got.message).toContain("postmap: fatal: bad boolean configuration: smtputf8_enable = maybe");
    expect(got.hint).not.toContain("reinstall");
    // postconf stops at the same setting: same fix there, not "check --postfix-dir".
    expect(check("postfix.postconf").message).toContain(`${copy}/main.cf:${line} sets smtputf8_enable, which postconf refuses`);
    expect(check("postfix.postconf").hint).toBe(got.hint!);
    const fix = got.hint!.split("\n").find((l) => l.startsWith("postconf "));
    expect(fix).toBe(`postconf -c ${copy} -X smtputf8_enable`);
    const pasted = await run(["sh", "-c", fix!]);
    expect(pasted.code, pasted.stderr).toBe(0);
    const after = await doctorJson(["--config", serverToml, "--postfix-dir", copy]);
    expect(after.check("postfix.postmap").status).toBe("pass");
    expect(after.check("map.lookup").status).toBe("pass");
  }, 60_000);

  test("no server.toml: server.config fails with what `relayctl server` says, the other checks still run", async () => {
    if (existsSync(DEFAULT_SERVER_CONFIG)) throw new Error(`${DEFAULT_SERVER_CONFIG} exists on this machine: this test needs it absent`);
    const server = await relayctl(["server"]);
    expect(server.code).toBe(2);
    const { code, check } = await doctorJson(["--postfix-dir", pf.configDir]);
    expect(code).toBe(1);
    const got = check("server.config");
    expect(got.status).toBe("fail");
    expect(got.message).toStartWith(`no server config at ${DEFAULT_SERVER_CONFIG}, so the server does not start`);
    expect(server.stderr).toBe(`relayctl: ${got.message.split("; ")[0]}: ${got.hint}\n`);
    expect(check("postfix.postconf").status).toBe("pass");
  }, 60_000);

  test("usage errors exit 2", async () => {
    expect((await relayctl(["doctor", "--postfix-dir", join(dir.path, "nope")])).code).toBe(2);
    expect((await relayctl(["doctor", "--config", serverToml, "--smtp", "not a host"])).code).toBe(2);
    expect((await relayctl(["doctor", "--client-config", join(dir.path, "nope.toml")])).code).toBe(2);
    expect((await relayctl(["doctor", "--bogus"])).code).toBe(2);
  }, 60_000);

  describe("with a running relayctl server", () => {
    const clientToml = (name: string) => join(dir.path, `${name}.toml`);

    async function enroll(name: string): Promise<void> {
      const add = await relayctl(["server", "add", name, "--config", serverToml, "--allow", "127.0.0.1/32"]);
      expect(add.code, add.stderr).toBe(0);
      const r = await relayctl([...enrollmentArgv(add.stdout), "--config", clientToml(name)]);
      expect(r.code, r.stderr).toBe(0);
    }

    beforeAll(async () => {
      server = Bun.spawn([BIN, "server", "--config", serverToml], { stdin: "ignore", stdout: "ignore", stderr: Bun.file(join(dir.path, "server.log")) });
      let up = false;
      for (let i = 0; i < 100 && !up; i++) {
        up = await fetch(`https://127.0.0.1:${apiPort}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit).then((r) => r.ok, () => false);
        if (!up) await Bun.sleep(100);
      }
      if (!up) throw new Error(`relayctl server did not come up:\n${readFileSync(join(dir.path, "server.log"), "utf8")}`);
      await enroll("good");
      await enroll("gone");
      const lease = await relayctl(["client", "--config", clientToml("good"), "--ip", "127.0.0.1"]);
      expect(lease.code, lease.stderr).toBe(0);
    }, 60_000);

    test("mail host: listen held by the server, /healthz ok, live lease found by postmap -q; the lease on loopback fails", async () => {
      const { code, check, report } = await doctorJson(["--config", serverToml, "--postfix-dir", pf.configDir]);
      expect(code, JSON.stringify(report, null, 2)).toBe(1);
      // A test setup leases loopback; on a mail host that is the address a local proxy forwards every client from.
      expect(report.checks.filter((c) => c.status !== "pass").map((c) => c.id)).toEqual(["leases.local_address"]);
      expect(check("leases.local_address").message).toContain("the lease of good on 127.0.0.1 is an address of this host (lo)");
      expect(check("leases.local_address").hint).toContain(`relayctl server revoke good --config ${serverToml}`);
      expect(check("leases.shared_address").status).toBe("pass");
      expect(check("server.listen").message).toContain("held by the running relayctl server");
      expect(check("server.health").status).toBe("pass");
      expect(check("server.tls").status).toBe("pass");
      expect(check("server.tls_expiry").status).toBe("pass");
      expect(check("map.lookup").message).toContain("127.0.0.1");
      expect(check("map.lookup").status).toBe("pass");
    }, 60_000);

    test("leases on a bridge address of this host fail; two clients on one address warn", async () => {
      const net = await createNetwork(PREFIX);
      const extra = ["bridged", "natted1", "natted2"];
      try {
        const lease = async (name: string, allow: string, ip: string) => {
          const add = await relayctl(["server", "add", name, "--config", serverToml, "--allow", allow]);
          expect(add.code, add.stderr).toBe(0);
          const r = await relayctl([...enrollmentArgv(add.stdout), "--config", clientToml(name)]);
          expect(r.code, r.stderr).toBe(0);
          const got = await relayctl(["client", "--config", clientToml(name), "--ip", ip]);
          expect(got.code, got.stderr).toBe(0);
        };
        await lease("bridged", `${net.hostIp}/32`, net.hostIp);
        await lease("natted1", "198.18.0.0/24", "198.18.0.77");
        await lease("natted2", "198.18.0.0/24", "198.18.0.77");
        const { code, check } = await doctorJson(["--config", serverToml, "--postfix-dir", pf.configDir]);
        expect(code).toBe(1);
        const local = check("leases.local_address");
        expect(local.status).toBe("fail");
        expect(local.message).toContain(`the lease of bridged on ${net.hostIp} is an address of this host (${net.bridge})`);
        expect(local.message).not.toContain("natted");
        expect(local.hint).toContain(`relayctl server revoke bridged --config ${serverToml}`);
        const shared = check("leases.shared_address");
        expect(shared.status).toBe("warn");
        expect(shared.message).toStartWith("clients natted1, natted2 share 198.18.0.77");
      } finally {
        for (const name of extra) await relayctl(["server", "revoke", name, "--config", serverToml]);
        await net.destroy();
      }
      // Gone with the clients: only the loopback lease of good is left.
      const after = await doctorJson(["--config", serverToml, "--postfix-dir", pf.configDir]);
      expect(after.check("leases.shared_address").status).toBe("pass");
      expect(after.check("leases.local_address").message).not.toContain("bridged");
    }, 120_000);

    test("good client: token, pin, address, lease, and the SMTP probe relays", async () => {
      const { code, check, report } = await doctorJson(["--client-config", clientToml("good"), "--smtp", smtp]);
      expect(code, JSON.stringify(report, null, 2)).toBe(0);
      expect(report.checks.some((c) => c.id.startsWith("postfix."))).toBe(false);
      for (const id of ["client.permissions", "client.config", "client.reachable", "client.pin", "client.token", "client.address", "client.lease", "client.smtp"]) {
        expect(check(id).status, `${id}: ${check(id).message}`).toBe("pass");
      }
      expect(check("client.address").message).toContain("127.0.0.1");
    }, 60_000);

    test("loose client config mode fails with the chmod fix", async () => {
      const loose = clientToml("loose");
      cpSync(clientToml("good"), loose);
      await run(["chmod", "644", loose]);
      const { code, check } = await doctorJson(["--client-config", loose]);
      expect(code).toBe(1);
      expect(check("client.permissions").hint).toBe(`chmod 600 ${loose}`);
    }, 60_000);

    test("wrong pin: fails before the token is sent", async () => {
      const bad = clientToml("badpin");
      writeFileSync(bad, readFileSync(clientToml("good"), "utf8").replace(/pin = ".*"/, `pin = "sha256:${"0".repeat(64)}"`), { mode: 0o600 });
      const { code, check, report } = await doctorJson(["--client-config", bad]);
      expect(code).toBe(1);
      expect(check("client.pin").status).toBe("fail");
      expect(report.checks.some((c) => c.id === "client.token")).toBe(false);
    }, 60_000);

    test("revoked token: fails with the re-enroll hint; the SMTP probe is refused once the lease is gone", async () => {
      const revoke = await relayctl(["server", "revoke", "gone", "--config", serverToml]);
      expect(revoke.code, revoke.stderr).toBe(0);
      const { code, check } = await doctorJson(["--client-config", clientToml("gone")]);
      expect(code).toBe(1);
      expect(check("client.token").status).toBe("fail");
      expect(check("client.token").message).toContain("refused the token");
      expect(check("client.token").hint).toContain("enroll again");

      const release = await relayctl(["client", "--release", "--config", clientToml("good")]);
      expect(release.code, release.stderr).toBe(0);
      // The server rebuilds the map on release before answering, so Postfix sees it at once.
      const probe = await doctorJson(["--client-config", clientToml("good"), "--smtp", smtp]);
      expect(probe.code).toBe(1);
      expect(probe.check("client.smtp").status).toBe("fail");
      expect(probe.check("client.smtp").message).toContain("Relay access denied");
      expect(probe.check("client.lease").status).toBe("warn");
    }, 60_000);
  });
});
