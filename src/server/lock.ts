import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { RelayError, ExitCode } from "../lib/errors.ts";
import { ensureOwnedFile, ownerFor } from "../lib/fsutil.ts";
import { FileLock } from "../lib/lock.ts";

/** One server per state_dir: a FileLock on state_dir/server.lock. */
export class StateLock {
  private constructor(private readonly lock: FileLock) {}

  /** Takes the lock, or returns null when another process holds it. */
  static tryAcquire(stateDir: string): StateLock | null {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const path = join(stateDir, "server.lock");
    // Owned like state_dir before the lock is taken, never after: handing it
    // over then closed a descriptor and dropped the lock (root on a relayctl-owned state_dir).
    ensureOwnedFile(path, ownerFor(stateDir), true);
    const lock = FileLock.tryAcquire(path);
    return lock ? new StateLock(lock) : null;
  }

  /** Takes the lock or fails with a message saying a server already runs there. */
  static acquire(stateDir: string): StateLock {
    const lock = StateLock.tryAcquire(stateDir);
    if (!lock) {
      throw new RelayError(`another relayctl server is already running on state_dir ${stateDir}`, {
        exitCode: ExitCode.USAGE,
        hint: "stop it first (systemctl stop relayctl), or give this one its own state_dir and map",
      });
    }
    return lock;
  }

  /** True when a server currently holds the lock on stateDir. */
  static isHeld(stateDir: string): boolean {
    const lock = StateLock.tryAcquire(stateDir);
    lock?.release();
    return lock === null;
  }

  /** Lets go of the lock. */
  release(): void {
    this.lock.release();
  }
}
