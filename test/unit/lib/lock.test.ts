import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { FileLock } from "../../../src/lib/lock.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

describe("FileLock", () => {
  test("taken once, refused while held, free again after release", () => {
    const path = join(tempDir("relayctl-filelock-"), "run.lock");
    const a = FileLock.tryAcquire(path);
    expect(a).not.toBeNull();
    expect(FileLock.tryAcquire(path)).toBeNull();
    a!.release();
    const b = FileLock.tryAcquire(path);
    expect(b).not.toBeNull();
    b!.release();
  });

  test("a lock nobody references any more stays held until the process exits (the collector must not drop it)", () => {
    const path = join(tempDir("relayctl-filelock-"), "run.lock");
    // Taken inside a function whose result is dropped: only the lock module can keep it.
    (() => void FileLock.tryAcquire(path))();
    Bun.gc(true);
    expect(FileLock.tryAcquire(path)).toBeNull();
  });

  test("holding it writes nothing beside the lock file (no journal to create and unlink on every client run)", () => {
    const dir = tempDir("relayctl-filelock-");
    const lock = FileLock.tryAcquire(join(dir, "run.lock"));
    try {
      expect(readdirSync(dir)).toEqual(["run.lock"]);
    } finally {
      lock!.release();
    }
    expect(readdirSync(dir)).toEqual(["run.lock"]);
  });

  test("acquireWithin gives up after its timeout while another holder keeps it", async () => {
    const path = join(tempDir("relayctl-filelock-"), "run.lock");
    const held = FileLock.tryAcquire(path)!;
    try {
      const t0 = performance.now();
      expect(await FileLock.acquireWithin(path, 300)).toBeNull();
      expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
    } finally {
      held.release();
    }
  });
});
