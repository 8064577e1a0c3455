import { defineCommand } from "citty";
import { RelayError } from "../../lib/errors.ts";
import { serverStatus, type StatusView } from "../../server/admin.ts";
import { common, printResult } from "../shared.ts";

/** Renders `server status` for people. */
export function renderStatus(s: StatusView): string {
  const lines = [s.running ? `server: running (pid ${s.status!.pid}, since ${s.status!.started_at}), listening on ${s.status!.listen}` : "server: not running"];
  lines.push(`public url: ${s.public_url}`);
  lines.push(s.cert ? `certificate: ${s.cert.path}, expires ${s.cert.expires_at} (${s.cert.days_left} days), pin ${s.cert.pin}` : "certificate: none yet (created at first start or server add)");
  if (s.status?.pin_changed_at) lines.push(`  pin changed at ${s.status.pin_changed_at} (certificate replaced): clients enrolled with --pin must re-enroll`);
  if (s.map) {
    lines.push(`map: ${s.map.type}:${s.map.path}, ${s.map.entries} entries`);
    if (s.map.frozen.entries) lines.push(`  FROZEN: ${s.map.frozen.entries} entries have no live lease and still relay (since ${s.map.frozen.since}); start the server, or run relayctl server sweep`);
    const l = s.status?.lookup;
    if (l?.last_rebuild_at) lines.push(`  last rebuild ${l.last_rebuild_at} in ${l.last_rebuild_ms} ms (${l.rebuilds} since start)`);
  }
  if (s.policy) lines.push(`policy: ${s.policy.socket}, ${s.policy.listening ? "listening" : "not listening (Postfix defers relay attempts with 451)"}`);
  lines.push(`state: ${s.state.kind === "sqlite" ? `SQLite in ${s.state.where}` : `PostgreSQL ${s.state.where}`}${s.state_error ? ` (cannot be read: ${s.state_error})` : ""}`);
  lines.push(`clients: ${s.clients}, live leases: ${s.leases}`);
  lines.push(s.status?.degraded.length ? `degraded: ${s.status.degraded.join("; ")}` : "degraded: no");
  return lines.join("\n");
}

/**
 * Why `server status` must exit non-zero, or null when the server runs and
 * is healthy. Stopped, starting and degraded all exit 1 (FAILED: look, and
 * it may heal or need a start); 2 stays a bad config, as for every command.
 */
export function statusProblem(s: StatusView): RelayError | null {
  if (!s.running) return new RelayError("server is not running", { hint: "start it: systemctl start relayctl (or relayctl server --config PATH)" });
  if (s.state_error) return new RelayError(`state cannot be read: ${s.state_error}`, { hint: "check that the database runs and the database line in server.toml" });
  if (!s.status) return new RelayError("server holds its state but has not published its status yet", { hint: "it is starting; ask again in a few seconds, or see journalctl -u relayctl" });
  if (s.status.degraded.length) return new RelayError(`server is degraded: ${s.status.degraded.join("; ")}`, { hint: "see the server log (journalctl -u relayctl); it retries by itself" });
  if (s.map?.frozen.entries) return new RelayError(`${s.map.frozen.entries} map entries have no live lease and still relay`, { hint: "the server is not keeping the map current; see journalctl -u relayctl" });
  return null;
}

/** `server status`: prints whether it runs, certificate, map and degraded reasons, then exits 0 only when healthy. */
export async function runServerStatus(opts: { config?: string; json?: boolean }): Promise<StatusView> {
  const s = await serverStatus({ configPath: opts.config });
  printResult(opts.json, s, () => renderStatus(s));
  const problem = statusProblem(s);
  if (problem) throw problem;
  return s;
}

/** `relayctl server status`. */
export const statusCommand = defineCommand({
  meta: { name: "status", description: "Show whether the server runs, its certificate, map and health; exit 0 only when it runs and is healthy, else 1" },
  args: { ...common, json: { type: "boolean", description: "print JSON" } },
  run: ({ args }) => runServerStatus({ config: args.config, json: args.json }).then(() => undefined),
});
