import { usageError } from "./errors.ts";

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** Parses `90s`, `20m`, `1h`, `2d` or a bare number of seconds into whole seconds (> 0). */
export function parseDuration(input: string | number, where = "duration"): number {
  if (typeof input === "number") {
    if (Number.isInteger(input) && input > 0) return input;
    throw usageError(`${where}: ${input} is not a positive whole number of seconds`, "use e.g. 90s, 20m, 1h");
  }
  const m = /^([0-9]{1,9})([smhd]?)$/.exec(input.trim() === input ? input : "");
  const seconds = m ? Number(m[1]) * UNITS[m[2] || "s"]! : 0;
  if (!m || seconds <= 0) throw usageError(`${where}: "${input}" is not a duration`, "use e.g. 90s, 20m, 1h or a number of seconds");
  return seconds;
}

/** Formats seconds the way they are written in config files: 1200 -> "20m". */
export function formatDuration(seconds: number): string {
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]] as const) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${seconds}s`;
}
