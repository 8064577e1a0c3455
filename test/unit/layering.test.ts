// The layering of docs/hacking.md, checked on the import statements of every
// file under src/: cli.ts -> commands/ -> server/, client/, doctor/ -> lib/.
// A static scan of `import ... from`, `export ... from` and `import("...")`
// is enough: the sources use nothing else to reach another file.
//
// `import type` counts for both checks. For layering, a type from a higher
// layer still ties lib/ to it. For cycles, a type-only back edge is how a
// cycle usually starts (refusals.ts imported service.ts's sourceKey while
// service.ts imported refusals.ts's RefusalLog type), and a module pair that
// needs each other's names belongs in one module or below both.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";

const REPO = join(import.meta.dir, "..", "..");
const IMPORT = /(?:^|\n)\s*(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["']|\bimport\s*\(\s*["']([^"']+)["']\s*\)|(?:^|\n)\s*import\s*["']([^"']+)["']/g;

/** Every file under src/ with the files under src/ it imports (relative specifiers only). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of [...new Bun.Glob("src/**/*.ts").scanSync(REPO)].sort()) {
    const text = readFileSync(join(REPO, file), "utf8");
    const targets = [...text.matchAll(IMPORT)].map((m) => m[1] ?? m[2] ?? m[3]!).filter((s) => s.startsWith("."));
    graph.set(file, [...new Set(targets.map((s) => normalize(join(dirname(file), s))))]);
  }
  return graph;
}

/** The first import cycle found, as the files along it (the first repeated at the end), or null. */
export function findCycle(graph: Map<string, string[]>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (file: string): string[] | null => {
    if (state.get(file) === "done") return null;
    if (state.get(file) === "open") return [...path.slice(path.indexOf(file)), file];
    state.set(file, "open");
    path.push(file);
    for (const next of graph.get(file) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    path.pop();
    state.set(file, "done");
    return null;
  };
  for (const file of graph.keys()) {
    const cycle = visit(file);
    if (cycle) return cycle;
  }
  return null;
}

/** Imports that break a layering rule, as "importer -> imported: rule". */
export function layeringViolations(graph: Map<string, string[]>): string[] {
  const bad: string[] = [];
  // Composition roots wire everything together (server.ts starts what assemble.ts wires); importing one drags the whole server in.
  const roots = ["src/server/server.ts", "src/server/assemble.ts"];
  for (const [from, targets] of graph) {
    for (const to of targets) {
      if (to === "src/cli.ts") bad.push(`${from} -> ${to}: nothing imports the CLI root`);
      if (roots.includes(to) && !roots.includes(from) && !from.startsWith("src/commands/server")) bad.push(`${from} -> ${to}: only src/commands/server* may import a composition root`);
      if (from.startsWith("src/lib/") && /^src\/(server|client|doctor|commands)\//.test(to)) bad.push(`${from} -> ${to}: lib/ imports nothing above it`);
      if (!graph.has(to)) bad.push(`${from} -> ${to}: no such file under src/`);
    }
  }
  return bad;
}

describe("layering", () => {
  test("the scan sees the imports (a scan that sees none would pass anything)", () => {
    const graph = importGraph();
    expect(graph.get("src/cli.ts")).toContain("src/lib/errors.ts");
    expect([...graph.get("src/cli.ts")!].some((f) => f.startsWith("src/commands/"))).toBe(true);
    expect([...graph.values()].flat().length).toBeGreaterThan(150);
  });

  test("no import cycle under src/", () => {
    expect(findCycle(importGraph())?.join(" -> ") ?? "no cycle").toBe("no cycle");
  });

  test("no import of a composition root, nothing above lib/ from lib/", () => {
    const bad = layeringViolations(importGraph());
    expect(bad).toEqual([]);
  });

  test("the checks catch what they are for", () => {
    const g = new Map([
      ["src/server/a.ts", ["src/server/b.ts"]],
      ["src/server/b.ts", ["src/server/a.ts"]],
    ]);
    expect(findCycle(g)).toEqual(["src/server/a.ts", "src/server/b.ts", "src/server/a.ts"]);
    expect(findCycle(new Map([["src/server/a.ts", ["src/server/b.ts"]], ["src/server/b.ts", []]]))).toBeNull();
    const layered = new Map([
      ["src/lib/x.ts", ["src/server/leases.ts"]],
      ["src/server/leases.ts", []],
      ["src/server/service.ts", ["src/server/server.ts", "src/cli.ts"]],
      ["src/server/server.ts", []],
      ["src/cli.ts", []],
      ["src/commands/server/index.ts", ["src/server/server.ts"]],
    ]);
    expect(layeringViolations(layered)).toEqual([
      "src/lib/x.ts -> src/server/leases.ts: lib/ imports nothing above it",
      "src/server/service.ts -> src/server/server.ts: only src/commands/server* may import a composition root",
      "src/server/service.ts -> src/cli.ts: nothing imports the CLI root",
    ]);
  });
});
