// doctor for the MTAs other than Postfix (lookup = "exim" or "opensmtpd"):
// facts are gathered by eximChecks/smtpdChecks, verdicts are pure functions.
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";
import type { LookupKind, ServerConfig } from "../lib/config.ts";
import { findPostfixTool, runTool } from "../server/postfix.ts";
import { lineFileKeys } from "../server/lookups/linefile.ts";
import { frozenEntries } from "../server/lookups/map.ts";
import { lstatOrNull } from "../server/lookups/filelookup.ts";
import { SMTPCTL_SOCKET, SMTPD_TABLE, smtpdHook } from "../server/lookups/opensmtpd.ts";
import type { LeaseRow } from "../server/state.ts";
import { fail, pass, shellQuote, warn, type CheckResult } from "./checks.ts";
import { accessProblem, lookupUser, type Principal } from "./files.ts";

const TOOL_TIMEOUT_MS = 10_000;
const VERBS = new Set(["accept", "deny", "require", "warn", "drop", "defer", "discard"]);

/** What the MTA checks are given: config, who runs the server, and the leases (or why they cannot be read). */
export interface MtaInput {
  config: ServerConfig;
  serverUser: Principal;
  leases: () => Promise<{ rows: LeaseRow[]; error: string | null }>;
}

/** One ACL statement of `exim -bP config`: its verb and its whole text (verb line and condition lines). */
interface Statement {
  verb: string;
  text: string;
}

/** The statements of ACL `name` in the text `exim -bP config` prints (one verb or condition a line). */
export function eximAclStatements(config: string, name: string): Statement[] | null {
  const lines = config.split("\n");
  const begin = lines.findIndex((l) => /^begin\s+acl\s*$/.test(l));
  if (begin === -1) return null;
  const start = lines.findIndex((l, i) => i > begin && l.trim() === `${name}:`);
  if (start === -1) return null;
  const out: Statement[] = [];
  for (const line of lines.slice(start + 1)) {
    const t = line.trim();
    if (/^begin\s/.test(t) || /^[A-Za-z0-9_-]+:$/.test(t)) break;
    const verb = t.split(/\s+/)[0]!;
    if (VERBS.has(verb)) out.push({ verb, text: t });
    else if (out.length && t) out.at(-1)!.text += `\n${t}`;
  }
  return out;
}

/** True when a statement's `hosts =` names the lease file, directly or through a named host list (and one macro). */
function admitsFile(s: Statement, config: string, path: string): boolean {
  const item = `net-iplsearch;${path}`;
  for (const m of s.text.matchAll(/(?:^|\s)hosts\s*=\s*(.*)$/gm)) {
    const value = m[1]!;
    if (value.includes(item)) return true;
    for (const ref of value.matchAll(/\+([A-Za-z0-9_]+)/g)) {
      const list = new RegExp(`^hostlist\\s+${ref[1]}\\s*=\\s*(.*)$`, "m").exec(config)?.[1] ?? "";
      const macro = /^[A-Z][A-Z0-9_]*$/.test(list.trim()) ? new RegExp(`^${list.trim()}\\s*=\\s*(.*)$`, "m").exec(config)?.[1] ?? "" : list;
      if (macro.includes(item)) return true;
    }
  }
  return false;
}

/** The paste-able fix for a missing or misplaced Exim hook. */
function eximFix(config: ServerConfig, acl: string, file: string): string {
  return [
    `add to the ACL ${acl} in ${file}, before its relay refusal (require ... message = relay not permitted):`,
    `  accept`,
    `    hosts = net-iplsearch;${config.eximHosts}`,
    "Debian: the ACL is /etc/exim4/conf.d/acl/30_exim4-config_check_rcpt (split config) or /etc/exim4/exim4.conf.template; put it before",
    "`accept hosts = +relay_from_hosts`, then: update-exim4.conf && systemctl reload exim4 (dc_relay_nets cannot carry it: its list splits the item at ';')",
  ].join("\n");
}

