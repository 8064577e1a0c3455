/**
 * Bench-only entry point: the relayctl CLI with nothing but the `client`
 * command, built with the same options as dist/relayctl. Timing it beside
 * the full binary shows what loading only the client path (lazy imports of
 * server, SQLite and doctor code) would save on each cron renewal.
 */
import { defineCommand, runCommand } from "citty";
import { clientCommand } from "../src/commands/client.ts";
import { ExitCode, formatError, RelayError } from "../src/lib/errors.ts";

const main = defineCommand({ meta: { name: "relayctl" }, subCommands: { client: clientCommand } });
try {
  await runCommand(main, { rawArgs: process.argv.slice(2) });
  process.exit(ExitCode.OK);
} catch (err) {
  process.stderr.write(`relayctl: ${formatError(err)}\n`);
  process.exit(err instanceof RelayError ? err.exitCode : ExitCode.FAILED);
}
