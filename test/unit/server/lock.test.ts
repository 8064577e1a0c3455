import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, statSync } from "node:fs";
import { join } from "node:path";
import { ExitCode, RelayError } from "../../../src/lib/errors.ts";
import { StateLock } from "../../../src/server/lock.ts";
import { killPid, processAlive, removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

const LOCK_MODULE = join(import.meta.dir, "../../../src/server/lock.ts");

/** Starts a bun child that takes the lock on dir and holds it until killed. */
async function holder(dir: string): Promise<{ pid: number; proc: ReturnType<typeof Bun.spawn> }> {
  const script = `import { StateLock } from ${JSON.stringify(LOCK_MODULE)};
const lock = StateLock.tryAcquire(process.env.LOCK_DIR!);
console.log(lock ? "locked" : "busy");
setInterval(() => {}, 1000);`;
  const proc = Bun.spawn([process.execPath, "-e", script], { env: { ...process.env, LOCK_DIR: dir }, stdout: "pipe", stderr: "inherit", stdin: "ignore" });
  const reader = proc.stdout.getReader();
  const { value } = await reader.read();
  reader.releaseLock();
  const said = new TextDecoder().decode(value).trim();
  if (said !== "locked") {
    killPid(proc.pid);
    throw new Error(`holder said ${said}`);
  }
  return { pid: proc.pid, proc };
}

describe("StateLock", () => {
  test("acquire, release, acquire again in one process", () => {
    const dir = tempDir("relayctl-lock-");
    const a = StateLock.acquire(dir);
    a.release();
    a.release(); // idempotent
    const b = StateLock.tryAcquire(dir);
    expect(b).not.toBeNull();
    b!.release();
    expect(StateLock.isHeld(dir)).toBe(false);
  });

  test("a second acquire in this process fails while the first holds it", () => {
    const dir = tempDir("relayctl-lock-");
    const a = StateLock.acquire(dir);
    try {
      expect(StateLock.tryAcquire(dir)).toBeNull();
      expect(StateLock.isHeld(dir)).toBe(true);
    } finally {
      a.release();
    }
    expect(StateLock.isHeld(dir)).toBe(false);
  });

  test("a lock held by another process blocks us, and dies with it", async () => {
    const dir = tempDir("relayctl-lock-");
    const h = await holder(dir);
    try {
      expect(StateLock.isHeld(dir)).toBe(true);
      expect(StateLock.tryAcquire(dir)).toBeNull();
      let err: unknown;
      try {
        StateLock.acquire(dir);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RelayError);
      expect((err as RelayError).exitCode).toBe(ExitCode.USAGE);
      expect((err as RelayError).message).toContain(`already running on state_dir ${dir}`);
      // isHeld must not have stolen or broken the holder's lock.
      expect(StateLock.isHeld(dir)).toBe(true);
    } finally {
      killPid(h.pid);
      await h.proc.exited;
    }
    expect(processAlive(h.pid)).toBe(false);
    // SIGKILL leaves no stale lock behind.
    expect(StateLock.isHeld(dir)).toBe(false);
    const mine = StateLock.acquire(dir);
    mine.release();
  });

  test.skipIf(process.getuid?.() !== 0)("root on another user's state_dir: the lock file is that user's, and the lock holds", () => {
    const dir = tempDir("relayctl-lock-owned-");
    chownSync(dir, 65534, 65534);
    chmodSync(dir, 0o700);
    const mine = StateLock.acquire(dir);
    try {
      expect(statSync(join(dir, "server.lock")).uid).toBe(65534);
      const script = `import { StateLock } from ${JSON.stringify(LOCK_MODULE)}; console.log(StateLock.isHeld(process.env.LOCK_DIR!) ? "held" : "free");`;
      const r = Bun.spawnSync([process.execPath, "-e", script], { env: { ...process.env, LOCK_DIR: dir }, stdout: "pipe", stderr: "pipe", timeout: 10_000 });
      expect(r.stdout.toString().trim()).toBe("held");
    } finally {
      mine.release();
    }
  });

  test("another process cannot take the lock we hold", async () => {
    const dir = tempDir("relayctl-lock-");
    const mine = StateLock.acquire(dir);
    try {
      const script = `import { StateLock } from ${JSON.stringify(LOCK_MODULE)}; console.log(StateLock.isHeld(process.env.LOCK_DIR!) ? "held" : "free");`;
      const r = Bun.spawnSync([process.execPath, "-e", script], { env: { ...process.env, LOCK_DIR: dir }, stdout: "pipe", stderr: "pipe", timeout: 10_000 });
      expect(r.stdout.toString().trim()).toBe("held");
    } finally {
      mine.release();
    }
  });
});
