#!/usr/bin/env bun
import { defineCommand, renderUsage, runCommand, type ArgsDef, type CommandDef } from "citty";
import { clientCommand } from "./commands/client.ts";
import { doctorCommand } from "./commands/doctor.ts";
import { serverCommand } from "./commands/server.ts";
import { ExitCode, formatError, RelayError } from "./lib/errors.ts";
import { log, setVerbosity } from "./lib/logging.ts";
import { VERSION, versionLine } from "./lib/version.ts";

/** The root command: `relayctl server|client`. */
export const main = defineCommand({
  meta: { name: "relayctl", version: VERSION, description: "Let hosts on dynamic addresses relay through Postfix, by lease" },
  subCommands: { server: serverCommand, client: clientCommand, doctor: doctorCommand },
});

type AnyCommand = CommandDef<ArgsDef>;

async function resolve<T>(v: T | (() => T | Promise<T>) | Promise<T>): Promise<T> {
  return typeof v === "function" ? await (v as () => T | Promise<T>)() : await v;
}

/**
 * Finds the command argv addresses and rejects flags it does not know:
 * citty ignores them, and a mistyped `--relase` must not renew instead.
 */
async function leafAndCheck(argv: string[]): Promise<{ leaf: AnyCommand; parents: AnyCommand[] }> {
  let cmd: AnyCommand = main as AnyCommand;
  const parents: AnyCommand[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const defs = (await resolve(cmd.args ?? {})) as ArgsDef;
    if (a === "--") break;
    if (a.startsWith("-")) {
      const name = a.replace(/^--?/, "").split("=")[0]!;
      const known = Object.entries(defs).find(([k, d]) => k === name || [(d as { alias?: string | string[] }).alias ?? []].flat().includes(name) || (d.type === "boolean" && name === `no-${k}`));
      if (!known && !["help", "h", "version", "v"].includes(name)) {
        throw new RelayError(`unknown option ${a.split("=")[0]}`, { exitCode: ExitCode.USAGE, hint: "see relayctl --help" });
      }
      if (known && known[1].type !== "boolean" && !a.includes("=")) i++;
      continue;
    }
    const subs = (await resolve(cmd.subCommands ?? {})) as Record<string, AnyCommand>;
    if (subs[a]) {
      parents.push(cmd);
      cmd = await resolve(subs[a]);
    } else if (Object.keys(subs).length && (!cmd.run || !Object.values(defs).some((d) => d.type === "positional"))) {
      // A command with subcommands and no positional arguments of its own
      // (`client`, `server`) must not run when a subcommand is mistyped.
      throw new RelayError(`unknown command ${a}`, { exitCode: ExitCode.USAGE, hint: "see relayctl --help" });
    }
  }
  return { leaf: cmd, parents };
}

/** Runs the CLI and maps every error to one stderr line and a documented exit code. */
export async function cli(argv: string[]): Promise<number> {
  const verbose = argv.includes("--verbose");
  setVerbosity({ verbose });
  try {
    if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-v")) {
      console.log(versionLine());
      return ExitCode.OK;
    }
    const { leaf, parents } = await leafAndCheck(argv);
    if (argv.includes("--help") || argv.includes("-h") || argv.length === 0) {
      console.log(await renderUsage(leaf, parents.at(-1)));
      return argv.length === 0 ? ExitCode.USAGE : ExitCode.OK;
    }
    await runCommand(main, { rawArgs: argv });
    return ExitCode.OK;
  } catch (err) {
    // citty's own usage errors: E_UNKNOWN_COMMAND, E_NO_COMMAND, ... and EARG (missing required argument).
    const isCittyUsage = (err as Error)?.name === "CLIError" || ((err as { code?: string })?.code?.startsWith("E_") ?? false);
    const code = err instanceof RelayError ? err.exitCode : isCittyUsage ? ExitCode.USAGE : ExitCode.FAILED;
    if (verbose && err instanceof Error && !(err instanceof RelayError)) log.error(err);
    process.stderr.write(`relayctl: ${formatError(err)}${isCittyUsage ? " (see relayctl --help)" : ""}\n`);
    if (verbose && err instanceof Error && err.stack) process.stderr.write(err.stack + "\n");
    return code;
  }
}

if (import.meta.main) {
  const code = await cli(process.argv.slice(2));
  process.exit(code);
}
