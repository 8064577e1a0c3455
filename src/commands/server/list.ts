import { defineCommand } from "citty";
import { formatDuration } from "../../lib/duration.ts";
import { listClients, type ClientView } from "../../server/admin.ts";
import { RelayError } from "../../lib/errors.ts";
import { common, printResult } from "../shared.ts";

function inWords(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s <= 0) return "expired";
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

/** Renders clients as an aligned table for people; the overdue columns come last, so scripts reading the first ones keep working. */
export function renderClientTable(clients: ClientView[], now = Date.now()): string {
  const rows = [["NAME", "ADDRESS", "RENEWED", "EXPIRES IN", "TTL", "ALLOW", "STATE", "LAST SEEN", "LAST ADDRESS", "EXPECT"]];
  for (const c of clients) {
    const leases = c.leases.length ? c.leases : [null];
    const seen = c.last_seen ? `${inWords(now - Date.parse(c.last_seen)).replace("expired", "0s")} ago` : "never";
    const expect = c.expect === null ? "-" : `${formatDuration(c.expect)}${c.expect_learned ? " (learned)" : ""}`;
    for (const l of leases) {
      rows.push([
        c.name, l?.ip ?? "-", l ? l.renewed_at.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-", l ? inWords(Date.parse(l.expires_at) - now) : "-", formatDuration(c.ttl), c.allow.join(",") || "-",
        c.state, seen, c.last_address ?? "-", expect,
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).join("\n");
}

/**
 * `server list`: a table, or `{"clients": [...]}` with --json. With
 * --overdue only late and silent clients, and exit 1 when there are any
 * (a cron job or a Nagios-style check), after printing them.
 */
export async function runServerList(opts: { config?: string; json?: boolean; overdue?: boolean }): Promise<ClientView[]> {
  const all = await listClients({ configPath: opts.config });
  const clients = opts.overdue ? all.filter((c) => c.state !== "ok") : all;
  printResult(opts.json, { clients }, () => (opts.overdue && !clients.length ? "" : renderClientTable(clients)));
  if (opts.overdue && clients.length) {
    const count = (st: string): number => clients.filter((c) => c.state === st).length;
    throw new RelayError(`${count("late")} client(s) late, ${count("silent")} silent: ${clients.map((c) => c.name).join(", ")}`, {
      hint: "see docs/operations.md, Knowing when a client goes silent",
    });
  }
  return clients;
}

/** `relayctl server list`. */
export const listCommand = defineCommand({
  meta: { name: "list", description: "List clients, their addresses, last renewal, expiry and overdue state" },
  args: {
    ...common,
    json: { type: "boolean", description: "print JSON" },
    overdue: { type: "boolean", description: "only late and silent clients; exit 1 when there are any (for cron and monitoring checks)" },
  },
  run: ({ args }) => runServerList({ config: args.config, json: args.json, overdue: args.overdue }).then(() => undefined),
});
