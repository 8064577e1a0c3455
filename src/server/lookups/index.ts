import type { ServerConfig } from "../../lib/config.ts";
import { eximLookupType } from "./exim.ts";
import { mapLookupType } from "./map.ts";
import { opensmtpdLookupType } from "./opensmtpd.ts";
import { policyLookupType } from "./policy.ts";
import type { LookupName, LookupType } from "./types.ts";

// The face of lookups/ for the rest of the server; the rows use types.ts.
export type { InstalledView, Lookup, LookupName, LookupStatus, LookupType } from "./types.ts";

/** Every lookup type by name. */
export const LOOKUPS: Record<LookupName, LookupType> = {
  map: mapLookupType,
  policy: policyLookupType,
  exim: eximLookupType,
  opensmtpd: opensmtpdLookupType,
};

/** The lookup type a configuration selects. */
export function lookupTypeOf(config: ServerConfig): LookupType {
  return LOOKUPS[config.lookup];
}
