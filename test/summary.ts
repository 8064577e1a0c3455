/**
 * The end of `npm test`: what was skipped, file by file, and why when the
 * reason is known, read from the JUnit report. A skipped test proves
 * nothing, so a run that skipped any says so last, where it is seen.
 */
import { existsSync, readFileSync } from "node:fs";
import { e2eSupport } from "./e2e/harness.ts";

/** Skipped tests in a bun JUnit report, per file: line and name of each. */
export function skippedByFile(junit: string): Map<string, { line: string; name: string }[]> {
  const out = new Map<string, { line: string; name: string }[]>();
  const unescape = (s: string) => s.replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
  for (const m of junit.matchAll(/<testcase\b([^>]*)>\s*<skipped/g)) {
    const attr = (n: string) => unescape(new RegExp(`\\b${n}="([^"]*)"`).exec(m[1]!)?.[1] ?? "");
    const file = attr("file");
    out.set(file, [...(out.get(file) ?? []), { line: attr("line"), name: [attr("classname"), attr("name")].filter(Boolean).join(" > ") }]);
  }
  return out;
}

/** The lines to print for a report: nothing when nothing was skipped. */
export function skipSummary(junit: string, e2eWhy: string | null): string[] {
  const byFile = skippedByFile(junit);
  const total = [...byFile.values()].reduce((n, l) => n + l.length, 0);
  if (total === 0) return [];
  const lines = [`skipped: ${total} test${total === 1 ? "" : "s"}; each was skipped by the condition at the line named (a tool, root or a file this machine lacks, or an opt-out)`];
  const e2e = [...byFile.keys()].filter((f) => f.startsWith("test/e2e/")).reduce((n, f) => n + byFile.get(f)!.length, 0);
  if (e2e && e2eWhy) lines.push(`  e2e: ${e2e} skipped because the e2e tests cannot run here: ${e2eWhy}`);
  for (const [file, tests] of [...byFile].sort()) {
    if (tests.length > 3) lines.push(`  ${file}: ${tests.length} tests`);
    else for (const t of tests) lines.push(`  ${file}:${t.line}: ${t.name}`);
  }
  return lines;
}

if (import.meta.main) {
  const report = process.argv[2] ?? "test-results/junit.xml";
  if (existsSync(report)) {
    const support = e2eSupport();
    for (const line of skipSummary(readFileSync(report, "utf8"), support.ok ? null : `${support.reason}: ${support.fix}`)) console.log(line);
  }
}
