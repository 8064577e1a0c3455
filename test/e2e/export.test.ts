/**
 * server.toml `export`: the live leases as OpenDKIM's InternalHosts, proved
 * with Debian's opendkim on a private config and miltertest asking it, over
 * the milter protocol, whether it signs a message from a client address.
 * relayctl rewrites the file and signals opendkim (reload = pkill -USR1);
 * a grant, a release and a revoke with no server running each reach
 * opendkim, and a failing reload leaves relaying alone and says degraded.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { appendFileSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { e2eRequired, requireE2E, run, runOk, which } from "./harness.ts";
import { BIN, onHost, relayctl, stage, type Stage } from "./relayctl.ts";

setDefaultTimeout(60_000);
const enabled = requireE2E();
const OPENDKIM = "/usr/sbin/opendkim";
const PKILL = "/usr/bin/pkill";
if (enabled && (!existsSync(OPENDKIM) || !which("miltertest") || !existsSync(PKILL)) && e2eRequired()) {
  throw new Error("opendkim, miltertest or pkill missing: as root, test/prereqs.sh installs them");
}

/**
 * A milter session as Postfix would open it for a message from PEER: prints
 * SIGNED when opendkim adds a DKIM-Signature (an InternalHosts client),
 * SKIPPED when it lets the message pass unsigned (opendkim accepts at end
 * of headers when the client is not internal and it only signs).
 */
const MILTER_SCRIPT = `
local conn = mt.connect("local:" .. os.getenv("SOCK"))
if conn == nil then error("cannot connect to opendkim") end
local function step(r)
  if r ~= nil then error(r) end
  if mt.getreply(conn) == SMFIR_ACCEPT then print("SKIPPED"); mt.disconnect(conn); os.exit(0) end
end
step(mt.conninfo(conn, "client.example", os.getenv("PEER")))
step(mt.mailfrom(conn, "nas@example.org"))
step(mt.rcptto(conn, "someone@example.net"))
step(mt.header(conn, "From", "nas@example.org"))
step(mt.header(conn, "Date", "Tue, 22 Dec 2009 13:04:12 -0800"))
step(mt.eoh(conn))
step(mt.bodystring(conn, "hello\\r\\n"))
if mt.eom(conn) ~= nil then error("eom") end
if mt.eom_check(conn, MT_HDRINSERT, "DKIM-Signature") then print("SIGNED") else print("UNSIGNED") end
mt.disconnect(conn)
`;

