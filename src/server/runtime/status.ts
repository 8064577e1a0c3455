import { join } from "node:path";
import { writeFileAtomic } from "../../lib/fsutil.ts";
import { log } from "../../lib/logging.ts";
import type { ExportStatus } from "../exports.ts";
import type { LookupStatus } from "../lookups/index.ts";

/** What `relayctl server status` reads from state_dir while a server runs. */
export interface ServerStatus {
  pid: number;
  started_at: string;
  listen: string;
  public_url: string;
  pin: string;
  pin_changed_at: string | null;
  cert_path: string;
  cert_expires_at: string;
  lookup: LookupStatus;
  /** The same facts under their first name, for the map lookup (scripts read status.map): the lookup type's statusAlias, until the next release. */
  map?: LookupStatus;
  /** The export files (server.toml `export`), each with its last rewrite or error. */
  exports?: ExportStatus[];
  degraded: string[];
  reloaded_at: string | null;
}

/** Where a running server publishes its status. */
export function statusPath(stateDir: string): string {
  return join(stateDir, "status.json");
}

/**
 * A small file beside the state, so `relayctl server status` can show
 * runtime facts (last rebuild, degraded reasons) without an API of its own.
 * Written atomically; a failure is logged, never fatal.
 */
export function writeStatus(stateDir: string, status: ServerStatus): void {
  const path = statusPath(stateDir);
  try {
    writeFileAtomic(path, JSON.stringify(status, null, 2) + "\n", { mode: 0o644 });
  } catch (err) {
    log.warn(`cannot write ${path}: ${(err as Error).message}`);
  }
}
