import { closeSync, fchmodSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { dirname, basename, join } from "node:path";

/** Flushes a directory entry so a rename survives a power cut. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes and fsyncs a file at `path` with `mode`, replacing any existing one. */
export function writeFileSynced(path: string, data: string | Uint8Array, mode = 0o644): void {
  const fd = openSync(path, "w", mode);
  try {
    // open() applies mode only to a new file: a leftover temp file keeps its old mode.
    fchmodSync(fd, mode);
    writeSync(fd, typeof data === "string" ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Replaces `path` atomically: temp file in the same directory, fsync, rename,
 * fsync of the directory. Readers see the old file or the new one, never a mix.
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, opts: { mode?: number; mkdirMode?: number } = {}): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: opts.mkdirMode ?? 0o755 });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.tmp`);
  try {
    writeFileSynced(tmp, data, opts.mode ?? 0o644);
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // Nothing to clean up: the temp file was never created.
    }
    throw err;
  }
  fsyncDir(dir);
}
