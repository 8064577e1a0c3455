// consola/core: the full "consola" entry loads fancy reporters we never use and costs ~8 ms at every start.
import { createConsola, type ConsolaInstance, type LogObject } from "consola/core";

const LEVEL_NAMES: Record<number, string> = { 0: "error", 1: "warn", 2: "notice", 3: "info", 4: "debug", 5: "trace" };

/**
 * One line per event on stderr, `level: message`, no colour or icons:
 * journald and cron mail both read it as plain text. With `json` each line
 * is an object instead, for log shippers.
 */
let format: "text" | "json" = "text";

function line(o: LogObject): string {
  const msg = o.args.map((a) => (a instanceof Error ? a.message : typeof a === "string" ? a : JSON.stringify(a))).join(" ");
  const level = LEVEL_NAMES[o.level] ?? o.type;
  if (format === "json") return JSON.stringify({ ts: o.date.toISOString(), level, msg }) + "\n";
  return `${level}: ${msg.replace(/\n/g, " | ")}\n`;
}

/** The one logger (consola), writing single lines to stderr. */
export const log: ConsolaInstance = createConsola({
  level: 1,
  reporters: [{ log: (o) => void process.stderr.write(line(o)) }],
});

/** Raises or lowers the log level: verbose shows info/debug, quiet only errors. */
export function setVerbosity(v: { verbose?: boolean; quiet?: boolean }): void {
  log.level = v.verbose ? 4 : v.quiet ? 0 : 1;
}

/** Switches between plain `level: message` lines and JSON lines. */
export function setLogFormat(f: "text" | "json"): void {
  format = f;
}

const LEVELS: Record<string, number> = { error: 0, warn: 1, info: 3, debug: 4 };

/** Sets the level by name (error, warn, info, debug), as server.toml's log_level gives it. */
export function setLogLevel(name: string): void {
  log.level = LEVELS[name] ?? 3;
}
