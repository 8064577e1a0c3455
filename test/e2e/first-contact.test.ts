/**
 * What a new user meets first, against the compiled binary: help and errors
 * without escape codes, the generated man page and completions, the runtime's
 * own error text translated (DNS failures, an absent host, a refused port and
 * a port that never speaks TLS, each for real inside namespaces of the test's
 * own), the printed enrollment pasted as is, and "permission denied" for an
 * unreadable config.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { renderClientConfig } from "../../src/lib/config.ts";
import { freePort, requireE2E, run, runOk, which } from "./harness.ts";
import { BIN, ENROLLMENT, ensureBinary, startServer, writeServerConfig } from "./relayctl.ts";

const DIST = resolve(import.meta.dir, "../../dist");
let work: string;

beforeAll(async () => {
  await ensureBinary();
  work = mkdtempSync(join(tmpdir(), "relayctl-first-"));
  chmodSync(work, 0o755);
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Runs the binary with a clean environment plus env. */
function relayctl(args: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(BIN, args, { encoding: "utf8", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe("first contact", () => {
  test("--help of every level and errors carry no escape codes when piped", () => {
    for (const args of [["--help"], ["server", "--help"], ["client", "enroll", "--help"], ["completion", "--help"]]) {
      const r = relayctl(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("USAGE relayctl");
      expect(r.stdout).not.toContain("\x1b");
    }
    const err = relayctl(["server", "add"]);
    expect(err.code).toBe(2);
    expect(err.stderr).not.toContain("\x1b");
  });

  test("the build wrote the man page and completions that `relayctl completion` prints", () => {
    expect(relayctl(["completion", "bash"]).stdout).toBe(readFileSync(join(DIST, "completions/relayctl"), "utf8"));
    expect(relayctl(["completion", "zsh"]).stdout).toBe(readFileSync(join(DIST, "completions/_relayctl"), "utf8"));
    const page = readFileSync(join(DIST, "relayctl.1"), "utf8");
    expect(page).toContain('.SS "relayctl client enroll"');
    expect(page).toContain("\\fB\\-\\-token\\-file\\fR");
    const man = spawnSync("man", ["-l", join(DIST, "relayctl.1")], { encoding: "utf8", env: { ...process.env, MANWIDTH: "80", MAN_KEEP_FORMATTING: "" } });
    if (man.status === 0) expect(man.stdout).toContain("relayctl server add NAME");
  });

  test("an unreachable server is told in relayctl's words, not the runtime's", () => {
    const config = join(work, "unreachable.toml");
    writeFileSync(config, renderClientConfig({ server: "https://127.0.0.1:1", name: "office", token: "0123456789abcdef.x" }));
    const r = relayctl(["client", "status", "--config", config]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("relayctl: cannot reach https://127.0.0.1:1: connection refused: check that the server runs and listens on that port, and that no firewall rejects it\n");
  });

  test("a user who cannot read the client config is told permission denied, not 'no client config'", () => {
    const config = join(work, "client.toml");
    writeFileSync(config, renderClientConfig({ server: "https://127.0.0.1:1", name: "office", token: "0123456789abcdef.x" }));
    chmodSync(config, 0o600);
    // A copy nobody can execute: the checkout may sit under a directory only root can enter.
    const bin = join(work, "relayctl");
    copyFileSync(BIN, bin);
    chmodSync(bin, 0o755);
    const r = spawnSync("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin, "client", "--config", config], { encoding: "utf8", env: { PATH: "/usr/bin:/bin" } });
    expect(r.stderr).toStartWith(`relayctl: permission denied reading ${config}: `);
    expect(r.status).toBe(2);
  });
});

describe("the enrollment as printed", () => {
  test("the enroll line reads the token from stdin: the token: line piped in enrolls, and no argv holds the token", async () => {
    const dir = mkdtempSync(join(work, "paste-"));
    const port = freePort();
    const url = `https://127.0.0.1:${port}`;
    const config = writeServerConfig(dir, { listen: `127.0.0.1:${port}`, public_url: url, state_dir: join(dir, "state"), map: join(dir, "clients"), lookup: "policy", policy_socket: join(dir, "policy") });
    const server = await startServer(config, url);
    try {
      const add = relayctl(["server", "add", "pasted", "--config", config]);
      expect(add.code, add.stderr).toBe(0);
      const m = ENROLLMENT.exec(add.stdout)!;
      expect(m[1]).not.toContain(m[2]!);
      const tokenLine = add.stdout.split("\n")[1]!;
      // The line exactly as printed (split as a shell would: no quoting in it), the token: line on stdin.
      const r = spawnSync(BIN, [...m[1]!.split(" ").slice(1), "--config", join(dir, "client.toml")], { input: `${tokenLine}\n`, encoding: "utf8" });
      expect(r.stderr).not.toContain("relayctl:");
      expect(r.status).toBe(0);
      expect(r.stdout).toStartWith("enrolled pasted: wrote ");
      expect(readFileSync(join(dir, "client.toml"), "utf8")).toContain(`token = "${m[2]}"`);
    } finally {
      await server.stop();
    }
  });
});

// Inside namespaces of this test's own: "A" has loopback and a veth to "B" (198.18.77.2/24,
// nothing at .9), and its own resolv.conf naming 127.0.0.1 in A, where a test may run a name
// server. No packet leaves A and B; no DNS query reaches the machine's resolver.
const e2e = requireE2E();
describe.skipIf(!e2e)("network errors for real: DNS, an absent host, a refused port, a port without TLS", () => {
  const nsA = `rlcfa-${process.pid}`;
  const nsB = `rlcfb-${process.pid}`;
  const absent = "198.18.77.9";
  const pin = `sha256:${"ab".repeat(32)}`;
  let dnsPid = 0;
  let silentPid = 0;
  let dir = "";

  // Never pid 0: kill(0) would signal this whole process group.
  const stopPid = (pid: number) => {
    if (pid <= 0) return;
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "relayctl-neterr-"));
    const ip = which("ip")!;
    await runOk([ip, "netns", "add", nsA]);
    await runOk([ip, "netns", "add", nsB]);
    await runOk([ip, "-n", nsA, "link", "set", "lo", "up"]);
    await runOk([ip, "-n", nsA, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nsB]);
    await runOk([ip, "-n", nsA, "addr", "add", "198.18.77.2/24", "dev", "eth0"]);
    await runOk([ip, "-n", nsA, "link", "set", "eth0", "up"]);
    await runOk([ip, "-n", nsB, "link", "set", "eth0", "up"]);
    // `ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
    mkdirSync(`/etc/netns/${nsA}`, { recursive: true });
    writeFileSync(`/etc/netns/${nsA}/resolv.conf`, "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n");
    // A TCP port in A that takes connections and never answers.
    writeFileSync(join(dir, "silent.ts"), 'Bun.listen({ hostname: "127.0.0.1", port: 18999, socket: { data() {} } }); setTimeout(() => process.exit(0), 300_000);\n');
    silentPid = Bun.spawn([ip, "netns", "exec", nsA, process.execPath, join(dir, "silent.ts")], { stdio: ["ignore", "ignore", "inherit"] }).pid;
    for (const [name, server] of [["name", "https://relay.invalid:8443"], ["absent", `https://${absent}:8443`], ["silent", "https://127.0.0.1:18999"]]) {
      writeFileSync(join(dir, `${name}.toml`), renderClientConfig({ server, name: "office", token: "0123456789abcdef.x" }));
    }
  });

  afterAll(async () => {
    stopPid(dnsPid);
    stopPid(silentPid);
    const ip = which("ip")!;
    await run([ip, "netns", "del", nsA]);
    await run([ip, "netns", "del", nsB]);
    rmSync(`/etc/netns/${nsA}`, { recursive: true, force: true });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A name server on 127.0.0.1:53 in A: "nx" answers every query NXDOMAIN, "mute" never answers. */
  async function nameServer(kind: "nx" | "mute" | "none"): Promise<void> {
    stopPid(dnsPid);
    dnsPid = 0;
    if (kind === "none") return;
    const reply = kind === "nx" ? "const out = Buffer.from(m); out[2] = 0x81; out[3] = 0x83; s.send(out, r.port, r.address);" : "";
    writeFileSync(join(dir, "dns.ts"), `const s = require("node:dgram").createSocket("udp4"); s.on("message", (m, r) => { ${reply} }); s.bind(53, "127.0.0.1", () => console.log("up")); setTimeout(() => process.exit(0), 120_000);\n`);
    const p = Bun.spawn([which("ip")!, "netns", "exec", nsA, process.execPath, join(dir, "dns.ts")], { stdout: "pipe", stderr: "inherit" });
    dnsPid = p.pid;
    const first = await p.stdout.getReader().read();
    if (new TextDecoder().decode(first.value) !== "up\n") throw new Error("the test name server did not start");
  }

  /** `relayctl client status` and `client enroll --pin` inside A: both go through name, connect and TLS. */
  async function inA(config: string, server: string): Promise<{ status: string; enroll: string }> {
    const ip = which("ip")!;
    const [status, enroll] = await Promise.all([
      run([ip, "netns", "exec", nsA, BIN, "client", "status", "--config", join(dir, `${config}.toml`)], { timeoutMs: 40_000 }),
      run([ip, "netns", "exec", nsA, BIN, "client", "enroll", server, "--name", "office", "--token", "0123456789abcdef.x", "--pin", pin, "--config", join(dir, "enrolled.toml")], { timeoutMs: 40_000 }),
    ]);
    expect([status.code, enroll.code]).toEqual([1, 1]);
    return { status: status.stderr, enroll: enroll.stderr };
  }

  const dnsCases: ["none" | "nx" | "mute", string, string][] = [
    ["none", "no name server: DNS failed, said as DNS", "DNS lookup failed for now: check this host's DNS; the next run retries"],
    ["nx", "a name that does not exist (NXDOMAIN): does not resolve, not connection refused", "the host name does not resolve: check the server URL and this host's DNS"],
    ["mute", "a name server that never answers: a DNS timeout, not a TLS handshake timeout", "the DNS lookup got no answer in time: check the name servers in /etc/resolv.conf and that this host reaches them"],
  ];
  for (const [kind, title, why] of dnsCases) {
    test(title, async () => {
      await nameServer(kind);
      const r = await inA("name", "https://relay.invalid:8443");
      expect(r.status).toBe(`relayctl: cannot reach https://relay.invalid:8443: ${why}\n`);
      expect(r.enroll).toBe(`relayctl: cannot read the TLS certificate of relay.invalid:8443: ${why}\n`);
    }, 60_000);
  }

  test("an address where nothing answers: no route, not connection refused", async () => {
    const r = await inA("absent", `https://${absent}:8443`);
    const why = "no route to the host (nothing answers at that address): check the server URL's address and this host's network and routes\n";
    expect(r.status).toBe(`relayctl: cannot reach https://${absent}:8443: ${why}`);
    expect(r.enroll).toBe(`relayctl: cannot read the TLS certificate of ${absent}:8443: ${why}`);
  }, 60_000);

  test("a port that takes the connection and never speaks TLS: said so at enrollment", async () => {
    const r = await inA("silent", "https://127.0.0.1:18999");
    expect(r.enroll).toBe("relayctl: cannot read the TLS certificate of 127.0.0.1:18999: port 18999 took the connection but sent no TLS handshake within 10000 ms: check that the URL names the relayctl server's HTTPS port (listen in server.toml), not another service\n");
    expect(r.status).toStartWith("relayctl: cannot reach https://127.0.0.1:18999: no answer in time");
  }, 60_000);
});
