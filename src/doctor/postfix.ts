import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { RelayError } from "../lib/errors.ts";
import { runTool } from "../server/postfix.ts";

const POSTCONF_TIMEOUT_MS = 10_000;

/** Parameters doctor reads, all expanded the way Postfix itself expands them. */
export const PARAMS = [
  "mynetworks",
  "smtpd_relay_restrictions",
  "smtpd_recipient_restrictions",
  "mail_version",
  "default_database_type",
  "mail_owner",
  "queue_directory",
] as const;
export type Param = (typeof PARAMS)[number];

/** Effective main.cf values of one Postfix instance, read through its own postconf. */
export interface PostfixView {
  configDir: string;
  /** Values with $names, ${name?...} and defaults expanded (`postconf -x -h`). */
  values: Record<Param, string>;
  /** Parameters set in main.cf, unexpanded (`postconf -n`): what a fix should keep. */
  explicit: Map<string, string>;
  /** Table types this Postfix supports (`postconf -m`). */
  mapTypes: string[];
  /** main.cf text, to point at the line to change. */
  mainCf: string;
}

/** Splits a Postfix list value: commas and whitespace separate items, `{ ... }` keeps a group as one item. */
export function splitPostfixList(value: string): string[] {
  const out: string[] = [];
  let cur = "";
  let depth = 0;
  for (const ch of value) {
    if (ch === "{") depth++;
    else if (ch === "}" && depth > 0) depth--;
    if (depth === 0 && (ch === "," || /\s/.test(ch))) {
      if (cur) out.push(cur);
      cur = "";
      continue;
    }
    cur += ch;
  }
  if (cur) out.push(cur);
  // A whole item in braces is Postfix's grouping syntax: the braces are not part of the value.
  return out.map((t) => (/^\{.*\}$/s.test(t) ? t.slice(1, -1).trim() : t)).filter(Boolean);
}

/** A `type:/path` table reference (an optional `proxy:` in front is looked through), or null. */
export function parseTableRef(token: string): { type: string; path: string } | null {
  const m = /^(?:proxy:)?([a-z][a-z0-9_]*):(\/.*)$/.exec(token);
  return m ? { type: m[1]!, path: m[2]! } : null;
}

/** Parses `name = value` lines as `postconf -n` prints them. */
export function parsePostconfN(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z0-9_.-]+) = ?(.*)$/.exec(line);
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}

/** Line numbers (1-based) where main.cf sets a parameter, and where it is only commented out. */
export function mainCfLines(text: string, name: string): { set?: number; commented?: number } {
  const lines = text.split("\n");
  // A parameter starts in column one; an indented line continues the previous one.
  // Postfix keeps the last of several settings, so that is the line to point at.
  const set = lines.findLastIndex((l) => new RegExp(`^${name}\\s*=`).test(l));
  const commented = lines.findIndex((l) => new RegExp(`^\\s*#\\s*${name}\\s*=`).test(l));
  return { set: set === -1 ? undefined : set + 1, commented: commented === -1 ? undefined : commented + 1 };
}

/** Postfix's config_directory as its postconf reports it, else /etc/postfix. */
export async function defaultConfigDir(postconf: string | undefined): Promise<string> {
  if (postconf) {
    const r = await runTool([postconf, "-h", "config_directory"], POSTCONF_TIMEOUT_MS).catch(() => undefined);
    const dir = r?.code === 0 ? r.stdout.trim() : "";
    if (dir.startsWith("/")) return dir;
  }
  return "/etc/postfix";
}

/** postconf failed; its stderr is kept so doctor can tell a refused main.cf setting from a broken install. */
export class PostconfFailed extends RelayError {
  constructor(message: string, readonly stderr: string) {
    super(message, { hint: "check --postfix-dir and that main.cf is readable" });
  }
}

async function postconfRun(postconf: string, args: string[]): Promise<string> {
  const r = await runTool([postconf, ...args], POSTCONF_TIMEOUT_MS);
  if (r.timedOut || r.code !== 0) {
    const why = r.timedOut ? "timed out" : (r.stderr.trim().split("\n").at(-1) ?? `exit code ${r.code}`);
    throw new PostconfFailed(`${postconf} ${args.join(" ")} failed: ${why}`, r.timedOut ? "" : r.stderr);
  }
  return r.stdout;
}

/** Reads the effective configuration of the Postfix instance in configDir. */
export async function readPostfix(postconf: string, configDir: string): Promise<PostfixView> {
  const [expanded, explicit, types] = await Promise.all([
    postconfRun(postconf, ["-c", configDir, "-x", "-h", ...PARAMS]),
    postconfRun(postconf, ["-c", configDir, "-n"]),
    postconfRun(postconf, ["-c", configDir, "-m"]),
  ]);
  const lines = expanded.split("\n");
  const values = Object.fromEntries(PARAMS.map((p, i) => [p, (lines[i] ?? "").trim()])) as Record<Param, string>;
  const mainPath = join(configDir, "main.cf");
  return {
    configDir,
    values,
    explicit: parsePostconfN(explicit),
    mapTypes: types.split("\n").map((t) => t.trim()).filter(Boolean),
    mainCf: existsSync(mainPath) ? readFileSync(mainPath, "utf8") : "",
  };
}
