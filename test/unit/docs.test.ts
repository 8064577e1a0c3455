import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { renderServerKeyTable } from "../../src/lib/schema.ts";
import { renderLimitsTable } from "../../src/lib/duration.ts";

const REPO = join(import.meta.dir, "..", "..");

describe("docs", () => {
  test("docs/configuration.md holds the server.toml table as the schema renders it", () => {
    expect(readFileSync(join(REPO, "docs/configuration.md"), "utf8")).toContain(renderServerKeyTable());
  });

  test("docs/configuration.md holds the limits table as DURATION_LIMITS renders it", () => {
    expect(readFileSync(join(REPO, "docs/configuration.md"), "utf8")).toContain(renderLimitsTable());
  });

  test("every file the architecture map names exists, and every source file is on it", () => {
    const hacking = readFileSync(join(REPO, "docs/hacking.md"), "utf8");
    const named = [...hacking.matchAll(/^\| `(src\/[^`]+\.ts)` \|/gm)].map((m) => m[1]!);
    expect(named.length).toBeGreaterThan(20);
    const sources = [...new Bun.Glob("src/**/*.ts").scanSync(REPO)].sort();
    expect(sources.filter((f) => !named.includes(f))).toEqual([]);
    expect(named.filter((f) => !sources.includes(f))).toEqual([]);
  });
});
