import type { ServerConfig } from "../../lib/config.ts";
import { connect } from "node:net";
import { ExitCode, RelayError, usageError, type ExitCodeValue } from "../../lib/errors.ts";
import { requirePostfixTool, runTool } from "../postfix.ts";
import type { LookupContext } from "./types.ts";
import { lineFileRow } from "./linefile.ts";

/** The table name smtpd.conf must declare: `smtpctl update table` names it. */
export const SMTPD_TABLE = "relayctl";

/**
 * Always the first entry: smtpd types a file: table by its contents, and
 * refuses one with no entry in `match from src` ("may not be used for from
 * lookups"), at start and so after every restart while no lease is live.
 * 0.0.0.0 is never the source of a TCP connection, and relayctl never
 * leases it (a special address), so it admits no one.
 */
export const SMTPD_PREAMBLE = "# Never a client: keeps the table a list of networks while no lease is live.\n0.0.0.0\n";

/** The smtpd.conf lines that admit leased clients: the table, and a match before any other relay rule. */
export function smtpdHook(config: ServerConfig): string {
  return `table ${SMTPD_TABLE} file:${config.smtpdTable}\nmatch from src <${SMTPD_TABLE}> for any action "relay"`;
}

/** Where install.sh's relayctl-smtpctl.socket listens (smtpctl_socket in server.toml names it). */
export const SMTPCTL_SOCKET = "/run/relayctl-smtpctl.sock";

/** The hint of every failed reload: what smtpd does meanwhile. */
const KEEPS = "smtpd keeps its last table";

/** A failed reload; USAGE when only a human can fix it (the server then refuses to start), FAILED when a retry may work. */
function reloadFailed(detail: string, hint: string, exitCode: ExitCodeValue = ExitCode.FAILED): RelayError {
  return new RelayError(`smtpctl update table ${SMTPD_TABLE} failed: ${detail}`, { exitCode, hint: `${KEEPS}; ${hint}` });
}

/** The last two lines smtpctl printed, for an error. */
const lastWords = (text: string): string => text.trim().split("\n").slice(-2).join(" ");

/**
 * The reload step: `smtpctl update table relayctl`. smtpd reads a file:
 * table only at start and when told, and answers "command succeeded" once
 * its lookup process holds the new table (6.8 waits for it). smtpctl and
 * smtpd take it from root only, so a server running as another user asks
 * relayctl-smtpctl.socket (smtpctl_socket) instead; without one it is
 * refused here, before anything is written. A failure leaves smtpd on its
 * last table; the caller retries like a failed postmap.
 */
export function smtpctlReload(ctx: LookupContext, euid = process.geteuid?.() ?? 0): () => Promise<void> {
  const timeoutMs = ctx.config.postmapTimeout * 1000;
  const socket = ctx.config.smtpctlSocket;
  if (socket) return () => askSmtpctlSocket(socket, timeoutMs);
  if (euid !== 0) {
    throw usageError(
      `lookup = "opensmtpd" needs \`smtpctl update table ${SMTPD_TABLE}\`, which smtpd takes from root only, and this process runs as uid ${euid}`,
      `add smtpctl_socket = "${SMTPCTL_SOCKET}" to ${ctx.config.path} and run install.sh server, which installs relayctl-smtpctl.socket to run it as root (docs/opensmtpd.md)`,
    );
  }
  const smtpctl = requirePostfixTool("smtpctl", ctx.config.smtpctl, "OpenSMTPD");
  return async () => {
    const r = await runTool([smtpctl, "update", "table", SMTPD_TABLE], timeoutMs);
    if (r.code === 0 && !r.timedOut) return;
    throw reloadFailed(r.timedOut ? `timed out after ${timeoutMs / 1000}s` : lastWords(r.stderr + r.stdout) || `exit code ${r.code}`, "check that smtpd runs and that its smtpd.conf declares the table; the server retries");
  };
}

/**
 * One reload through relayctl-smtpctl.socket: systemd (Accept=yes) starts
 * a root instance of `smtpctl update table relayctl` with the connection as
 * its stdin, stdout and stderr, so smtpctl's words come back and the
 * connection ends when it exits. Nothing is sent: the root side runs its
 * fixed argv whatever a caller says, so the socket grants one act only.
 */
export async function askSmtpctlSocket(path: string, timeoutMs: number): Promise<void> {
  const answer = await new Promise<{ text: string } | { code: string }>((resolve) => {
    let text = "";
    const sock = connect({ path });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ code: "ETIMEDOUT" });
    }, timeoutMs);
    sock.setEncoding("utf8");
    sock.on("data", (d: string) => {
      // smtpctl says a line or two; more is not smtpctl.
      if (text.length < 4096) text += d;
    });
    sock.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ code: err.code ?? err.message });
    });
    sock.once("close", () => {
      clearTimeout(timer);
      resolve({ text });
    });
  });
  if ("text" in answer) {
    if (/^command succeeded$/m.test(answer.text)) return;
    if (/need root privileges/.test(answer.text)) throw reloadFailed(`${path} runs smtpctl without root: ${lastWords(answer.text)}`, "the relayctl-smtpctl@.service unit must run as root (install.sh server writes it so)", ExitCode.USAGE);
    throw reloadFailed(lastWords(answer.text) || `${path} closed without an answer`, "check that smtpd runs and that its smtpd.conf declares the table (journalctl -u 'relayctl-smtpctl@*'); the server retries");
  }
  switch (answer.code) {
    case "ENOENT":
      throw reloadFailed(`smtpctl_socket ${path} does not exist`, `run install.sh server, which installs relayctl-smtpctl.socket (systemctl enable --now relayctl-smtpctl.socket)`, ExitCode.USAGE);
    case "EACCES":
    case "EPERM":
      throw reloadFailed(`this user may not connect to smtpctl_socket ${path}`, "the socket must be group relayctl, mode 0660, as install.sh's relayctl-smtpctl.socket makes it", ExitCode.USAGE);
    case "ETIMEDOUT":
      throw reloadFailed(`no answer on ${path} within ${timeoutMs / 1000}s`, "the server retries");
    default:
      throw reloadFailed(`cannot connect to smtpctl_socket ${path}: ${answer.code}`, "systemctl start relayctl-smtpctl.socket; the server retries");
  }
}

/** The opensmtpd row of the lookup table: a file: table, reloaded with smtpctl after each rewrite. */
export const opensmtpdLookupType = lineFileRow(
  { name: "opensmtpd", key: "smtpd_table", example: "/etc/smtpd/relayctl/clients", path: (config) => config.smtpdTable, line: (text) => text, preamble: SMTPD_PREAMBLE, reload: smtpctlReload },
);
