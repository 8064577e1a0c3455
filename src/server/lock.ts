import { Database } from "bun:sqlite";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { RelayError, ExitCode } from "../lib/errors.ts";
import { adoptOwnership } from "./state.ts";

/**
 * An exclusive lock on state_dir, held through SQLite's own file locking:
 * the kernel drops it when the process dies, even by SIGKILL, so there is
 * no stale pid file to clean up.
 */
export class StateLock {
  private constructor(private db: Database | null) {}

  /** Takes the lock, or returns null when another process holds it. */
  static tryAcquire(stateDir: string): StateLock | null {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const db = new Database(join(stateDir, "server.lock"), { create: true });
    adoptOwnership(stateDir, ["server.lock"]);
    try {
      db.exec("PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;");
      return new StateLock(db);
    } catch {
      db.close();
      return null;
    }
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
    this.db?.close(false);
    this.db = null;
  }
}
