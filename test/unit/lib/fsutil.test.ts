import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic, writeFileSynced, fsyncDir } from "../../../src/lib/fsutil.ts";
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
