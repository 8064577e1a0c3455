import { fail, pass, shellQuote, type CheckResult } from "./checks.ts";
import { mainCfLines } from "./postfix.ts";

/** What running `postmap -c DIR -q relayctl-doctor static:ok` showed. */
export interface PostmapRun {
  /** The postmap binary that ran. */
  path: string;
  configDir: string;
  /** Exit code; -1 when it could not be started at all. */
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** main.cf text, to point at the line that sets a refused parameter ("" when unreadable). */
  mainCf: string;
}

/** A main.cf setting a Postfix tool refused, as far as its fatal message names one. */
export interface RefusedSetting {
  /** The fatal line as printed, without the tool's directory (`postmap: fatal: ...`). */
  line: string;
  /** Its text after `fatal: `. */
  fatal: string;
  /** The parameter it names, when it names one. */
  name?: string;
  /** main.cf is unreadable rather than wrong: postmap stops before reading any setting. */
  unreadable?: string;
}

// Postfix's own wordings for a parameter value it cannot use (mail_conf_*.c, mail_params.c).
const NAMED = [
  /^bad [a-z]+ configuration: ([a-z0-9_]+) = /,
  /^bad string length \d+ [<>] \d+: ([a-z0-9_]+) = /,
  /^file .*: parameter ([a-z0-9_]+): bad parameter value: /,
];

/** Names of the parameters main.cf sets (a parameter starts in column one). */
function setNames(mainCf: string): string[] {
  return [...mainCf.matchAll(/^([a-z0-9_]+)\s*=/gm)].map((m) => m[1]!);
}

/**
 * Reads a Postfix tool's stderr (postmap, postconf) for the main.cf setting it stopped
 * at. Postfix names the parameter in most fatal messages ("bad boolean configuration:
 * NAME = VALUE"); others mention it in words ("malformed compatibility level syntax"),
 * so a set parameter whose name appears in the message, spaces read as underscores,
 * counts too. Null when there is no fatal line: then the binary itself is at fault.
 */
export function refusedSetting(stderr: string, mainCf: string): RefusedSetting | null {
  const m = stderr.split("\n").map((l) => /^(?:\S*\/)?([a-z]+: fatal: (.*))$/.exec(l.trim())).filter((x) => x !== null).at(-1);
  if (!m) return null;
  const [, line, fatal] = m as unknown as [string, string, string];
  // Only a permission problem; a missing main.cf is postfix.postconf's "no main.cf" finding.
  const open = /^open (\/.*\/main\.cf): Permission denied$/.exec(fatal);
  if (open) return { line, fatal, unreadable: open[1]! };
  for (const re of NAMED) {
    const named = re.exec(fatal);
    if (named) return { line, fatal, name: named[1]! };
  }
  const words = ` ${fatal.replace(/[^a-z0-9_]+/gi, " ")} `;
  const spaced = words.replace(/ /g, "_");
  const name = setNames(mainCf).findLast((n) => words.includes(` ${n} `) || spaced.includes(`_${n}_`));
  return name ? { line, fatal, name } : { line, fatal };
}

/**
 * Verdict on `postfix.postmap`. A postmap that starts and stops with a fatal message
 * about main.cf is a working binary: the fix is the setting (file:line, and the
 * `postconf -X` that removes it), never a reinstall, which would not change main.cf.
 */
export function postmapVerdict(r: PostmapRun): CheckResult {
  if (r.code === 0 && r.stdout.trim() === "ok") return pass("postfix.postmap", `${r.path} runs`);
  const reinstall = "reinstall Postfix (apt-get install --reinstall postfix)";
  if (r.timedOut) return fail("postfix.postmap", `${r.path} does not run: timed out`, reinstall);
  const refused = refusedSetting(r.stderr, r.mainCf);
  if (!refused) {
    return fail("postfix.postmap", `${r.path} does not run: ${r.stderr.trim().split("\n").at(-1) || `exit code ${r.code}`}`, reinstall);
  }
  return settingVerdict("postfix.postmap", "the server cannot rebuild the map", r.configDir, r.mainCf, refused);
}

/** A failed check for a setting a Postfix tool refused: which line of which file, and the fix. */
export function settingVerdict(id: string, consequence: string, configDir: string, mainCf: string, s: RefusedSetting): CheckResult {
  const file = `${configDir}/main.cf`;
  const tool = s.line.slice(0, s.line.indexOf(":"));
  let what = `${tool} stops at the Postfix configuration (${file}), so ${consequence}: ${s.line}`;
  if (s.name) {
    const at = mainCfLines(mainCf, s.name).set;
    what = at
      ? `${file}:${at} sets ${s.name}, which ${tool} refuses, so ${consequence} (${s.line})`
      : `${tool} refuses the value ${s.name} gets (it is not set in ${file}), so ${consequence} (${s.line})`;
  }
  return fail(id, what, settingFix(configDir, mainCf, s));
}

/** The paste-able fix for a refused setting. */
function settingFix(configDir: string, mainCf: string, s: RefusedSetting): string {
  const dir = shellQuote(configDir);
  if (s.unreadable) return `chmod 644 ${shellQuote(s.unreadable)}`;
  if (!s.name) {
    return [
      `correct what the message names, usually in ${configDir}/main.cf (postconf -c ${dir} -n lists its settings); if it names none, reinstall Postfix (apt-get install --reinstall postfix). To see the message again:`,
      `postmap -c ${dir} -q relayctl-doctor static:ok`,
    ].join("\n");
  }
  if (!mainCfLines(mainCf, s.name).set) return [`set ${s.name} to a valid value (man 5 postconf):`, `postconf -c ${dir} -e '${s.name} = VALUE'`].join("\n");
  return [`remove the setting, so Postfix's default (postconf -d ${s.name}) applies:`, `postconf -c ${dir} -X ${s.name}`, "or correct its value (man 5 postconf)"].join("\n");
}
