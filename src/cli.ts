#!/usr/bin/env bun
import type { ArgsDef, CommandContext, CommandDef } from "citty";
import { resolve } from "./lib/cmdtree.ts";
import { ExitCode, formatError, RelayError } from "./lib/errors.ts";
import { log, setVerbosity } from "./lib/logging.ts";
import { VERSION, versionLine } from "./lib/version.ts";

type AnyCommand = CommandDef<ArgsDef>;

/** The root command: `relayctl server|client|doctor|completion`. */
export const main: AnyCommand = {
  meta: { name: "relayctl", version: VERSION, description: "Let hosts on dynamic addresses relay through Postfix, by lease" },
  // Loaded only when named (each is its own chunk of the build): a cron-run
  // `relayctl client` never evaluates the server, doctor or completion code.
  subCommands: {
    server: () => import("./commands/server/index.ts").then((m) => m.serverCommand),
    client: () => import("./commands/client.ts").then((m) => m.clientCommand),
    doctor: () => import("./commands/doctor.ts").then((m) => m.doctorCommand),
    completion: () => import("./commands/completion.ts").then((m) => m.completionCommand(() => main)),
  },
};

// https://no-color.org: any non-empty NO_COLOR turns colour off. citty only
// honours NO_COLOR=1 and never looks at whether it writes to a terminal.
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Text without terminal escape codes. */
export function plain(text: string): string {
  return text.replace(ANSI, "");
}

/** Text as it may go to a stream: escape codes only for a terminal without NO_COLOR; never trailing blanks. */
export function forStream(text: string, stream: { isTTY?: boolean }): string {
  const colour = stream.isTTY === true && !process.env.NO_COLOR;
  return (colour ? text : plain(text)).replace(/[ \t]+$/gm, "");
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

/**
 * The context citty would run `cmd` with, when rawArgs hold only the plain
 * forms cron lines use: `--flag` and `--name value` (a value not starting with
 * "-"), each a flag `cmd` defines, at most once, no positionals. Anything else
 * is null and goes through citty, as do definitions with defaults, aliases,
 * enums, positionals or a missing required flag. A renewal thus loads neither
 * citty nor the node:util it imports, ~1.5 ms of every cron run.
 */
export async function plainContext(cmd: AnyCommand, rawArgs: string[]): Promise<CommandContext<ArgsDef> | null> {
  const defs = (await resolve(cmd.args ?? {})) as ArgsDef;
  const args: Record<string, unknown> = { _: [] };
  for (let i = 0; i < rawArgs.length; i++) {
    // A kebab-case name is left to citty, which also answers to its camelCase form.
    const name = /^--[a-z0-9]+$/.test(rawArgs[i]!) ? rawArgs[i]!.slice(2) : "";
    const def = Object.hasOwn(defs, name) ? defs[name] : undefined;
    if (!def || Object.hasOwn(args, name)) return null;
    if (def.type === "boolean") args[name] = true;
    else if (def.type === "string" && !(rawArgs[i + 1] ?? "-").startsWith("-")) args[name] = rawArgs[++i];
    else return null;
  }
  for (const [name, def] of Object.entries(defs)) {
    if (def.type === "positional" || def.type === "enum" || "default" in def || "alias" in def || (def.required && !Object.hasOwn(args, name))) return null;
  }
  return { rawArgs, args, cmd } as CommandContext<ArgsDef>;
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
      // citty names only the direct parent; the usage line should be the whole command to type.
      const names = await Promise.all(parents.map(async (p) => ((await resolve(p.meta ?? {})) as { name?: string }).name));
      const parent = parents.length ? { meta: { name: names.join(" "), version: VERSION } } : undefined;
      const { renderUsage } = await import("citty");
      console.log(forStream(await renderUsage(leaf, parent as AnyCommand | undefined), process.stdout));
      return argv.length === 0 ? ExitCode.USAGE : ExitCode.OK;
    }
    // A command right below the root (`relayctl client ...`) with plain flags runs directly;
    // main has no run of its own, so citty would do just this.
    const plain = parents.length === 1 && leaf.run && argv[0] === ((await resolve(leaf.meta ?? {})) as { name?: string }).name ? await plainContext(leaf, argv.slice(1)) : null;
    if (plain) await leaf.run!(plain);
    else await (await import("citty")).runCommand(main, { rawArgs: argv });
    return ExitCode.OK;
  } catch (err) {
    // citty's own usage errors: E_UNKNOWN_COMMAND, E_NO_COMMAND, ... and EARG (missing required argument).
    const isCittyUsage = (err as Error)?.name === "CLIError" || ((err as { code?: string })?.code?.startsWith("E_") ?? false);
    const code = err instanceof RelayError ? err.exitCode : isCittyUsage ? ExitCode.USAGE : ExitCode.FAILED;
    if (verbose && err instanceof Error && !(err instanceof RelayError)) log.error(err);
    // One plain line whatever the terminal: citty colours words inside its messages.
    process.stderr.write(plain(`relayctl: ${formatError(err)}${isCittyUsage ? " (see relayctl --help)" : ""}\n`));
    if (verbose && err instanceof Error && err.stack) process.stderr.write(err.stack + "\n");
    return code;
  }
}

if (import.meta.main) {
  const code = await cli(process.argv.slice(2));
  process.exit(code);
}
