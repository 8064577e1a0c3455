// A client's allow list, parsed once where a client row leaves a store and
// serialised only where one goes in: the rest of the server sees networks,
// never the column's JSON text. The column format is unchanged.
import { usageError } from "../lib/errors.ts";
import { parseCidr, type Cidr } from "../lib/ip.ts";

/** The networks a client may lease within, with the column text they came from. */
export interface AllowList {
  /** Empty: the client may lease only the address it connects from. */
  readonly nets: readonly Cidr[];
  /** The column text (a JSON array of CIDR texts): written as is, and what a renewal's compare-and-set matches. */
  readonly stored: string;
  /** Why the stored text is no valid list, or null; a broken list admits nothing (not even the connecting address). */
  readonly broken: string | null;
}

/** An allow list of networks already parsed. */
export function allowListOf(nets: readonly Cidr[]): AllowList {
  return { nets, stored: JSON.stringify(nets.map((n) => n.text)), broken: null };
}

/** The empty allow list. */
export const NO_ALLOW: AllowList = allowListOf([]);

/** Parses the column text strictly (never trusted as read back): any entry that is not a CIDR network makes the list broken. */
export function parseAllowList(stored: string): AllowList {
  let entries: unknown;
  try {
    entries = JSON.parse(stored);
  } catch {
    return { nets: [], stored, broken: "not JSON" };
  }
  if (!Array.isArray(entries)) return { nets: [], stored, broken: "not a list" };
  const nets: Cidr[] = [];
  for (const e of entries) {
    const net = typeof e === "string" ? parseCidr(e) : null;
    if (!net) return { nets: [], stored, broken: `invalid entry ${JSON.stringify(e)}` };
    nets.push(net);
  }
  return { nets, stored, broken: null };
}

/** The allow list `--allow` entries give, refusing anything but an address or a CIDR network with zero host bits. */
export function allowListFromFlags(entries: string[]): AllowList {
  return allowListOf(
    entries.map((c) => {
      const net = parseCidr(c);
      if (!net) throw usageError(`--allow ${c}: not an address or CIDR network with zero host bits`, "use e.g. --allow 198.51.100.0/24");
      return net;
    }),
  );
}

/** The list as people read it: the networks, space-separated; `(none)` when empty. */
export function allowText(list: AllowList): string {
  if (list.broken) return `(unreadable: ${list.broken})`;
  return list.nets.map((n) => n.text).join(" ") || "(none)";
}
