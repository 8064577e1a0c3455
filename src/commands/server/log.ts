import { defineCommand } from "citty";
import { parseDuration } from "../../lib/duration.ts";
import { usageError } from "../../lib/errors.ts";
import { readAuditLog, type AuditView } from "../../server/admin.ts";
import { common, printResult } from "../shared.ts";

/** Renders audit entries one per line: time, event, client, address, source, detail. */
export function renderAuditLog(rows: AuditView[]): string {
  return rows
    .map((r) => [r.ts, r.event, r.client ?? "-", r.ip ?? "-", r.source ? `from ${r.source}` : "", r.count > 1 ? `x${r.count}` : "", r.detail ?? ""].filter(Boolean).join("  "))
    .join("\n");
}

/** `server log`: the audit log, oldest first; `--json` gives `{"events": [...]}`. */
export async function runServerLog(opts: { config?: string; client?: string; since?: string; json?: boolean; limit?: string }): Promise<AuditView[]> {
  const limit = opts.limit === undefined ? 1000 : Number(opts.limit);
  if (!Number.isInteger(limit) || limit < 1) throw usageError(`--limit ${opts.limit}: not a positive whole number`);
  const rows = await readAuditLog({
    configPath: opts.config,
    client: opts.client,
    sinceSeconds: opts.since === undefined ? undefined : parseDuration(opts.since, "since", "--since"),
    limit,
  });
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
    json: { type: "boolean", description: "print JSON" },
  },
  run: ({ args }) => runServerLog({ config: args.config, client: args.client, since: args.since, json: args.json, limit: args.limit }).then(() => undefined),
});
