// relayctl(1), generated at build time from the same citty definitions as
// --help (through commandTree), so the page lists exactly the commands and
// flags the binary accepts.
import { allCommands, synopsis, type CommandNode, type FlagInfo } from "./cmdtree.ts";

/**
 * roff-escapes text: backslashes, minus signs, and a leading dot or quote that
 * roff would take as a request; `code` as in --help becomes bold.
 */
export function roff(text: string): string {
  return text
    .replace(/\\/g, "\\e")
    .replace(/-/g, "\\-")
    .replace(/^([.'])/gm, "\\&$1")
    .replace(/`([^`]*)`/g, "\\fB$1\\fR");
}

function flagLabel(f: FlagInfo): string {
  return f.takesValue ? `\\fB\\-\\-${roff(f.name)}\\fR \\fI${roff(f.valueHint ?? f.name.toUpperCase())}\\fR` : `\\fB\\-\\-${roff(f.name)}\\fR`;
}

function commandSection(node: CommandNode): string[] {
  const out = [`.SS "${roff(["relayctl", ...node.path].join(" "))}"`, roff(node.description), ".PP", `.B ${roff(synopsis(node))}`];
  for (const p of node.positionals) out.push(".TP", `\\fI${roff(p.name.toUpperCase())}\\fR`, roff(p.description) + (p.required ? "" : " (optional)"));
  for (const f of node.flags) out.push(".TP", flagLabel(f), roff(f.description) + (f.required ? " (required)" : ""));
  return out;
}

const EXIT_STATUS: [number, string][] = [
  [0, "Done: lease renewed, client added, all doctor checks passed."],
  [1, "Failed, worth retrying: network error, timeout, server or postmap error (after two quick retries); a doctor check failed."],
  [2, "Usage or configuration error: unknown option, bad config key, missing client config, name taken."],
  [3, "Refused: token rejected or revoked, address not allowed, certificate pin mismatch."],
];

const FILES: [string, string][] = [
  ["/etc/relayctl/server.toml", "Server configuration (TOML); see docs/configuration.md."],
  ["/etc/relayctl/client.toml", "Client configuration with the token, written mode 0600 by relayctl client enroll."],
  ["/etc/relayctl/.client.toml.lock", "Lock that makes overlapping client runs take turns."],
  ["/var/lib/relayctl", "Server state: state.db (SQLite), the server lock and the generated certificate in tls/."],
  ["/etc/postfix/relayctl/clients", "The Postfix lookup table the server keeps, holding exactly the live leases."],
];

const ENVIRONMENT: [string, string][] = [
  ["NO_COLOR", "When set (to anything), no output carries colour or other terminal escape codes. Output that is not a terminal never does."],
  ["PATH", "Searched for postmap and postconf (then /usr/sbin and /usr/local/sbin) when server.toml does not name postmap."],
];

/** The whole relayctl(1) page in roff (man macros) for the command tree, dated for reproducible builds. */
export function renderManPage(root: CommandNode, opts: { version: string; date: Date }): string {
  const date = opts.date.toISOString().slice(0, 10);
  const commands = allCommands(root).slice(1);
  const out = [
    `.TH RELAYCTL 1 "${date}" "relayctl ${roff(opts.version)}" "User Commands"`,
    // No hyphenation or justification: flags and paths must read as typed.
    ".nh",
    ".ad l",
    ".SH NAME",
    `relayctl \\- ${roff(root.description.replace(/^./, (c) => c.toLowerCase()))}`,
    ".SH SYNOPSIS",
    ...commands.filter((c) => c.runs).flatMap((c) => [`.B ${roff(synopsis(c))}`, ".br"]),
    ".B relayctl \\-\\-version",
    ".SH DESCRIPTION",
    "One executable for both ends. \\fBrelayctl server\\fR runs an HTTPS endpoint on the mail host that keeps leases (client, address, expiry) in SQLite and a Postfix lookup table holding exactly the live leases. \\fBrelayctl client\\fR, run from cron or a systemd timer on each dynamic host, renews its lease; when it exits 0 Postfix already lets that address relay. \\fBrelayctl doctor\\fR checks a setup and prints the fix for what is wrong.",
    ".PP",
    "Every command takes \\fB\\-\\-help\\fR. Unknown options are refused with exit status 2. Errors are one line on standard error: \\fBrelayctl: \\fRwhat happened\\fB: \\fRwhat to do.",
    ".SH COMMANDS",
    ...commands.flatMap(commandSection),
    ".SH \"EXIT STATUS\"",
    ...EXIT_STATUS.flatMap(([code, text]) => [".TP", `\\fB${code}\\fR`, roff(text)]),
    ".SH FILES",
    ...FILES.flatMap(([path, text]) => [".TP", `\\fI${roff(path)}\\fR`, roff(text)]),
    ".SH ENVIRONMENT",
    ...ENVIRONMENT.flatMap(([name, text]) => [".TP", `\\fB${name}\\fR`, roff(text)]),
    ".SH \"SEE ALSO\"",
    "\\fBpostconf\\fR(5), \\fBpostmap\\fR(1), \\fBaccess\\fR(5); the guides in /usr/share/doc/relayctl or the docs/ directory of the source.",
  ];
  return out.join("\n") + "\n";
}
