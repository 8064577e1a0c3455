import { defineCommand } from "citty";
import { loadServerConfig } from "../../lib/config.ts";
import { postfixPgsqlFile } from "../../server/stores/tools.ts";
import { common } from "../shared.ts";

/** `server postfix-pgsql`: prints the pgsql: table file for Postfix hosts that query the shared database directly. */
export function runServerPostfixPgsql(opts: { config?: string; user?: string; path?: string }): string {
  const text = postfixPgsqlFile(loadServerConfig(opts.config), { user: opts.user, path: opts.path });
  process.stdout.write(text);
  return text;
}

/** `relayctl server postfix-pgsql`. */
export const postfixPgsqlCommand = defineCommand({
  meta: { name: "postfix-pgsql", description: "Print a Postfix pgsql: table file that asks the shared PostgreSQL database for live leases (prefix match and expiry in SQL)" },
  args: {
    ...common,
    user: { type: "string", description: "PostgreSQL role Postfix logs in as (default: the one in database); it needs only USAGE on schema relayctl and SELECT on relayctl.leases", valueHint: "ROLE" },
    path: { type: "string", description: "where the file will be installed, for the main.cf lines in its comments (default /etc/postfix/relayctl-pgsql.cf)", valueHint: "PATH" },
  },
  run: ({ args }) => void runServerPostfixPgsql({ config: args.config, user: args.user, path: args.path }),
});
