import { defineCommand } from "citty";
import { formatDuration } from "../../lib/duration.ts";
import { listClients, type ClientView } from "../../server/admin.ts";
import { common, printResult } from "../shared.ts";

function inWords(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s <= 0) return "expired";
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

/** Renders clients as an aligned table for people. */
export function renderClientTable(clients: ClientView[], now = Date.now()): string {
  const rows = [["NAME", "ADDRESS", "RENEWED", "EXPIRES IN", "TTL", "ALLOW"]];
  for (const c of clients) {
    const leases = c.leases.length ? c.leases : [null];
    for (const l of leases) {
      rows.push([c.name, l?.ip ?? "-", l ? l.renewed_at.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-", l ? inWords(Date.parse(l.expires_at) - now) : "-", formatDuration(c.ttl), c.allow.join(",") || "-"]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).join("\n");
}

/** `server list`: a table, or `{"clients": [...]}` with --json. */
export async function runServerList(opts: { config?: string; json?: boolean }): Promise<ClientView[]> {
  const clients = await listClients({ configPath: opts.config });
  printResult(opts.json, { clients }, () => renderClientTable(clients));
  return clients;
}

/** `relayctl server list`. */
export const listCommand = defineCommand({
  meta: { name: "list", description: "List clients, their addresses, last renewal and expiry" },
  args: { ...common, json: { type: "boolean", description: "print JSON" } },
  run: ({ args }) => runServerList({ config: args.config, json: args.json }).then(() => undefined),
});
