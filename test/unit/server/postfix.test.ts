import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { findPostfixTool, mapDbSuffix, postmapError, requirePostfixTool, runTool } from "../../../src/server/postfix.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

describe("runTool", () => {
  test("returns exit code and both outputs, without a shell", async () => {
    const r = await runTool(["sh", "-c", 'echo out; echo err >&2; exit 3', "$(touch should-not-run)"], 5000);
    expect(r).toEqual({ code: 3, stdout: "out\n", stderr: "err\n", timedOut: false });
  });

  test("kills a tool that outlives the timeout, even if a child keeps its pipes open", async () => {
    const dir = tempDir();
    const pidFile = join(dir, "child.pid");
    const t0 = performance.now();
    const r = await runTool(["sh", "-c", `sleep 30 & echo $! > ${pidFile}; wait`], 200);
    const ms = performance.now() - t0;
    const child = Number(await Bun.file(pidFile).text());
    try {
      process.kill(child, "SIGKILL");
    } catch {
      // Already gone.
    }
    expect(r.timedOut).toBe(true);
    expect(r.code).not.toBe(0);
    expect(ms).toBeLessThan(2000);
  });
});

describe("postfix helpers", () => {
  test("mapDbSuffix", () => {
    expect(mapDbSuffix("hash")).toBe(".db");
    expect(mapDbSuffix("btree")).toBe(".db");
    expect(mapDbSuffix("lmdb")).toBe(".lmdb");
    expect(mapDbSuffix("cdb")).toBe(".cdb");
  });

  test("postmapError keeps the last three lines of postmap's words", () => {
    expect(postmapError("a\nb\nc\nd\n").message).toBe("postmap failed: b c d");
    expect(postmapError("  ").message).toBe("postmap failed: no output");
  });

  test("a configured tool must be an executable file", () => {
    const dir = tempDir();
    const exe = join(dir, "postmap");
    writeFileSync(exe, "#!/bin/sh\n");
    chmodSync(exe, 0o755);
    const plain = join(dir, "plain");
    writeFileSync(plain, "");
    expect(findPostfixTool("postmap", exe)).toBe(exe);
    expect(findPostfixTool("postmap", plain)).toBeUndefined();
    expect(findPostfixTool("postmap", dir)).toBeUndefined();
    expect(() => requirePostfixTool("postmap", plain)).toThrow(/is not an executable file/);
  });
});
