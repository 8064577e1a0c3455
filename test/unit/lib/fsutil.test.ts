import { afterAll, describe, expect, test } from "bun:test";
import { chownSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { makeOwnedDir, ownerFor, writeFileAtomic, writeFileSynced, fsyncDir } from "../../../src/lib/fsutil.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

const modeOf = (p: string): number => statSync(p).mode & 0o777;

describe("writeFileSynced", () => {
  test("writes strings and bytes with the mode", () => {
    const dir = tempDir();
    writeFileSynced(join(dir, "a"), "hello\n", 0o600);
    expect(readFileSync(join(dir, "a"), "utf8")).toBe("hello\n");
    expect(modeOf(join(dir, "a"))).toBe(0o600);
    writeFileSynced(join(dir, "b"), new Uint8Array([0, 1, 255]));
    expect(Array.from(readFileSync(join(dir, "b")))).toEqual([0, 1, 255]);
  });

  test("never writes into an existing file or through a planted symlink", () => {
    const dir = tempDir();
    const p = join(dir, "f");
    writeFileSync(p, "previous");
    expect(() => writeFileSynced(p, "short", 0o600)).toThrow();
    expect(readFileSync(p, "utf8")).toBe("previous");
    const victim = join(dir, "victim");
    writeFileSync(victim, "untouched");
    symlinkSync(victim, join(dir, "link"));
    expect(() => writeFileSynced(join(dir, "link"), "evil")).toThrow();
    expect(readFileSync(victim, "utf8")).toBe("untouched");
  });
});

describe("writeFileAtomic", () => {
  test("creates missing parent directories with mkdirMode and the file with mode", () => {
    const dir = tempDir();
    const p = join(dir, "x", "y", "client.toml");
    writeFileAtomic(p, "token = 1\n", { mode: 0o600, mkdirMode: 0o750 });
    expect(readFileSync(p, "utf8")).toBe("token = 1\n");
    expect(modeOf(p)).toBe(0o600);
    expect(statSync(join(dir, "x", "y")).isDirectory()).toBe(true);
    expect(modeOf(join(dir, "x")) & ~0o750).toBe(0);
  });

  test("replaces an existing file (new inode) and leaves no temp file", () => {
    const dir = tempDir();
    const p = join(dir, "f");
    writeFileAtomic(p, "one");
    const ino = statSync(p).ino;
    writeFileAtomic(p, "two");
    expect(readFileSync(p, "utf8")).toBe("two");
    expect(statSync(p).ino).not.toBe(ino);
    expect(readdirSync(dir)).toEqual(["f"]);
  });

  test("a file at the old predictable temp name is neither used nor followed", () => {
    const dir = tempDir();
    const victim = join(dir, "victim");
    writeFileSync(victim, "untouched");
    chmodSync(victim, 0o666);
    symlinkSync(victim, join(dir, `.secret.${process.pid}.tmp`));
    writeFileAtomic(join(dir, "secret"), "s3cret", { mode: 0o600 });
    expect(modeOf(join(dir, "secret"))).toBe(0o600);
    expect(readFileSync(victim, "utf8")).toBe("untouched");
    expect(modeOf(victim)).toBe(0o666);
  });

  test("on failure the old file stays and the temp file is removed", () => {
    const dir = tempDir();
    const target = join(dir, "target");
    mkdirSync(join(target, "inside"), { recursive: true }); // a non-empty directory: rename onto it fails
    expect(() => writeFileAtomic(target, "data")).toThrow();
    expect(readdirSync(dir)).toEqual(["target"]);
    expect(statSync(target).isDirectory()).toBe(true);
  });

  test("fsyncDir works on a directory and throws on a missing one", () => {
    const dir = tempDir();
    expect(() => fsyncDir(dir)).not.toThrow();
    expect(() => fsyncDir(join(dir, "missing"))).toThrow();
  });
});

describe("ownership and symlinks", () => {
  const root = process.getuid?.() === 0;
  /** uid and gid nobody has: enough to see a chown happen without a real user. */
  const STRANGER = { uid: 64_999, gid: 64_998 };

  test("writeFileSynced refuses a symlink instead of writing through it", () => {
    const dir = tempDir();
    const target = join(dir, "target");
    writeFileSync(target, "precious");
    symlinkSync(target, join(dir, "link"));
    // O_EXCL refuses any existing name (EEXIST) before O_NOFOLLOW would (ELOOP).
    expect(() => writeFileSynced(join(dir, "link"), "overwritten")).toThrow(expect.objectContaining({ code: "EEXIST" }));
    expect(readFileSync(target, "utf8")).toBe("precious");
  });

  test("makeOwnedDir creates with the exact mode, tightens an existing one, and refuses a symlink", () => {
    const dir = tempDir();
    makeOwnedDir(join(dir, "new"), 0o700);
    expect(modeOf(join(dir, "new"))).toBe(0o700);
    mkdirSync(join(dir, "old"), { mode: 0o755 });
    makeOwnedDir(join(dir, "old"), 0o700);
    expect(modeOf(join(dir, "old"))).toBe(0o700);
    mkdirSync(join(dir, "elsewhere"), { mode: 0o755 });
    symlinkSync(join(dir, "elsewhere"), join(dir, "link"));
    // Linux says ENOTDIR rather than ELOOP when O_DIRECTORY meets a symlink under O_NOFOLLOW.
    expect(() => makeOwnedDir(join(dir, "link"), 0o700)).toThrow(expect.objectContaining({ code: "ENOTDIR" }));
    expect(modeOf(join(dir, "elsewhere"))).toBe(0o755);
  });

  test.skipIf(!root)("as root: ownerFor is the directory's owner, or nobody to hand over to for root's own", () => {
    const dir = tempDir();
    expect(ownerFor(dir)).toBeUndefined();
    chownSync(dir, STRANGER.uid, STRANGER.gid);
    expect(ownerFor(dir)).toEqual(STRANGER);
  });

  test.skipIf(!root)("as root: directory and file get the owner on their descriptors", () => {
    const dir = tempDir();
    makeOwnedDir(join(dir, "tls"), 0o700, STRANGER);
    writeFileAtomic(join(dir, "tls", "key.pem"), "k", { mode: 0o600, owner: STRANGER });
    for (const p of [join(dir, "tls"), join(dir, "tls", "key.pem")]) {
      const st = statSync(p);
      expect({ uid: st.uid, gid: st.gid }).toEqual(STRANGER);
    }
    expect(modeOf(join(dir, "tls", "key.pem"))).toBe(0o600);
  });
});
