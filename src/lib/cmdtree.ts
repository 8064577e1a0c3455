// Flattens citty command definitions into plain data, so --help, the man page
// and shell completion are all generated from the one place and never drift.
import type { ArgsDef, CommandDef } from "citty";

/** One flag of a command as the man page and completions show it. */
export interface FlagInfo {
  name: string;
  description: string;
  /** Flags that take a value (`--ttl D`) rather than being switches. */
  takesValue: boolean;
  valueHint?: string;
  required: boolean;
}

/** One positional argument. */
export interface PositionalInfo {
  name: string;
  description: string;
  required: boolean;
}

/** A command and everything below it. */
export interface CommandNode {
  /** Words after `relayctl`, e.g. ["server", "add"]; empty for the root. */
  path: string[];
  description: string;
  flags: FlagInfo[];
  positionals: PositionalInfo[];
  subcommands: CommandNode[];
  /** False for pure groups, which only dispatch to a subcommand. */
  runs: boolean;
}

type AnyCommand = CommandDef<ArgsDef>;

/** Resolves a citty value that may be given as is, as a promise or as a function returning either. */
export async function resolve<T>(v: T | (() => T | Promise<T>) | Promise<T>): Promise<T> {
  return typeof v === "function" ? await (v as () => T | Promise<T>)() : await v;
}

/** Walks a citty command and its subcommands (hidden ones left out) into a CommandNode tree. */
export async function commandTree(cmd: AnyCommand, path: string[] = []): Promise<CommandNode> {
  const meta = (await resolve(cmd.meta ?? {})) as { description?: string };
  const defs = (await resolve(cmd.args ?? {})) as ArgsDef;
  const flags: FlagInfo[] = [];
  const positionals: PositionalInfo[] = [];
  for (const [name, d] of Object.entries(defs)) {
    const def = d as { type?: string; description?: string; valueHint?: string; required?: boolean };
    if (def.type === "positional") {
      positionals.push({ name, description: def.description ?? "", required: def.required !== false });
    } else {
      flags.push({ name, description: def.description ?? "", takesValue: def.type !== "boolean", valueHint: def.valueHint, required: def.required === true });
    }
  }
  const subcommands: CommandNode[] = [];
  for (const [name, sub] of Object.entries((await resolve(cmd.subCommands ?? {})) as Record<string, AnyCommand>)) {
    const subCmd = await resolve(sub);
    if (((await resolve(subCmd.meta ?? {})) as { hidden?: boolean }).hidden) continue;
    subcommands.push(await commandTree(subCmd, [...path, name]));
  }
  return { path, description: meta.description ?? "", flags, positionals, subcommands, runs: typeof cmd.run === "function" };
}

/** Every node of the tree, parents before children. */
export function allCommands(root: CommandNode): CommandNode[] {
  return [root, ...root.subcommands.flatMap(allCommands)];
}

/** The usage line of a command: `relayctl server add NAME [--ttl D] ...`. */
export function synopsis(node: CommandNode): string {
  const words = ["relayctl", ...node.path];
  for (const p of node.positionals) words.push(p.required ? p.name.toUpperCase() : `[${p.name.toUpperCase()}]`);
  for (const f of node.flags) {
    const flag = f.takesValue ? `--${f.name} ${f.valueHint ?? f.name.toUpperCase()}` : `--${f.name}`;
    words.push(f.required ? flag : `[${flag}]`);
  }
  if (node.subcommands.length) words.push(node.runs ? "[COMMAND ...]" : "COMMAND ...");
  return words.join(" ");
}
