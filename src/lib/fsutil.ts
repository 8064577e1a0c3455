import { closeSync, constants, fchmodSync, fchownSync, fstatSync, fsyncSync, lstatSync, mkdirSync, mkdtempSync, openSync, renameSync, statSync, unlinkSync, writeSync } from "node:fs";
import { ExitCode, RelayError } from "./errors.ts";
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
 * Creates a new file at `path` with `mode` (and `owner`, set on the
 * descriptor) holding `data`, and returns its open descriptor for the caller
 * to sync and close; an existing file or link there is an error, never followed.
 */
export function createFile(path: string, data: string | Uint8Array, mode = 0o644, owner?: Owner): number {
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    // The umask would otherwise narrow the mode given to open().
    fchmodSync(fd, mode);
    if (owner) fchownSync(fd, owner.uid, owner.gid);
    writeSync(fd, typeof data === "string" ? Buffer.from(data) : data);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** Writes and fsyncs a new file at `path`, as createFile does. */
export function writeFileSynced(path: string, data: string | Uint8Array, mode = 0o644, owner?: Owner): void {
  const fd = createFile(path, data, mode, owner);
  try {
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
  // A name nobody can guess, created with O_EXCL: a planted file or link fails the write instead of receiving it.
  // Web Crypto's global rather than node:crypto, whose loading cost every client run ~2 ms (lock.ts imports this file).
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${Buffer.from(crypto.getRandomValues(new Uint8Array(6))).toString("hex")}.tmp`);
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

/**
 * Refuses a path that is a symlink, a hard link or not a regular file, for
 * files that must be opened by name (SQLite): root must never open a file
 * someone planted a link to. A missing file is fine: it gets created.
 */
export function refuseLink(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isFile() || st.nlink > 1) {
    throw new RelayError(`${path} is not a plain file (a symlink or hard link was put there)`, {
      exitCode: ExitCode.USAGE,
      hint: `remove ${path}; relayctl never follows links in its directories`,
    });
  }
}

/**
 * Gives a file `mode` and `owner` (see ownerFor) through its open
 * descriptor, refusing to follow a symlink: root must never chown or chmod
 * a file a planted link points at.
 */
export function handOver(path: string, owner: Owner | undefined, mode?: number): void {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    if (!fstatSync(fd).isFile()) throw new Error(`${path} is not a regular file`);
    if (mode !== undefined) fchmodSync(fd, mode);
    if (owner) fchownSync(fd, owner.uid, owner.gid);
  } finally {
    closeSync(fd);
  }
}

/**
 * Makes sure path is a plain file owned by owner (created empty, mode 0600,
 * when `create` and missing), touching it only when something must change.
 * Call it before any lock is taken on the file: closing a descriptor drops
 * every fcntl lock this process holds on that file, SQLite's included.
 */
export function ensureOwnedFile(path: string, owner: Owner | undefined, create: boolean): void {
  refuseLink(path);
  let st;
  try {
    st = lstatSync(path);
  } catch {
    if (!create) return;
  }
  if (st && (!owner || (st.uid === owner.uid && st.gid === owner.gid))) return;
  const fd = openNoFollow(path, constants.O_RDWR | constants.O_CREAT, 0o600);
  try {
    if (owner) fchownSync(fd, owner.uid, owner.gid);
  } finally {
    closeSync(fd);
  }
}

/**
 * Opens an existing or new file for writing without ever following a
 * symlink at `path`, and refuses hard links to files elsewhere.
 */
export function openNoFollow(path: string, flags: number, mode = 0o600): number {
  const fd = openSync(path, flags | constants.O_NOFOLLOW, mode);
  const st = fstatSync(fd);
  if (!st.isFile() || st.nlink > 1) {
    closeSync(fd);
    throw new Error(`${path} is not a plain file of its own (a link was planted there?)`);
  }
  return fd;
}

/**
 * Makes a directory only this process's user can write, inside `parent`, for
 * temporary files whose names nobody else can predict or pre-empt.
 */
export function privateDir(parent: string): string {
  return mkdtempSync(join(parent, ".relayctl-"));
}
