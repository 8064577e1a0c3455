import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ArgsDef, CommandDef } from "citty";
import { main } from "../../../src/cli.ts";
import { bashCompletion, zshCompletion } from "../../../src/commands/completion.ts";
import { commandTree } from "../../../src/lib/cmdtree.ts";
import { renderManPage } from "../../../src/lib/manpage.ts";
import { capture, tempDir } from "../helpers.ts";
import { cli } from "../../../src/cli.ts";

type Cmd = CommandDef<ArgsDef>;

/** Every command path with its flags, read straight from the citty definitions (not through commandTree). */
async function definitions(cmd: Cmd, path: string[] = []): Promise<{ path: string[]; flags: string[] }[]> {
  const args = (typeof cmd.args === "function" ? await cmd.args() : await cmd.args) ?? {};
  const flags = Object.entries(args).filter(([, d]) => d.type !== "positional").map(([k]) => k);
  const subs = ((typeof cmd.subCommands === "function" ? await cmd.subCommands() : await cmd.subCommands) ?? {}) as Record<string, Cmd>;
  const out = [{ path, flags }];
  // A subcommand may be loaded lazily (server, doctor): a function resolving to its definition.
  for (const [name, sub] of Object.entries(subs)) out.push(...(await definitions(typeof sub === "function" ? await (sub as () => Promise<Cmd>)() : sub, [...path, name])));
  return out;
}

const tree = await commandTree(main);
const defs = await definitions(main);
const bash = bashCompletion(tree);
const zsh = zshCompletion(tree);

/** Runs the bash completion for the words typed so far (the last one being completed). */
function completeBash(words: string[]): string[] {
  const dir = tempDir("relayctl-completion-");
  writeFileSync(join(dir, "relayctl.bash"), bash);
  const script = `source ${dir}/relayctl.bash; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _relayctl; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const r = spawnSync("bash", ["-c", script], { encoding: "utf8", cwd: dir });
  expect(r.stderr).toBe("");
  return r.stdout.split("\n").filter(Boolean);
}

describe("completion and man page come from the command definitions", () => {
  test("the definitions hold the commands this test expects to walk", () => {
    const paths = defs.map((d) => d.path.join(" "));
    for (const p of ["server", "server add", "client enroll", "doctor", "completion bash", "completion zsh"]) expect(paths).toContain(p);
  });

  test("every command and flag is in the man page, under its own command", () => {
    const page = renderManPage(tree, { version: "1.2.3", date: new Date(0) });
    for (const d of defs.slice(1)) {
      // roff spells a hyphen in a name \- (server postfix-pgsql).
      const heading = `.SS "${["relayctl", ...d.path].join(" ").replace(/-/g, "\\-")}"`;
      expect(page).toContain(heading);
      const section = page.slice(page.indexOf(heading)).split("\n.SS ")[0]!.split("\n.SH ")[0]!;
      for (const f of d.flags) expect(section).toContain(`\\fB\\-\\-${f.replace(/-/g, "\\-")}\\fR`);
    }
  });

  test("every command and flag is offered by the bash and zsh scripts for its command path", () => {
    for (const d of defs) {
      const key = `\t'${d.path.join(" ")}')\n`;
      for (const script of [bash, zsh]) {
        expect(script).toContain(key);
        const entry = script.slice(script.indexOf(key)).split(";;")[0]!;
        for (const f of d.flags) expect(entry).toContain(`--${f}`);
      }
    }
    for (const d of defs.filter((x) => x.path.length)) {
      const parent = `\t'${d.path.slice(0, -1).join(" ")}')\n`;
      const entry = bash.slice(bash.indexOf(parent)).split(";;")[0]!;
      expect(entry).toMatch(new RegExp(`subs='[^']*\\b${d.path.at(-1)}\\b`));
    }
  });

  test("bash completes subcommands, flags and skips flag values", () => {
    expect(completeBash(["relayctl", ""])).toEqual(["server", "client", "doctor", "completion"]);
    expect(completeBash(["relayctl", "server", "a"])).toEqual(["add"]);
    expect(completeBash(["relayctl", "--help", "cl"])).toEqual(["client"]);
    expect(completeBash(["relayctl", "server", "--config", "server", "l"])).toEqual(["list", "log"]);
    expect(completeBash(["relayctl", "server", "add", "nas", "--a"])).toEqual(["--allow"]);
    expect(completeBash(["relayctl", "server", "add", "--ttl", ""])).toEqual([]);
    expect(completeBash(["relayctl", "completion", ""])).toEqual(["bash", "zsh"]);
    expect(completeBash(["relayctl", "server", "--config", "relayctl.b"])).toEqual(["relayctl.bash"]);
  });

  const hasZsh = spawnSync("zsh", ["--version"]).status === 0;
  test.skipIf(!hasZsh)("zsh parses the script and offers the subcommands with descriptions", () => {
    const dir = tempDir("relayctl-completion-");
    writeFileSync(join(dir, "_relayctl"), zsh);
    // Outside a completion widget: stub the completion system's functions and fake the typed words.
    const script = `compdef() { :; }; _describe() { print -rl -- "\${(@P)4}"; }; source ${dir}/_relayctl; words=(relayctl server ''); CURRENT=3; _relayctl`;
    const r = spawnSync("zsh", ["-f", "-c", script], { encoding: "utf8" });
    expect(r.stderr).toBe("");
    expect(r.stdout).toContain("add:Create a client and print its enrollment line\n");
    expect(r.stdout).toContain("status:");
  });

  test("relayctl completion bash|zsh prints the script; anything else is a usage error", async () => {
    const b = await capture(() => cli(["completion", "bash"]));
    expect(b.value).toBe(0);
    expect(b.stdout).toBe(bash);
    const z = await capture(() => cli(["completion", "zsh"]));
    expect(z.stdout).toBe(zsh);
    const fish = await capture(() => cli(["completion", "fish"]));
    expect(fish.value).toBe(2);
  });
});
