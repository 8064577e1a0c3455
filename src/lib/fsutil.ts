import { closeSync, constants, fchmodSync, fchownSync, fsyncSync, mkdirSync, openSync, renameSync, statSync, unlinkSync, writeSync } from "node:fs";
import { dirname, basename, join } from "node:path";

/** A uid and gid to give files and directories. */
export interface Owner {
  uid: number;
  gid: number;
}

/**
 * Who files root creates in `dir` must belong to: dir's owner, so the
 * service user who owns state_dir can still open them. Undefined when not
 * root (files are ours already) or when dir is root's own.
 */
export function ownerFor(dir: string): Owner | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const { uid, gid } = statSync(dir);
  return uid === 0 ? undefined : { uid, gid };
}

/**
 * Creates `dir` if missing and gives it exactly `mode` and `owner`, both set
 * on an open descriptor: a symlink planted in its place is refused (ELOOP),
 * never followed into somewhere root would then hand away.
 */
export function makeOwnedDir(dir: string, mode: number, owner?: Owner): void {
  try {
    mkdirSync(dir, { mode });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    fchmodSync(fd, mode);
    if (owner) fchownSync(fd, owner.uid, owner.gid);
  } finally {
    closeSync(fd);
  }
}

/** Flushes a directory entry so a rename survives a power cut. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes and fsyncs a file at `path` with `mode` (and `owner`), replacing any
 * existing one. A symlink at `path` is refused, not followed.
 */
export function writeFileSynced(path: string, data: string | Uint8Array, mode = 0o644, owner?: Owner): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, mode);
  try {
    // open() applies mode only to a new file: a leftover temp file keeps its old mode.
    fchmodSync(fd, mode);
    if (owner) fchownSync(fd, owner.uid, owner.gid);
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
export function writeFileAtomic(path: string, data: string | Uint8Array, opts: { mode?: number; mkdirMode?: number; owner?: Owner } = {}): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: opts.mkdirMode ?? 0o755 });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.tmp`);
  try {
    writeFileSynced(tmp, data, opts.mode ?? 0o644, opts.owner);
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