/**
 * Verdict on `exim.hook`: the RCPT ACL (acl_smtp_rcpt) must accept hosts in
 * the lease file before its relay refusal, the first `require` with a
 * `domains =` condition or any statement saying "relay not permitted".
 */
export function eximHookCheck(config: ServerConfig, eximConfig: string, file: string): CheckResult {
  const acl = /^acl_smtp_rcpt\s*=\s*(\S+)\s*$/m.exec(eximConfig)?.[1];
  if (!acl) return fail("exim.hook", `${file} sets no acl_smtp_rcpt: Exim refuses every recipient from remote hosts, leased or not`, eximFix(config, "acl_check_rcpt (and acl_smtp_rcpt = acl_check_rcpt)", file));
  const statements = eximAclStatements(eximConfig, acl);
  if (!statements) return fail("exim.hook", `acl_smtp_rcpt names ${acl}, which ${file} does not define`, eximFix(config, acl, file));
  const hook = statements.findIndex((s) => s.verb === "accept" && admitsFile(s, eximConfig, config.eximHosts));
  const refusal = statements.findIndex((s) => ((s.verb === "require" || s.verb === "deny") && /relay not permitted/i.test(s.text)) || (s.verb === "require" && /(?:^|\s)domains\s*=/m.test(s.text)));
  if (hook === -1) return fail("exim.hook", `the RCPT ACL ${acl} never accepts net-iplsearch;${config.eximHosts}: leased clients are refused`, eximFix(config, acl, file));
  if (refusal !== -1 && refusal < hook) {
    return fail("exim.hook", `the RCPT ACL ${acl} accepts net-iplsearch;${config.eximHosts} only after its relay refusal (statement ${refusal + 1}): leased clients are refused`, eximFix(config, acl, file));
  }
  return pass("exim.hook", `the RCPT ACL ${acl} accepts net-iplsearch;${config.eximHosts} before its relay refusal`);
}

/** The smtpd.conf fix: the table and the match line, before any other match. */
function smtpdFix(config: ServerConfig, file: string): string {
  return `add to ${file}, the match line above every other match line:\n${smtpdHook(config)}\nthen: systemctl restart opensmtpd (smtpctl update table does not read new rules)`;
}

/**
 * Verdict on `opensmtpd.hook`: smtpd.conf declares `table relayctl` on the
 * lease file and a `match from src <relayctl>` rule no earlier match rule
 * can pre-empt (smtpd takes the first rule that matches).
 */
