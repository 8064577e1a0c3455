import { defineCommand } from "citty";
import { revokeClient } from "../../server/admin.ts";
import { common } from "../shared.ts";
import { clientNameArg } from "./flags.ts";

/** How revoke and edit say who updated the lookup. */
export function mapUpdated(by: "server" | "here"): string {
  return `map updated ${by === "here" ? "now" : "by the running server"}`;
}

/** The one line `server revoke` prints: the client, the leases that went with it, who updated the lookup. */
export function renderRevoke(name: string, r: { removed: string[]; mapUpdatedBy: "server" | "here" }): string {
  const leases = r.removed.length === 1 ? "1 lease removed" : `${r.removed.length || "no"} leases removed`;
  return `revoked ${name}: ${leases}${r.removed.length ? ` (${r.removed.join(" ")})` : ""}, token refused; ${mapUpdated(r.mapUpdatedBy)}`;
}

/** `server revoke`: removes the client and says so; the map no longer holds its addresses. */
export async function runServerRevoke(opts: { config?: string; name: string }): Promise<void> {
  console.log(renderRevoke(opts.name, await revokeClient({ configPath: opts.config, name: opts.name })));
}

/** `relayctl server revoke`. */
export const revokeCommand = defineCommand({
  meta: { name: "revoke", description: "Delete a client: leases gone, map updated, token refused" },
  args: { ...common, name: clientNameArg },
  run: ({ args }) => runServerRevoke({ config: args.config, name: args.name }),
});
