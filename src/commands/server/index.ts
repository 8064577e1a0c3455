import { defineCommand } from "citty";
import { serverConfigToRun } from "../../lib/config.ts";
import { log, setLogLevel, setVerbosity } from "../../lib/logging.ts";
import { startServer } from "../../server/server.ts";
import { common, ifNoSubcommand } from "../shared.ts";
import { addCommand } from "./add.ts";
import { editCommand } from "./edit.ts";
import { listCommand } from "./list.ts";
import { logCommand } from "./log.ts";
import { migrateCommand } from "./migrate.ts";
import { postfixPgsqlCommand } from "./postfix-pgsql.ts";
import { revokeCommand } from "./revoke.ts";
import { rotateCommand } from "./rotate.ts";
import { statusCommand } from "./status.ts";
import { sweepCommand } from "./sweep.ts";

/** Runs the server until SIGTERM or SIGINT, then stops cleanly; refuses to run without a config file. */
export async function runServer(opts: { config?: string; verbose?: boolean }): Promise<void> {
  // A service logs what it does; only cron-run commands stay quiet.
  setVerbosity({ verbose: opts.verbose });
  if (!opts.verbose) log.level = 3;
  const server = await startServer({ configPath: serverConfigToRun(opts.config) });
  if (!opts.verbose) setLogLevel(server.core.config.logLevel);
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      log.info(`${signal}: shutting down`);
      server.stop().then(resolve, resolve);
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => {
      log.info("SIGHUP: reloading configuration and TLS files");
      server.reload().catch((err) => log.error(`reload failed: ${(err as Error).message}`));
    });
  });
}

/** `relayctl server`: runs the server bare, manages its clients through the subcommands (statically imported: the whole command is one lazily loaded chunk). */
export const serverCommand = defineCommand({
  meta: {
    name: "server",
    description: "Bare `relayctl server` runs the lease server on the mail host (needs /etc/relayctl/server.toml or --config; `install.sh server` writes it); the subcommands manage its clients",
  },
  args: { ...common },
  subCommands: { add: addCommand, edit: editCommand, list: listCommand, revoke: revokeCommand, rotate: rotateCommand, log: logCommand, status: statusCommand, sweep: sweepCommand, "postfix-pgsql": postfixPgsqlCommand, migrate: migrateCommand },
  run: ifNoSubcommand(({ args }) => runServer({ config: args.config, verbose: args.verbose })),
});
