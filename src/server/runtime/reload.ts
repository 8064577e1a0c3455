import type { ServerConfig } from "../../lib/config.ts";

/** Settings bound to sockets, files or state opened at start: a reload keeps the running value and says so. */
const RESTART_KEYS = [
  ["listen", (c: ServerConfig) => JSON.stringify(c.listen)],
  ["state_dir", (c: ServerConfig) => c.stateDir],
  ["database", (c: ServerConfig) => c.database ?? ""],
  ["map", (c: ServerConfig) => c.map],
  ["map_type", (c: ServerConfig) => c.mapType ?? ""],
  ["postmap", (c: ServerConfig) => c.postmap ?? ""],
  ["lookup", (c: ServerConfig) => c.lookup],
  ["policy_socket", (c: ServerConfig) => c.policySocket],
  ["exim_hosts", (c: ServerConfig) => c.eximHosts],
  ["smtpd_table", (c: ServerConfig) => c.smtpdTable],
  ["smtpctl", (c: ServerConfig) => c.smtpctl ?? ""],
  ["smtpctl_socket", (c: ServerConfig) => c.smtpctlSocket ?? ""],
  ["export", (c: ServerConfig) => JSON.stringify(c.exports.map(({ format, path, reload, static: s }) => [format, path, reload, s.map((n) => n.text)]))],
] as const;

/**
 * What a SIGHUP applies: the new configuration with every setting that
 * needs a restart kept at its running value, and a warning for each of
 * those that changed. Pure, so the rule is tested without a server.
 */
export function planReload(running: ServerConfig, next: ServerConfig): { config: ServerConfig; warnings: string[] } {
  const warnings = RESTART_KEYS.filter(([, get]) => get(running) !== get(next)).map(([key]) => `reload: ${key} changed; restart the server for it to take effect`);
  const config: ServerConfig = {
    ...next,
    listen: running.listen,
    stateDir: running.stateDir,
    database: running.database,
    databasePasswordFile: running.databasePasswordFile,
    databasePasswordWhere: running.databasePasswordWhere,
    map: running.map,
    mapType: running.mapType,
    postmap: running.postmap,
    lookup: running.lookup,
    policySocket: running.policySocket,
    eximHosts: running.eximHosts,
    smtpdTable: running.smtpdTable,
    smtpctl: running.smtpctl,
    smtpctlSocket: running.smtpctlSocket,
    exports: running.exports,
  };
  return { config, warnings };
}
