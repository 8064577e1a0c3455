import { Database } from "bun:sqlite";
import { refuseLink } from "./fsutil.ts";

// Every lock taken and not yet released. A Database the collector reclaims is
// closed, and closing drops its lock: a server whose StateLock object became
// unreachable would silently let a second server start on its state_dir.
const HELD = new Set<Database>();

/**
 * An exclusive lock on a file, held through SQLite's own file locking: the
 * kernel drops it when the process dies, even by SIGKILL, so no stale pid
 * file is ever left to clean up.
 */
export class FileLock {
  private constructor(private db: Database | null) {}

  /** Takes the lock, or returns null when another process holds it. */
  static tryAcquire(path: string): FileLock | null {
    refuseLink(path);
    const db = new Database(path, { create: true });
    try {
      // The lock file holds no data: no syncs, and the journal in memory, so taking and dropping it
      // writes no file. (journal_mode = OFF is a silent no-op here, as SQLite makes it under
      // SQLITE_DBCONFIG_DEFENSIVE: the journal stayed "delete", created and unlinked on every run.)
      db.exec("PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF; PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;");
      HELD.add(db);
      return new FileLock(db);
    } catch {
      db.close();
      return null;
    }
  }

  /** Waits up to timeoutMs for the lock, polling; null when it stays taken. */
  static async acquireWithin(path: string, timeoutMs: number): Promise<FileLock | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lock = FileLock.tryAcquire(path);
      if (lock || Date.now() >= deadline) return lock;
      await Bun.sleep(200);
    }
  }

  /** Lets go of the lock. */
  release(): void {
    if (this.db) HELD.delete(this.db);
    this.db?.close(false);
    this.db = null;
  }
}