export function smtpdHookCheck(config: ServerConfig, smtpdConf: string, file: string): CheckResult {
  const lines = smtpdConf.split("\n").map((l) => l.replace(/#.*/, "").trim()).filter(Boolean);
  const table = lines.map((l) => new RegExp(`^table\\s+${SMTPD_TABLE}\\s+(?:file:)?(\\S+)`).exec(l)?.[1]).find((p) => p !== undefined);
  if (!table) return fail("opensmtpd.hook", `${file} declares no table ${SMTPD_TABLE}: leased clients are refused`, smtpdFix(config, file));
  if (table !== config.smtpdTable) return fail("opensmtpd.hook", `${file} reads table ${SMTPD_TABLE} from ${table}, but relayctl writes ${config.smtpdTable}`, `set smtpd_table = "${table}" in ${config.path}, or point the table line at ${config.smtpdTable}`);
  const matches = lines.filter((l) => /^match\s/.test(l));
  const hook = matches.findIndex((l) => new RegExp(`\\bfrom\\s+src\\s+<${SMTPD_TABLE}>`).test(l) && !/\breject\b/.test(l));
  if (hook === -1) return fail("opensmtpd.hook", `${file} has no rule \`match from src <${SMTPD_TABLE}> ...\`: leased clients are refused`, smtpdFix(config, file));
  const before = matches.slice(0, hook).find((l) => /\breject\b/.test(l) || /\bfrom\s+any\b.*\bfor\s+any\b/.test(l));
  if (before) return fail("opensmtpd.hook", `${file}: \`${before}\` comes before the relayctl rule and decides first`, smtpdFix(config, file));
  return pass("opensmtpd.hook", `${file} relays for table ${SMTPD_TABLE} (${table}) before any other rule decides`);
}

/** What keeps the server's user from asking smtpctl_socket for a reload (null: nothing); gathered for smtpctlCheck. */
export function smtpctlSocketProblem(path: string, serverUser: Principal): string | null {
  const st = lstatOrNull(path);
  if (!st) return `${path} does not exist`;
  if (!st.isSocket()) return `${path} is not a socket`;
  return accessProblem(path, serverUser, "write");
}

/**
 * Verdict on `opensmtpd.smtpctl`: smtpd takes `update table` only from
 * root, so a server running as another user must ask smtpctl_socket (a
 * root unit running exactly that command), and the socket must let it in.
 * `socketProblem` is smtpctlSocketProblem's answer when smtpctl_socket is set.
 */
export function smtpctlCheck(smtpctl: string | undefined, serverUser: Principal, config: ServerConfig, socketProblem: string | null = null): CheckResult {
  if (!smtpctl) return fail("opensmtpd.smtpctl", "smtpctl not found in PATH, /usr/sbin, /usr/local/sbin or /sbin", `install OpenSMTPD, or set smtpctl = "/path/to/smtpctl" in ${config.path}`);
  const stale = "every rewrite would fail and smtpd keep its old table (the server refuses to start)";
  const socket = config.smtpctlSocket;
  if (socket) {
    if (socketProblem) return fail("opensmtpd.smtpctl", `smtpctl_socket: ${socketProblem}: ${stale}`, "run install.sh server (it writes relayctl-smtpctl.socket and relayctl-smtpctl@.service), then: systemctl enable --now relayctl-smtpctl.socket");
    return pass("opensmtpd.smtpctl", `${serverUser.name} reloads table ${SMTPD_TABLE} through ${socket}, where relayctl-smtpctl.socket runs smtpctl as root`);
  }
  if (serverUser.uid !== 0) {
    return fail("opensmtpd.smtpctl", `the server runs as ${serverUser.name}, but smtpd accepts \`smtpctl update table\` from root only: ${stale}`,
      `echo 'smtpctl_socket = "${SMTPCTL_SOCKET}"' >> ${shellQuote(config.path)}, then run install.sh server (it installs relayctl-smtpctl.socket, which runs exactly \`smtpctl update table ${SMTPD_TABLE}\` as root for group relayctl; docs/opensmtpd.md)`);
  }
  return pass("opensmtpd.smtpctl", `${smtpctl} can reload table ${SMTPD_TABLE} (the server runs as root)`);
}

/** Verdicts on the line file: present, readable by the MTA's user, replaceable by the server, and no entry without a live lease. */
async function lineFileChecks(id: string, path: string, reader: Principal | null, i: MtaInput): Promise<CheckResult[]> {
  if (!existsSync(path)) return [fail(`${id}.file`, `${path} is missing: the MTA admits no leased client`, "start the relayctl server, which writes it")];
  const problems = [reader ? accessProblem(path, reader, "read") : null, accessProblem(dirname(path) + "/.", i.serverUser, "write")].filter((p): p is string => p !== null);
  const out = [problems.length ? fail(`${id}.file`, problems.join("; "), `chmod 644 ${shellQuote(path)}; chown ${shellQuote(i.serverUser.name)} ${shellQuote(dirname(path))}`) : pass(`${id}.file`, `${path} is readable by ${reader?.name ?? "the MTA"} and replaceable by ${i.serverUser.name}`)];
  const keys = lineFileKeys(readFileSync(path, "utf8"));
  const { rows, error } = await i.leases();
  if (error) out.push(warn(`${id}.frozen`, `cannot compare ${path} with the leases: ${error}`, "see server.database"));
  else {
    const f = frozenEntries(keys, rows, Date.now(), statSync(path).mtimeMs);
    out.push(f.entries
      ? fail(`${id}.frozen`, `${f.entries} entries of ${path} have no live lease and still relay (since ${f.since}): the server is not keeping it current`, `systemctl start relayctl, or run: relayctl server sweep --config ${shellQuote(i.config.path)}`)
      : pass(`${id}.frozen`, `every entry of ${path} (${keys.length}) has a live lease`));
  }
  return out;
}

/** Exim's facts (`exim -bP config_file exim_user`, `exim -bP config`), then the verdicts. */
export async function eximChecks(i: MtaInput): Promise<CheckResult[]> {
  const exim = findPostfixTool("exim4") ?? findPostfixTool("exim");
  if (!exim) return [fail("exim.config", "exim not found in PATH, /usr/sbin, /usr/local/sbin or /sbin", "install Exim (apt-get install exim4-daemon-light), or use another lookup")];
  const opts = await runTool([exim, "-bP", "config_file", "exim_user"], TOOL_TIMEOUT_MS);
  const text = await runTool([exim, "-bP", "config"], TOOL_TIMEOUT_MS);
  if (opts.code !== 0 || text.code !== 0 || opts.timedOut || text.timedOut) {
    return [fail("exim.config", `${exim} -bP config failed: ${(text.stderr || opts.stderr).trim().split("\n").at(-1) ?? "timed out"}`, "run relayctl doctor as root (exim shows its configuration to admin users only)")];
  }
  const file = /^(\S+)$/m.exec(opts.stdout)?.[1] ?? "exim's configuration";
  const user = /^exim_user\s*=\s*(\S+)/m.exec(opts.stdout)?.[1] ?? "Debian-exim";
  return [pass("exim.config", `${exim} reads ${file}`), eximHookCheck(i.config, text.stdout, file), ...(await lineFileChecks("exim", i.config.eximHosts, lookupUser(user), i))];
}

/** smtpd's facts (`smtpd -n -f FILE`, the file's text, smtpctl), then the verdicts. */
export async function smtpdChecks(i: MtaInput, file = "/etc/smtpd.conf"): Promise<CheckResult[]> {
  const smtpd = findPostfixTool("smtpd");
  if (!smtpd) return [fail("opensmtpd.config", "smtpd not found in PATH, /usr/sbin, /usr/local/sbin or /sbin", "install OpenSMTPD (apt-get install opensmtpd), or use another lookup")];
  const r = await runTool([smtpd, "-n", "-f", file], TOOL_TIMEOUT_MS);
  if (r.code !== 0 || r.timedOut) return [fail("opensmtpd.config", `${smtpd} -n -f ${file} refuses the configuration: ${(r.stderr + r.stdout).trim().split("\n")[0] ?? "timed out"}`, `fix ${file}; smtpd does not start with it`)];
  const out = [pass("opensmtpd.config", `${smtpd} accepts ${file}`), smtpdHookCheck(i.config, readFileSync(file, "utf8"), file)];
  const socket = i.config.smtpctlSocket;
  out.push(smtpctlCheck(findPostfixTool("smtpctl", i.config.smtpctl), i.serverUser, i.config, socket ? smtpctlSocketProblem(socket, i.serverUser) : null));
  // smtpd reads tables as root before dropping privileges: any reader will do.
  out.push(...(await lineFileChecks("opensmtpd", i.config.smtpdTable, lookupUser("root"), i)));
  return out;
}

/** The checks for lookups that hook another MTA than Postfix, by lookup name; absent for Postfix's own. */
export const MTA_CHECKS: Partial<Record<LookupKind, (i: MtaInput) => Promise<CheckResult[]>>> = {
  exim: eximChecks,
  opensmtpd: (i) => smtpdChecks(i),
};
