import { defineCommand } from "citty";
import { parseDuration } from "../../lib/duration.ts";
import { usageError } from "../../lib/errors.ts";
import { EXPORT_FORMATS, type AddressView, type ExportFormat } from "../../server/auditlog.ts";
import { exportAuditLog, readAddressHistory, readAuditLog, type AuditView } from "../../server/admin.ts";
import { common, printResult } from "../shared.ts";

/** Renders audit entries one per line: time, event, client, address, source, detail. */
export function renderAuditLog(rows: AuditView[]): string {
  return rows
    .map((r) => [r.ts, r.event, r.client ?? "-", r.ip ?? "-", r.source ? `from ${r.source}` : "", r.count > 1 ? `x${r.count}` : "", r.detail ?? ""].filter(Boolean).join("  "))
    .join("\n");
}

/** Renders a client's address history one address a line: address, first and last seen, grants, live. */
export function renderAddresses(rows: AddressView[]): string {
  return rows.map((r) => [r.address, `first ${r.first_seen}`, `last ${r.last_seen}`, `${r.grants} grant${r.grants === 1 ? "" : "s"}`, r.live ? "live" : ""].filter(Boolean).join("  ")).join("\n");
}

/**
 * Writes to stdout and waits until it took the chunk, so a slow reader holds
 * back the next page instead of memory growing; a reader that went away
 * (`| head`) ends the export instead of leaving it waiting.
 */
async function toStdout(chunk: string): Promise<void> {
  if (!chunk || process.stdout.write(chunk)) return;
  await new Promise<void>((resolve, reject) => {
    const out = process.stdout;
    const done = (err?: Error): void => {
      out.off("drain", onDrain);
      out.off("error", done);
      out.off("close", onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => done();
    const onClose = (): void => done(new Error("stdout closed"));
    out.once("drain", onDrain);
    out.once("error", done);
    out.once("close", onClose);
  });
}

/**
 * `server log`: the audit log, oldest first; `--json` gives `{"events": [...]}`.
 * `--addresses` (with `--client`): the addresses that client held;
 * `--export jsonl|csv`: every entry within --since and audit_retention, streamed.
 */
export async function runServerLog(opts: { config?: string; client?: string; since?: string; json?: boolean; limit?: string; addresses?: boolean; export?: string }): Promise<AuditView[] | AddressView[] | number> {
  const sinceSeconds = opts.since === undefined ? undefined : parseDuration(opts.since, "since", "--since");
  if (opts.export !== undefined) {
    if (!(EXPORT_FORMATS as readonly string[]).includes(opts.export)) throw usageError(`--export ${opts.export}: not a format`, `use --export ${EXPORT_FORMATS.join(" or --export ")}`);
    if (opts.json || opts.addresses || opts.limit !== undefined) throw usageError("--export writes every entry in its own format", "leave out --json, --addresses and --limit (narrow it with --since and --client)");
    return exportAuditLog({ configPath: opts.config, client: opts.client, sinceSeconds, format: opts.export as ExportFormat, write: toStdout });
  }
  if (opts.addresses) {
    if (opts.client === undefined) throw usageError("--addresses needs --client NAME", "e.g. relayctl server log --client nas --addresses");
    if (opts.limit !== undefined) throw usageError("--addresses lists every address the log holds", "leave out --limit (narrow it with --since)");
    const rows = await readAddressHistory({ configPath: opts.config, client: opts.client, sinceSeconds });
    printResult(opts.json, { client: opts.client, addresses: rows }, () => renderAddresses(rows));
    return rows;
  }
  const limit = opts.limit === undefined ? 1000 : Number(opts.limit);
  if (!Number.isInteger(limit) || limit < 1) throw usageError(`--limit ${opts.limit}: not a positive whole number`);
  const rows = await readAuditLog({ configPath: opts.config, client: opts.client, sinceSeconds, limit });
  printResult(opts.json, { events: rows }, () => renderAuditLog(rows));
  return rows;
}

/** `relayctl server log`. */
export const logCommand = defineCommand({
  meta: { name: "log", description: "Show the audit log: grants, renewals, releases, expiries, revocations, refusals" },
  args: {
    ...common,
    client: { type: "string", description: "only this client's events", valueHint: "NAME" },
    since: { type: "string", description: "only events newer than this (e.g. 1h, 2d)", valueHint: "D" },
    limit: { type: "string", description: "at most this many newest events (default 1000)", valueHint: "N" },
    addresses: { type: "boolean", description: "with --client: the addresses it held, first and last seen (within audit_retention)" },
    export: { type: "string", description: "stream every event (within --since and audit_retention) as jsonl or csv", valueHint: "FORMAT" },
    json: { type: "boolean", description: "print JSON" },
  },
  run: ({ args }) =>
    runServerLog({ config: args.config, client: args.client, since: args.since, json: args.json, limit: args.limit, addresses: args.addresses, export: args.export }).then(() => undefined),
});
