/**
 * Routers and NAS boxes as clients (issue 12): the real dyndns2 clients a
 * sysadmin would point at relayctl (ddclient 3.10, inadyn 2.10, GNU wget with
 * its 401 challenge flow, curl) each get a lease from inside their own
 * namespace, Postfix then relays for that address, a wrong password leases
 * nothing, and no password reaches the server's log, the audit log or state.
 *
 * Safety: the clients run only inside namespaces whose sole route is
 * 198.18.0.0/24, and every server they are given is an IP literal with a
 * port there (ddclient 3.10 sends credentials to members.dyndns.org when
 * server= has no dot).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { e2eRequired, requireE2E, which, type Host, type RunResult } from "./harness.ts";
import { relayctl, stage, type Stage } from "./relayctl.ts";

setDefaultTimeout(60_000);
const e2e = requireE2E();
const missing = ["ddclient", "inadyn", "wget", "curl"].filter((t) => !which(t));
if (e2e && missing.length && e2eRequired()) throw new Error(`${missing.join(", ")} missing: as root, test/prereqs.sh installs them`);
const enabled = e2e && missing.length === 0;

/** A --dyndns client: its name and password as `server add --dyndns` printed them. */
interface Device {
  name: string;
  password: string;
}

describe.skipIf(!enabled)("dyndns2 clients: ddclient, inadyn, wget, curl", () => {
  let s: Stage;
  let cert: string;
  let host: string;
  let h3: Host;
  let h4: Host;
  /** Every password used, right or wrong: none may show up in logs or state. */
  const secrets: string[] = [];

  /** `server add NAME --dyndns`, read back from its output as a sysadmin would. */
  const addDevice = async (name: string): Promise<Device> => {
    const r = await relayctl(["server", "add", name, "--dyndns", "--config", s.config]);
    expect(r.code).toBe(0);
    const password = /^Password: (\S+)$/m.exec(r.stdout)?.[1];
    expect(/^Username: (\S+)$/m.exec(r.stdout)?.[1]).toBe(name);
    expect(r.stdout).toContain(`https://${host}/nic/update?`);
    expect(r.stdout).not.toContain("relayctl client enroll");
    secrets.push(password!, password!.split(".")[1]!, Buffer.from(`${name}:${password}`).toString("base64"));
    return { name, password: password! };
  };

  /** A password of the right shape that no client holds. */
  const wrong = (d: Device): Device => {
    const password = `${d.password.split(".")[0]}.${"x".repeat(43)}`;
    secrets.push(password, Buffer.from(`${d.name}:${password}`).toString("base64"));
    return { name: d.name, password };
  };

  const leasesOf = async (name: string): Promise<string[]> => {
    const r = await relayctl(["server", "list", "--json", "--config", s.config]);
    const c = (JSON.parse(r.stdout).clients as { name: string; leases: { ip: string }[] }[]).find((x) => x.name === name)!;
    return c.leases.map((l) => l.ip);
  };

  const ttlOf = async (name: string): Promise<number> => {
    const r = await relayctl(["server", "list", "--json", "--config", s.config]);
    return (JSON.parse(r.stdout).clients as { name: string; ttl: number }[]).find((x) => x.name === name)!.ttl;
  };

  /** A file only root reads: the clients' configs hold the password. */
  const privateFile = (name: string, text: string): string => {
    const path = join(s.tmp.path, name);
    writeFileSync(path, text, { mode: 0o600 });
    return path;
  };

  /** The script ddclient's use=cmd and inadyn's checkip-command run: prints the namespace's address. */
  const printIp = (h: Host): string => {
    const path = join(s.tmp.path, `print-ip-${h.ip}`);
    writeFileSync(path, `#!/bin/sh\necho ${h.ip}\n`);
    chmodSync(path, 0o755);
    return path;
  };

  let runs = 0;
  const ddclient = (h: Host, d: Device): Promise<RunResult> => {
    const n = ++runs;
    const conf = privateFile(
      `ddclient-${n}.conf`,
      [
        "ssl=yes",
        `ssl_ca_file=${cert}`,
        `use=cmd, cmd=${printIp(h)}`,
        "protocol=dyndns2",
        `server=${host}`,
        `login=${d.name}`,
        `password='${d.password}'`,
        `${d.name}.relayctl.test`,
        "",
      ].join("\n"),
    );
    // A fresh cache each run: ddclient skips an update its cache says was done or failed lately.
    const cache = join(s.tmp.path, `ddclient-${n}.cache`);
    return h.run([which("ddclient")!, "-daemon=0", "-foreground", "-verbose", "-noquiet", "-file", conf, "-cache", cache], { timeoutMs: 30_000 });
  };

  const inadyn = (h: Host, d: Device): Promise<RunResult> => {
    const n = ++runs;
    const conf = privateFile(
      `inadyn-${n}.conf`,
      [
        "period = 300",
        `ca-trust-file = ${cert}`,
        "custom relayctl {",
        "  ssl = true",
        `  username = ${d.name}`,
        `  password = ${d.password}`,
        `  checkip-command = "${printIp(h)}"`,
        `  ddns-server = "${host}"`,
        '  ddns-path = "/nic/update?hostname=%h&myip=%i"',
        `  hostname = ${d.name}.relayctl.test`,
        "}",
        "",
      ].join("\n"),
    );
    const cacheDir = join(s.tmp.path, `inadyn-${n}`);
    return h.run([which("inadyn")!, "--once", "--foreground", "--no-pidfile", "--cache-dir", cacheDir, "-f", conf, "-l", "debug"], { timeoutMs: 30_000 });
  };

  const wget = (h: Host, d: Device): Promise<RunResult> =>
    // -S prints the response headers: the 401 challenge, then the answer to the retry.
    h.run([which("wget")!, "-S", "-O", "-", "--tries=1", "--timeout=10", `--ca-certificate=${cert}`, `--user=${d.name}`, `--password=${d.password}`, `${s.url}/nic/update?hostname=${d.name}.relayctl.test&myip=${h.ip}`], { timeoutMs: 30_000 });

  const curl = (h: Host, d: Device, query = `?hostname=${d.name}.relayctl.test`): Promise<RunResult> =>
    h.run([which("curl")!, "-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert", cert, "-u", `${d.name}:${d.password}`, `${s.url}/nic/update${query}`], { timeoutMs: 30_000 });

  beforeAll(async () => {
    s = await stage({ prefix: "dyn", prepare: async (st) => st.writeConfig({ log_level: "debug" }) });
    cert = join(s.stateDir, "tls", "cert.pem");
    host = new URL(s.url).host;
    h3 = await s.net.addHost("h3", "198.18.0.4");
    h4 = await s.net.addHost("h4", "198.18.0.5");
  }, 120_000);
  afterAll(async () => {
    await s?.cleanup();
  });

  test("server add --dyndns gives a 26h ttl unless --ttl says otherwise", async () => {
    await addDevice("ttl-default");
    const r = await relayctl(["server", "add", "ttl-given", "--dyndns", "--ttl", "3d", "--config", s.config]);
    expect(r.stdout).toContain("lease ttl 3d");
    expect([await ttlOf("ttl-default"), await ttlOf("ttl-given")]).toEqual([26 * 3600, 3 * 86400]);
  });

  test("ddclient 3.10: a wrong password leases nothing; the right one leases and Postfix relays", async () => {
    const d = await addDevice("ddc");
    const bad = await ddclient(s.h1, wrong(d));
    expect(bad.stdout + bad.stderr).toContain("authorization failed");
    expect(await leasesOf("ddc")).toEqual([]);
    expect(await s.relays(s.h1)).toBe(false);

    const ok = await ddclient(s.h1, d);
    expect(ok.stdout + ok.stderr).toMatch(/SUCCESS:\s+updating ddc\.relayctl\.test: good: IP address set to 198\.18\.0\.2/);
    expect(await leasesOf("ddc")).toEqual([s.h1.ip]);
    expect(await s.relays(s.h1)).toBe(true);
  });

  test("inadyn 2.10 (custom provider, Host: without port): a wrong password exits as an auth failure; the right one leases", async () => {
    const d = await addDevice("ind");
    const bad = await inadyn(s.h2, wrong(d));
    expect({ code: bad.code, out: bad.stdout + bad.stderr }).toMatchObject({ code: 50, out: expect.stringContaining("Authentication failure") });
    expect(await leasesOf("ind")).toEqual([]);
    expect(await s.relays(s.h2)).toBe(false);

    const ok = await inadyn(s.h2, d);
    expect({ code: ok.code, out: ok.stdout + ok.stderr }).toMatchObject({ code: 0, out: expect.stringContaining(`Successful alias table update for ind.relayctl.test => new IP# ${s.h2.ip}`) });
    // inadyn dropped the port from Host:, and the door answered all the same.
    expect(ok.stdout + ok.stderr).toMatch(/^Host: 198\.18\.0\.1$/m);
    expect(await leasesOf("ind")).toEqual([s.h2.ip]);
    expect(await s.relays(s.h2)).toBe(true);
  });

  test("GNU wget sends the password only after the 401 challenge, and then leases", async () => {
    const d = await addDevice("wgt");
    const bad = await wget(h3, wrong(d));
    expect(bad.code).toBe(6); // wget: authentication failure
    expect(await leasesOf("wgt")).toEqual([]);
    expect(await s.relays(h3)).toBe(false);

    const ok = await wget(h3, d);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toBe(`good ${h3.ip}\n`);
    // The first answer is the challenge, the second the result.
    expect(ok.stderr).toMatch(/HTTP\/1\.1 401[\s\S]*WWW-Authenticate: Basic realm="relayctl"[\s\S]*HTTP\/1\.1 200/i);
    expect(await leasesOf("wgt")).toEqual([h3.ip]);
    expect(await s.relays(h3)).toBe(true);
  });

  test("curl: badauth for a wrong password, good then nochg, query-string credentials, offline=YES releases", async () => {
    const d = await addDevice("crl");
    const bad = await curl(h4, wrong(d));
    expect(bad.stdout).toBe("badauth\n\n401");
    expect(await leasesOf("crl")).toEqual([]);
    expect(await s.relays(h4)).toBe(false);

    expect((await curl(h4, d)).stdout).toBe(`good ${h4.ip}\n\n200`);
    expect(await s.relays(h4)).toBe(true);
    expect((await curl(h4, d, `?hostname=x&myip=${h4.ip}`)).stdout).toBe(`nochg ${h4.ip}\n\n200`);
    // FRITZ!Box-style: credentials in the URL, no Authorization header.
    const inQuery = await h4.run([which("curl")!, "-sS", "--max-time", "10", "--cacert", cert, `${s.url}/nic/update?myip=&username=${d.name}&password=${encodeURIComponent(d.password)}`], { timeoutMs: 30_000 });
    expect(inQuery.stdout).toBe(`nochg ${h4.ip}\n`);
    expect((await curl(h4, d, "?offline=YES")).stdout).toBe(`good ${h4.ip}\n\n200`);
    expect(await leasesOf("crl")).toEqual([]);
    expect(await s.relays(h4)).toBe(false);
    expect((await curl(h4, d, "?myip=198.18.0.99")).stdout).toBe("nohost\n\n403");
    expect(await leasesOf("crl")).toEqual([]);
  });

  test("server rotate --dyndns: the router's new password works, the old one is badauth", async () => {
    const d = await addDevice("rot");
    const r = await relayctl(["server", "rotate", "rot", "--dyndns", "--config", s.config]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("lease ttl 26h");
    const rotated = { name: "rot", password: /^Password: (\S+)$/m.exec(r.stdout)![1]! };
    secrets.push(rotated.password);
    expect((await curl(h4, d)).stdout).toBe("badauth\n\n401");
    expect((await curl(h4, rotated)).stdout).toBe(`good ${h4.ip}\n\n200`);
    expect(await leasesOf("rot")).toEqual([h4.ip]);
  });

  test("no password in the server's log, the audit log or state", async () => {
    expect(secrets.length).toBeGreaterThan(8);
    const audit = await relayctl(["server", "log", "--json", "--config", s.config]);
    expect(audit.code).toBe(0);
    // The refusals are there, so the check looks where a leak would be.
    expect(audit.stdout).toContain("unauthorized");
    const state = readdirSync(s.stateDir)
      .filter((f) => f.startsWith("state.db"))
      .map((f) => readFileSync(join(s.stateDir, f)).toString("latin1"))
      .join("\n");
    expect(state.length).toBeGreaterThan(0);
    const stderr = s.server!.stderr();
    expect(stderr).toContain("grant: wgt");
    for (const secret of secrets) {
      expect(stderr).not.toContain(secret);
      expect(audit.stdout).not.toContain(secret);
      expect(state).not.toContain(secret);
    }
  });
});
