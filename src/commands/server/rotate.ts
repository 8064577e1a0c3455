import { defineCommand } from "citty";
import { rotateToken } from "../../server/admin.ts";
import { common } from "../shared.ts";
import { printAdded } from "./add.ts";
import { clientNameArg } from "./flags.ts";

/** `server rotate`: prints a new enrollment line (with --dyndns what a router's form needs); the old token stops working at once. */
export async function runServerRotate(opts: { config?: string; name: string; dyndns?: boolean }): Promise<string> {
  return printAdded(opts.name, await rotateToken({ configPath: opts.config, name: opts.name }), opts.dyndns);
}

/** `relayctl server rotate`. */
export const rotateCommand = defineCommand({
  meta: { name: "rotate", description: "Give a client a new token and print its new enrollment line" },
  args: {
    ...common,
    name: clientNameArg,
    dyndns: { type: "boolean", description: "a router or NAS: print what its form needs (the token is its new password) instead of the enroll line" },
  },
  run: ({ args }) => runServerRotate({ config: args.config, name: args.name, dyndns: args.dyndns }).then(() => undefined),
});
