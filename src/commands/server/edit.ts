import { defineCommand } from "citty";
import { editClient, type EditResult } from "../../server/admin.ts";
import { common, repeatedFlag } from "../shared.ts";
import { clientNameArg, clientSettings, expectFlag, ipv6PrefixFlag } from "./flags.ts";
import { mapUpdated } from "./revoke.ts";

/** Renders what `server edit` did as one line per fact, dropped leases included. */
export function renderEdit(name: string, r: EditResult): string {
  if (!r.changes.length) return `${name}: nothing changed`;
  const lines = [`${name}: ${r.changes.join(", ")}`];
  for (const d of r.dropped) lines.push(`dropped lease ${d.ip}: ${d.why}`);
  for (const x of r.shortened) lines.push(`lease ${x.ip} now expires ${x.expires_at} (the new ttl from now)`);
  if (r.dropped.length) lines.push(mapUpdated(r.mapUpdatedBy));
  return lines.join("\n");
}

/** `server edit`: changes ttl or allow list, keeping the token; always says what changed, since leases may go. */
export async function runServerEdit(opts: { config?: string; name: string; ttl?: string; allow?: string[]; clearAllow?: boolean; ipv6Prefix?: string; expect?: string; clearExpect?: boolean }): Promise<EditResult> {
  const r = await editClient({ ...clientSettings(opts), clearAllow: opts.clearAllow, clearExpect: opts.clearExpect });
  console.log(renderEdit(opts.name, r));
  return r;
}

/** `relayctl server edit`. */
export const editCommand = defineCommand({
  meta: { name: "edit", description: "Change a client's ttl, allow list or expected interval, keeping its token; leases outside a new allow list are dropped" },
  args: {
    ...common,
    name: clientNameArg,
    ttl: { type: "string", description: "new lease lifetime (90s, 20m, 1h, at most 400d); a current lease is cut to end within it" },
    allow: { type: "string", description: "CIDR the client may lease or name (repeatable); replaces the whole list" },
    "clear-allow": { type: "boolean", description: "empty the allow list: the client may lease only the address it connects from" },
    "ipv6-prefix": ipv6PrefixFlag,
    expect: expectFlag,
    "clear-expect": { type: "boolean", description: "forget --expect: learn the interval from the client's renewals again" },
  },
  run: ({ args, rawArgs }) => {
    const allow = repeatedFlag(rawArgs, "allow");
    return runServerEdit({ config: args.config, name: args.name, ttl: args.ttl, allow, clearAllow: args["clear-allow"], ipv6Prefix: args["ipv6-prefix"], expect: args.expect, clearExpect: args["clear-expect"] }).then(() => undefined);
  },
});
