import { ExitCode, RelayError } from "../lib/errors.ts";

/** Outcome of one doctor check. */
export type Status = "pass" | "warn" | "fail";

/** One check as reported: a stable id, its verdict, what was seen, and how to fix it (or a note on a pass). */
export interface CheckResult {
  id: string;
  status: Status;
  message: string;
  hint?: string;
}

/** The whole report; `ok` is false when any check failed (warnings are allowed). */
export interface DoctorReport {
  ok: boolean;
  checks: CheckResult[];
}

/** A passing check, optionally with a note. */
export function pass(id: string, message: string, hint?: string): CheckResult {
  return hint ? { id, status: "pass", message, hint } : { id, status: "pass", message };
}

/** A warning: works now, but worth fixing. */
export function warn(id: string, message: string, hint?: string): CheckResult {
  return hint ? { id, status: "warn", message, hint } : { id, status: "warn", message };
}

/** A failure: relaying does not (or will not) work until fixed. */
export function fail(id: string, message: string, hint?: string): CheckResult {
  return hint ? { id, status: "fail", message, hint } : { id, status: "fail", message };
}

/** Builds the report from the checks in the order they ran. */
export function buildReport(checks: CheckResult[]): DoctorReport {
  return { ok: !checks.some((c) => c.status === "fail"), checks };
}

/** Quotes one word for a POSIX shell, so printed fixes paste safely. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Runs check producers in order; one that throws becomes a failed check instead of a stack trace. */
export async function collect(id: string, fn: () => Promise<CheckResult[]> | CheckResult[]): Promise<CheckResult[]> {
  try {
    return await fn();
  } catch (err) {
    // A bad flag is the caller's mistake, not a finding: it must exit 2 like every other command.
    if (err instanceof RelayError && err.exitCode === ExitCode.USAGE) throw err;
    const e = err as Error & { hint?: string };
    return [fail(id, e.message, e.hint)];
  }
}

const LABEL: Record<Status, string> = { pass: "PASS", warn: "WARN", fail: "FAIL" };
const COLOUR: Record<Status, string> = { pass: "\x1b[32m", warn: "\x1b[33m", fail: "\x1b[31m" };

/** Renders the report for people: one line per check, then indented fixes (notes for passes). */
export function renderHuman(report: DoctorReport, colour: boolean): string {
  const width = Math.max(0, ...report.checks.map((c) => c.id.length));
  const lines: string[] = [];
  for (const c of report.checks) {
    const label = colour ? `${COLOUR[c.status]}${LABEL[c.status]}\x1b[0m` : LABEL[c.status];
    lines.push(`${label}  ${c.id.padEnd(width)}  ${c.message}`);
    if (c.hint) {
      const prefix = c.status === "pass" ? "note: " : "fix: ";
      c.hint.split("\n").forEach((h, i) => lines.push(`      ${" ".repeat(width + 2)}${i === 0 ? prefix : " ".repeat(prefix.length)}${h}`));
    }
  }
  const failed = report.checks.filter((c) => c.status === "fail").length;
  const warned = report.checks.filter((c) => c.status === "warn").length;
  lines.push("", failed ? `${failed} failed, ${warned} warning(s)` : warned ? `all checks passed with ${warned} warning(s)` : "all checks passed");
  return lines.join("\n");
}
