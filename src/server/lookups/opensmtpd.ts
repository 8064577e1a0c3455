import type { ServerConfig } from "../../lib/config.ts";
import { RelayError } from "../../lib/errors.ts";
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

/**
 * `smtpctl update table relayctl`: smtpd reads a file: table only at start
 * and when told, and answers "command succeeded" once its lookup process
 * holds the new table (6.8 waits for it). A failure leaves smtpd on its last
 * table; the caller retries like a failed postmap.
 */
export function smtpctlReload(ctx: LookupContext): () => Promise<void> {
  const smtpctl = requirePostfixTool("smtpctl", ctx.config.smtpctl, "OpenSMTPD");
  const timeoutMs = ctx.config.postmapTimeout * 1000;
  return async () => {
    const r = await runTool([smtpctl, "update", "table", SMTPD_TABLE], timeoutMs);
    if (r.code === 0 && !r.timedOut) return;
    const detail = r.timedOut ? `timed out after ${timeoutMs / 1000}s` : (r.stderr + r.stdout).trim().split("\n").slice(-2).join(" ") || `exit code ${r.code}`;
    throw new RelayError(`smtpctl update table ${SMTPD_TABLE} failed: ${detail}`, {
      hint: "smtpd keeps its last table; check that smtpd runs, that its smtpd.conf declares the table, and that relayctl runs smtpctl as root; the server retries",
    });
  };
}

/** The opensmtpd row of the lookup table: a file: table, reloaded with smtpctl after each rewrite. */
export const opensmtpdLookupType = lineFileRow(
  { name: "opensmtpd", key: "smtpd_table", example: "/etc/smtpd/relayctl/clients", path: (config) => config.smtpdTable, line: (text) => text, preamble: SMTPD_PREAMBLE, reload: smtpctlReload },
);
