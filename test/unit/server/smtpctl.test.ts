// How lookup = "opensmtpd" reloads smtpd: directly as root, or through
// relayctl-smtpctl.socket for a server that is not root; refusals end a start.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { ExitCode, type ExitCodeValue } from "../../../src/lib/errors.ts";
import { StateLock } from "../../../src/server/lock.ts";
import { askSmtpctlSocket, SMTPCTL_SOCKET, smtpctlReload } from "../../../src/server/lookups/opensmtpd.ts";
import { LiveIndex } from "../../../src/server/live.ts";
import { startServer } from "../../../src/server/server.ts";
import { FakeClock, relayError, removeTempDirs, silenceLogger, tempDir, writeServerConfig } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

/** A stand-in for relayctl-smtpctl.socket: each connection gets `answer` (or its current value) and is closed, as smtpctl's exit closes it. */
async function fakeSocket(answer: string | (() => string)): Promise<{ path: string; connections: () => number; close: () => Promise<void> }> {
  const path = join(tempDir(), "smtpctl.sock");
  let n = 0;
  const server: Server = createServer((c) => {
    n++;
    c.end(typeof answer === "string" ? answer : answer());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, connections: () => n, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

function opensmtpdConfig(extra: string) {
  const dir = tempDir();
  return loadServerConfig(writeServerConfig(dir, { postmap: "/bin/true", extra: `lookup = "opensmtpd"\nsmtpd_table = "${join(dir, "smtpd", "clients")}"\n${extra}` }));
}

describe("the reload step", () => {
  test("not root and no smtpctl_socket: refused before anything is written, naming the key to add", async () => {
    const config = opensmtpdConfig("");
    const err = await relayError(() => smtpctlReload({ config, index: new LiveIndex(), clock: new FakeClock() }, 998));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toBe('lookup = "opensmtpd" needs `smtpctl update table relayctl`, which smtpd takes from root only, and this process runs as uid 998');
    expect(err.hint).toContain(`add smtpctl_socket = "${SMTPCTL_SOCKET}" to ${config.path} and run install.sh server`);
  });

  test("with smtpctl_socket, a non-root process asks the socket and never runs smtpctl itself", async () => {
    const sock = await fakeSocket("command succeeded\n");
    try {
      const config = opensmtpdConfig(`smtpctl_socket = "${sock.path}"\nsmtpctl = "/nonexistent/smtpctl"\n`);
      const reload = smtpctlReload({ config, index: new LiveIndex(), clock: new FakeClock() }, 998);
      await reload();
      expect(sock.connections()).toBe(1);
    } finally {
      await sock.close();
    }
  });

  test("smtpctl's answers: success, a failure worth retrying, and a root-less unit that only a human can fix", async () => {
    const cases: [string, string, ExitCodeValue][] = [
      ["command failed\n", "smtpctl update table relayctl failed: command failed", ExitCode.FAILED],
      ["smtpctl: smtpd doesn't seem to be running\n", "smtpctl update table relayctl failed: smtpctl: smtpd doesn't seem to be running", ExitCode.FAILED],
      ["", "closed without an answer", ExitCode.FAILED],
      ["smtpctl: need root privileges\n", "runs smtpctl without root: smtpctl: need root privileges", ExitCode.USAGE],
    ];
    for (const [answer, message, code] of cases) {
      const sock = await fakeSocket(answer);
      try {
        const err = await relayError(() => askSmtpctlSocket(sock.path, 5000));
        expect(err.message).toContain(message);
        expect(err.exitCode).toBe(code);
        expect(err.hint).toStartWith("smtpd keeps its last table");
      } finally {
        await sock.close();
      }
    }
    const ok = await fakeSocket("command succeeded\n");
    await askSmtpctlSocket(ok.path, 5000);
    await ok.close();
  });

  test("no socket at the path: only a human can fix it (the units are not installed)", async () => {
    const path = join(tempDir(), "none.sock");
    const err = await relayError(() => askSmtpctlSocket(path, 5000));
    expect(err.message).toBe(`smtpctl update table relayctl failed: smtpctl_socket ${path} does not exist`);
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.hint).toContain("systemctl enable --now relayctl-smtpctl.socket");
  });

  test("a socket that never answers is abandoned after the timeout", async () => {
    const path = join(tempDir(), "mute.sock");
    const held: Socket[] = [];
    const mute = createServer((c) => void held.push(c));
    await new Promise<void>((resolve) => mute.listen(path, resolve));
    try {
      const err = await relayError(() => askSmtpctlSocket(path, 300));
      expect(err.message).toBe(`smtpctl update table relayctl failed: no answer on ${path} within 0.3s`);
      expect(err.exitCode).toBe(ExitCode.FAILED);
    } finally {
      for (const c of held) c.destroy();
      await new Promise<void>((resolve) => mute.close(() => resolve()));
    }
  });
});

describe("a server whose first reload is refused", () => {
  test("does not start: the refusal is the error, the lock is released", async () => {
    const config = { ...opensmtpdConfig(`smtpctl_socket = "/nonexistent/relayctl-smtpctl.sock"\n`), listen: { host: "127.0.0.1", port: 0 } };
    const err = await relayError(() => startServer({ config }));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toBe("smtpctl update table relayctl failed: smtpctl_socket /nonexistent/relayctl-smtpctl.sock does not exist");
    expect(StateLock.isHeld(config.stateDir)).toBe(false);
  });

  test("a failure worth retrying (smtpd down) still starts, degraded, and the retry lands", async () => {
    let answer = "smtpctl: smtpd doesn't seem to be running\n";
    const sock = await fakeSocket(() => answer);
    const config = { ...opensmtpdConfig(`smtpctl_socket = "${sock.path}"\n`), listen: { host: "127.0.0.1", port: 0 } };
    const server = await startServer({ config });
    try {
      expect(server.lookup.problems()[0]).toContain("smtpd doesn't seem to be running");
      expect(existsSync(config.smtpdTable)).toBe(true);
      answer = "command succeeded\n";
      for (let i = 0; i < 40 && server.lookup.problems().length; i++) await Bun.sleep(100);
      expect(server.lookup.problems()).toEqual([]);
    } finally {
      await server.stop();
      await sock.close();
    }
  });
});
