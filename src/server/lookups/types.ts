// The lookup interface, apart from the registry in index.ts: the rows
// (map.ts, policy.ts, linefile.ts) implement it, and index.ts imports them,
// so the interface in index.ts made each of them import the file that imports it.
import type { LookupKind, ServerConfig } from "../../lib/config.ts";
import type { Cidr } from "../../lib/ip.ts";
import type { Clock } from "../../lib/clock.ts";
import type { LiveView } from "../live.ts";
import type { LeaseRow } from "../state.ts";

/** The names server.toml's `lookup` accepts. */
export type LookupName = LookupKind;

/** What a lookup is given: the configuration, the live leases and the clock. */
export interface LookupContext {
  config: ServerConfig;
  index: LiveView;
  clock: Clock;
  /** Told of each publication that did work (a map rebuild), or of its failure: metrics and status follow it. */
  onPublish?: (result: { ms: number; entries: number } | Error) => void;
}

/** Facts a lookup reports for `server status`, /metrics and doctor. */
export interface LookupStatus {
  lookup: LookupName;
  /** Where the MTA asks: the map's database file, the policy socket, or the line file. */
  target: string;
  /** Networks Postfix currently relays for, as this lookup last published them. */
  entries: number;
  [fact: string]: unknown;
}

/** A running lookup: how Postfix learns which client addresses hold a live lease. */
export interface Lookup {
  readonly type: LookupType;
  /** Makes Postfix's answers equal to the live leases; resolves once Postfix answers accordingly, rejects when it cannot. */
  publish(): Promise<void>;
  /** Looks for damage done by others (a deleted or replaced map) and repairs it; runs every few seconds. */
  check(): Promise<void>;
  /** Why Postfix's answers may be wrong or unavailable right now; empty when whole. */
  problems(): string[];
  /** Facts for status and metrics. */
  status(): LookupStatus;
  /** Stops answering; waits for work in flight. */
  close(): Promise<void>;
}

/** Installed entries that keep relaying without a live lease, and since when. */
export interface Frozen {
  entries: number;
  since: string | null;
}

/** What `server status` shows of what Postfix reads right now, under the lookup's own key. */
export interface InstalledView {
  /** The file the MTA reads (Postfix's map, read from its database; Exim's or OpenSMTPD's line file), with entries no live lease backs. */
  map?: { path: string; type: string; entries: number; frozen: Frozen };
  /** The policy socket. */
  policy?: { socket: string; listening: boolean };
}

/**
 * One row per lookup type, as Postfix's dict_open.c keeps one row per table
 * type: what a lookup can do is a column here, not an `if` in its callers.
 */
export interface LookupType {
  name: LookupName;
  /** Matches an IPv6 prefix shorter than /128 exactly. */
  prefixes: boolean;
  /** Keeps answering from a file while the server is down, so `server sweep` must expire for it. */
  outlivesServer: boolean;
  /**
   * What every change costs when the whole file is rewritten (measured, for
   * doctor's `server.scale` warning above FILE_LOOKUP_MAX_LEASES), or null
   * for a lookup that answers from memory (policy).
   */
  rewritesWhole: string | null;
  /** The status.json key its facts also had before `lookup` (scripts read status.map), kept until the next release. */
  statusAlias?: "map";
  /** Why this lookup cannot hold the network exactly (so the lease must be refused), or null. */
  refuses(net: Cidr): string | null;
  open(ctx: LookupContext): Promise<Lookup>;
  /** What Postfix reads right now, looked at from outside the server (`server status`), given the leases in state. */
  installed(config: ServerConfig, state: { leases: readonly LeaseRow[]; now: number; running: boolean }): Promise<InstalledView>;
}
