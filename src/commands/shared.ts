import type { ArgsDef, CommandContext, CommandDef } from "citty";

/**
 * citty's defineCommand, which only types `run`'s args, without importing
 * citty: it loads node:util, which a plain `relayctl client` run never needs.
 */
export function command<T extends ArgsDef = ArgsDef>(def: CommandDef<T>): CommandDef<T> {
  return def;
}

/** Flags every command takes. */
export const common = {
  config: { type: "string", description: "config file (default: /etc/relayctl/server.toml or client.toml)", valueHint: "PATH" },
  verbose: { type: "boolean", description: "say what happened; show stack traces on errors" },
} as const;

/**
 * Every value of a repeatable string flag, from the raw argv: citty keeps
 * only the last `--allow X` when a flag is given more than once.
 */
export function repeatedFlag(rawArgs: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const a = rawArgs[i]!;
    if (a === "--") break;
    if (a === `--${name}` && i + 1 < rawArgs.length) out.push(rawArgs[++i]!);
    else if (a.startsWith(`--${name}=`)) out.push(a.slice(name.length + 3));
  }
  return out;
}

/**
 * citty runs a parent's `run` after its subcommand; commands that both do
 * something and have subcommands use this so only one of them runs.
 */
export function ifNoSubcommand<T extends ArgsDef>(run: (ctx: CommandContext<T>) => unknown): (ctx: CommandContext<T>) => unknown {
  return (ctx) => {
    const subs = Object.keys((ctx.cmd.subCommands as Record<string, unknown> | undefined) ?? {});
    if (ctx.args._.length > 0 && subs.includes(ctx.args._[0]!)) return undefined;
    return run(ctx);
  };
}

/** Prints a command's result: indented JSON with `--json`, else the rendering for people (nothing when that is empty). */
export function printResult(json: boolean | undefined, value: unknown, human: () => string): void {
  const out = json ? JSON.stringify(value, null, 2) : human();
  if (out) console.log(out);
}