describe.skipIf(!enabled)("export to OpenDKIM's InternalHosts", () => {
  let s: Stage;
  let dir: string;
  let exportPath: string;
  let opendkim: ReturnType<typeof Bun.spawn> | undefined;
  let opendkimOut = "";

  const sock = () => join(dir, "opendkim.sock");
  const pidFile = () => join(dir, "opendkim.pid");

  /** Starts opendkim in the foreground and waits (bounded) for its socket. */
  async function startOpendkim(): Promise<void> {
    rmSync(sock(), { force: true });
    const proc = Bun.spawn([OPENDKIM, "-f", "-x", join(dir, "opendkim.conf")], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    opendkim = proc;
    opendkimOut = "";
    void (async () => {
      for await (const c of proc.stderr) opendkimOut += new TextDecoder().decode(c);
    })();
    for (let i = 0; i < 100 && !existsSync(sock()); i++) {
      if (proc.exitCode !== null) break;
      await Bun.sleep(100);
    }
    if (!existsSync(sock())) throw new Error(`opendkim did not start:\n${opendkimOut}`);
  }

  async function stopOpendkim(): Promise<void> {
    const proc = opendkim;
    opendkim = undefined;
    if (!proc || proc.exitCode !== null) return;
    proc.kill("SIGTERM");
    const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await proc.exited;
    clearTimeout(t);
  }

  /** What opendkim does with a message from peer: SIGNED or SKIPPED. */
  async function verdict(peer: string): Promise<string> {
    const r = await run(["miltertest", "-s", join(dir, "probe.lua")], { env: { SOCK: sock(), PEER: peer }, timeoutMs: 10_000 });
    const out = r.stdout.trim().split("\n").pop() ?? "";
    if (r.code !== 0 || !["SIGNED", "SKIPPED"].includes(out)) throw new Error(`miltertest for ${peer} failed (${r.code}): ${r.stdout}${r.stderr}`);
    return out;
  }

  /** Waits (bounded) until opendkim's verdict for peer is `want`: the rewrite and the reload signal take a moment. */
  async function eventually(peer: string, want: string): Promise<void> {
    let last = "";
    for (const deadline = Date.now() + 10_000; Date.now() < deadline; await Bun.sleep(200)) {
      last = await verdict(peer);
      if (last === want) return;
    }
    throw new Error(`opendkim says ${last} for ${peer}, not ${want}; export file:\n${existsSync(exportPath) ? readFileSync(exportPath, "utf8") : "(none)"}\n${opendkimOut}`);
  }

  const entries = (): string[] => readFileSync(exportPath, "utf8").split("\n").filter((l) => l && !l.startsWith("#"));

  beforeAll(async () => {
    s = await stage({
      prefix: "rcx",
      prepare: async (st) => {
        dir = st.tmp.path;
        exportPath = join(dir, "opendkim", "relayctl-hosts");
        await runOk(["openssl", "genrsa", "-out", join(dir, "dkim.key"), "2048"]);
        writeFileSync(join(dir, "probe.lua"), MILTER_SCRIPT);
        // Signs for example.org from InternalHosts only; the temp dir is under /tmp, which
        // opendkim would call unsafe for a key, hence RequireSafeKeys no.
        writeFileSync(
          join(dir, "opendkim.conf"),
          [
            "Mode s",
            "Domain example.org",
            "Selector relayctl",
            `KeyFile ${join(dir, "dkim.key")}`,
            "RequireSafeKeys no",
            `Socket local:${sock()}`,
            `PidFile ${pidFile()}`,
            `InternalHosts ${exportPath}`,
            "Syslog no",
            "UserID root",
            "",
          ].join("\n"),
        );
        appendFileSync(st.config, `export = [{ format = "lines", path = ${JSON.stringify(exportPath)}, static = ["127.0.0.1"], reload = [${JSON.stringify(PKILL)}, "-USR1", "-F", ${JSON.stringify(pidFile())}] }]\n`);
      },
    });
    // The server wrote the file at start (static entry only): opendkim can load it.
    expect(entries()).toEqual(["127.0.0.1"]);
    await startOpendkim();
    await s.enroll(s.h1, "h1");
    await s.enroll(s.h2, "h2");
  }, 180_000);
  afterAll(async () => {
    await stopOpendkim();
    await s?.cleanup();
  });

  test("a grant reaches opendkim: the leased address is signed for, others are not; static entries stay", async () => {
    expect(await verdict("198.18.0.2")).toBe("SKIPPED");
    expect((await onHost(s.h1, ["client", "--config", s.cfg("h1")])).code).toBe(0);
    await eventually("198.18.0.2", "SIGNED");
    expect(await verdict("198.18.0.3")).toBe("SKIPPED");
    expect(await verdict("127.0.0.1")).toBe("SIGNED");
    expect(await verdict("2001:db8::2")).toBe("SKIPPED");
    expect(entries()).toEqual(["127.0.0.1", "198.18.0.2"]);
    // Postfix relays by the lookup, as ever.
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.relays(s.h2)).toBe(false);
  });

  test("a release leaves the file and opendkim at once", async () => {
    expect((await onHost(s.h1, ["client", "--release", "--config", s.cfg("h1")])).code).toBe(0);
    await eventually("198.18.0.2", "SKIPPED");
    expect(entries()).toEqual(["127.0.0.1"]);
  });

  test("server log --client h1 --addresses and --export csv show the grant and the release", async () => {
    const h = await relayctl(["server", "log", "--client", "h1", "--addresses", "--json", "--config", s.config]);
    expect(h.code, h.stderr).toBe(0);
    expect(JSON.parse(h.stdout).addresses).toMatchObject([{ address: "198.18.0.2", grants: 1, live: false }]);
    const csv = await relayctl(["server", "log", "--export", "csv", "--client", "h1", "--config", s.config]);
    expect(csv.code, csv.stderr).toBe(0);
    const lines = csv.stdout.split("\r\n");
    expect(lines[0]).toBe("id,ts,event,client,ip,source,count,detail");
    expect(lines.slice(1, -1).map((l) => l.split(",").slice(2, 5).join(","))).toEqual(["add,h1,", "grant,h1,198.18.0.2", "release,h1,198.18.0.2"]);
    // Piped into a reader that stops early, the export ends instead of hanging.
    const head = await run(["sh", "-c", `${BIN} server log --export jsonl --config ${s.config} | head -c 1`], { timeoutMs: 10_000 });
    expect(head.stdout).toBe("{");
  });

  test("a failing reload leaves renewals and relaying alone and is reported as degraded, until it works again", async () => {
    await stopOpendkim();
    rmSync(pidFile(), { force: true });
    const r = await onHost(s.h2, ["client", "--config", s.cfg("h2")]);
    expect(r.code, r.stderr).toBe(0);
    expect(await s.relays(s.h2)).toBe(true);
    let degraded: string[] = [];
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && !degraded.length; await Bun.sleep(200)) {
      degraded = JSON.parse((await relayctl(["server", "status", "--json", "--config", s.config])).stdout).status.degraded;
    }
    expect(degraded.join("\n")).toContain(`export ${exportPath}: reload command ${PKILL} -USR1 -F ${pidFile()} failed`);
    // The file itself is current; opendkim, started again, reads it.
    expect(entries()).toEqual(["127.0.0.1", "198.18.0.3"]);
    await startOpendkim();
    expect(await verdict("198.18.0.3")).toBe("SIGNED");
    // The export check retries the reload every 2 s: the degraded reason goes.
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && degraded.length; await Bun.sleep(200)) {
      degraded = JSON.parse((await relayctl(["server", "status", "--json", "--config", s.config])).stdout).status.degraded;
    }
    expect(degraded).toEqual([]);
  });

  test("with no server running, server revoke rewrites the file and tells opendkim", async () => {
    expect(await s.server!.stop()).toBe(0);
    s.server = undefined;
    const r = await relayctl(["server", "revoke", "h2", "--config", s.config]);
    expect(r.code, r.stderr).toBe(0);
    await eventually("198.18.0.3", "SKIPPED");
    expect(entries()).toEqual(["127.0.0.1"]);
  });
});
