import { usageError } from "./errors.ts";

const MINUTE = 60;
const HOUR = 3600;
const DAY = 86400;
const UNITS: Record<string, number> = { s: 1, m: MINUTE, h: HOUR, d: DAY };

/** Bounds of one duration setting in seconds, where it is set, and why the bounds are what they are. */
export interface DurationLimit {
  setting: string;
  min: number;
  max: number;
  why: string;
}

/**
 * Every duration relayctl accepts, with its bounds: the one table docs/configuration.md's
 * limits section is written from. Besides being what anyone would set, every
 * ceiling keeps its value far inside what a timer (2^31 ms, about 24.8 days,
 * beyond which it fires after 1 ms) and a date (year 275760) can hold.
 */
export const DURATION_LIMITS = {
  ttl: {
    setting: "`ttl` in server.toml; `--ttl` of `server add` and `server edit`",
    min: 10,
    max: 400 * DAY,
    why: "clients renew well before expiry, so less than 10s drops working clients on cron jitter alone; a lease meant to outlive a year is a static entry in main.cf, not a lease",
  },
  postmap_timeout: {
    setting: "`postmap_timeout` in server.toml",
    min: 1,
    max: 5 * MINUTE,
    why: "a postmap that takes minutes is hung; the server kills it and retries with backoff",
  },
  audit_retention: {
    setting: "`audit_retention` in server.toml",
    min: 1,
    max: 3650 * DAY,
    why: "ten years covers any retention duty; the log is pruned hourly",
  },
  stale_after: {
    setting: "`stale_after` in server.toml",
    min: 6,
    max: HOUR,
    why: "a healthy host catches up with the shared database every second; 6 s leaves room for a slow read without a healthy host flapping; beyond an hour a host cut off from the database keeps relaying for revoked leases that long",
  },
  overdue_check: {
    setting: "`overdue_check` in server.toml",
    min: 1,
    max: HOUR,
    why: "each check reads the clients that may have changed state; an hour is as late as a silent client is worth hearing about",
  },
  expect: {
    setting: "`--expect` of `server add` and `server edit`",
    min: 1,
    max: 400 * DAY,
    why: "a client is late after two intervals; the longest ttl bounds any sensible renewal interval",
  },
  interval: {
    setting: "`--interval` of `client --watch`",
    min: 1,
    max: DAY,
    why: "a day is longer than any sensible ttl; too frequent renewals meet the server's rate limit, not a floor here",
  },
  since: {
    setting: "`--since` of `server log`",
    min: 1,
    max: 3650 * DAY,
    why: "no audit entry is kept longer than the longest audit_retention",
  },
} as const satisfies Record<string, DurationLimit>;

/** The limits table for docs/configuration.md, one row per setting (docs.test.ts keeps the page in step). */
export function renderLimitsTable(): string {
  const rows = ["| setting | where | min | max | why |", "|---|---|---|---|---|"];
  for (const [key, l] of Object.entries(DURATION_LIMITS)) rows.push(`| \`${key}\` | ${l.setting} | ${formatDuration(l.min)} | ${formatDuration(l.max)} | ${l.why} |`);
  return rows.join("\n") + "\n";
}

/** The name of a duration setting in DURATION_LIMITS. */
export type DurationSetting = keyof typeof DURATION_LIMITS;

/** Checks whole seconds against a setting's bounds; `where` names the flag or file:line for the error. */
export function checkDuration(seconds: number, setting: DurationSetting, where: string = setting): number {
  const { min, max, why } = DURATION_LIMITS[setting];
  if (seconds < min) throw usageError(`${where}: ${formatDuration(seconds)} is below the minimum of ${formatDuration(min)}`, `use ${formatDuration(min)} or more (${why})`);
  if (seconds > max) throw usageError(`${where}: ${formatDuration(seconds)} is above the maximum of ${formatDuration(max)}`, `use ${formatDuration(max)} or less (${why})`);
  return seconds;
}

/** Parses `90s`, `20m`, `1h`, `2d` or a bare number of seconds into whole seconds within the setting's bounds. */
export function parseDuration(input: string | number, setting: DurationSetting, where: string = setting): number {
  if (typeof input === "number") {
    if (Number.isInteger(input) && input > 0) return checkDuration(input, setting, where);
    throw usageError(`${where}: ${input} is not a positive whole number of seconds`, "use e.g. 90s, 20m, 1h");
  }
  const m = /^([0-9]{1,9})([smhd]?)$/.exec(input.trim() === input ? input : "");
  const seconds = m ? Number(m[1]) * UNITS[m[2] || "s"]! : 0;
  if (!m || seconds <= 0) throw usageError(`${where}: "${input}" is not a duration`, "use e.g. 90s, 20m, 1h or a number of seconds");
  return checkDuration(seconds, setting, where);
}

/** Formats seconds the way they are written in config files: 1200 -> "20m". */
export function formatDuration(seconds: number): string {
  for (const [unit, size] of [["d", DAY], ["h", HOUR], ["m", MINUTE]] as const) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${seconds}s`;
}
