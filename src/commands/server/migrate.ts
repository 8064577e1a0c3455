import { defineCommand } from "citty";
import { loadServerConfig } from "../../lib/config.ts";
import { migrateToPostgres, type MigrateResult } from "../../server/stores/tools.ts";
import { common } from "../shared.ts";

/** `server migrate --to URL`: copies SQLite state into PostgreSQL and says what to change in server.toml. */
export async function runServerMigrate(opts: { config?: string; to: string }): Promise<MigrateResult> {
  const config = loadServerConfig(opts.config);
  const r = await migrateToPostgres(config, opts.to);
  const skipped = r.skipped.clients + r.skipped.leases + r.skipped.audit;
  console.log(
    [
      `copied ${r.clients} clients, ${r.leases} live leases and ${r.audit} audit entries to ${opts.to.replace(/\/\/([^:@/]*):[^@/]*@/, "//$1@")}`,
      skipped ? `kept what was already there: ${r.skipped.clients} clients, ${r.skipped.leases} leases, ${r.skipped.audit} audit entries` : "",
      `next: stop relayctl, add this line to ${config.path} (password in database_password_file, mode 0600, or in the URL), and start it again:`,
      `  ${r.configLine}`,
      "every other relay host gets the same database line; see relayctl server postfix-pgsql for Postfix hosts without relayctl",
    ]
      .filter(Boolean)
      .join("\n"),
  );
  return r;
}

/** `relayctl server migrate`. */
export const migrateCommand = defineCommand({
  meta: { name: "migrate", description: "Copy clients, live leases and the audit log from the SQLite state into PostgreSQL (safe to run twice)" },
  args: { ...common, to: { type: "string", required: true, description: "the PostgreSQL URL, e.g. postgres://relayctl@localhost/relayctl?host=/var/run/postgresql", valueHint: "URL" } },
  run: ({ args }) => runServerMigrate({ config: args.config, to: args.to }).then(() => undefined),
});
