import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { ExportSpec, ServerConfig } from "../lib/config.ts";
import { RelayError } from "../lib/errors.ts";
import { leaseText } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";
import type { Clock } from "../lib/clock.ts";
import type { LiveView } from "./live.ts";
import { LineFileWriter } from "./lookups/linefile.ts";
import { assertOurMap } from "./lookups/map.ts";
import { runTool } from "./postfix.ts";

/** One export as `server status` and status.json show it. */
export interface ExportStatus {
  path: string;
  format: ExportSpec["format"];
  entries: number;
  rebuilds: number;
  last_rebuild_at: string | null;
  error: string | null;
}

/**
 * Runs an export's reload command (argv, never a shell) within the postmap
 * timeout; a failure rejects, so the rewrite counts as not done and the
 * next check runs it again.
 */
export function reloadCommand(argv: readonly string[], timeoutMs: number): () => Promise<void> {
  return async () => {
    const r = await runTool([...argv], timeoutMs);
    if (r.code === 0 && !r.timedOut) return;
    const detail = r.timedOut ? `timed out after ${timeoutMs / 1000}s` : (r.stderr + r.stdout).trim().split("\n").slice(-2).join(" ") || `exit code ${r.code}`;
    throw new RelayError(`reload command ${argv.join(" ")} failed: ${detail}`, { hint: "the reader keeps its last copy of the file; the server retries" });
  };
}

/**
 * The export files: the live leases written for the rest of the mail stack
 * (OpenDKIM's InternalHosts, an rspamd map) with the line-file writer the
 * Exim and OpenSMTPD lookups use (atomic rename, O_NOFOLLOW, coalesced
 * rebuilds, repair when replaced). Not a lookup: relaying never waits for
 * them, and a failing one is reported as degraded and retried by check(),
 * while the lookup and renewals go on.
 */
export class Exports {
  private damage = new Map<LineFileWriter, string>();

  constructor(readonly writers: readonly { spec: ExportSpec; writer: LineFileWriter }[]) {}

  /** Brings every export up to date in the background; never rejects (failures are kept for problems() and retried by check()). */
  sync(): Promise<void> {
    return Promise.all(this.writers.map(({ writer }) => writer.sync().catch(() => undefined))).then(() => undefined);
  }

  /** Rewrites exports another program deleted or replaced, and retries those whose last rewrite or reload failed; true when it tried any. */
  async check(): Promise<boolean> {
    let tried = false;
    await Promise.all(
      this.writers.map(async ({ writer }) => {
        const why = writer.tampered();
        if (why) {
          this.damage.set(writer, why);
          log.warn(`export: ${why}; writing it again`);
          writer.invalidate();
        } else if (!writer.lastError) return;
        tried = true;
        try {
          await writer.sync();
          if (this.damage.delete(writer)) log.info(`export: ${writer.path} repaired`);
        } catch {
          // Kept in lastError: problems() says so until a later check succeeds.
        }
      }),
    );
    return tried;
  }

  /** Degraded reasons: exports that are damaged or could not be rewritten (the reader holds an older list). */
  problems(): string[] {
    const out: string[] = [];
    for (const { writer } of this.writers) {
      const damage = this.damage.get(writer);
      if (damage) out.push(`export: ${damage}`);
      if (writer.lastError) out.push(`export ${writer.path}: ${writer.lastError} (its readers hold the list as of ${new Date(writer.failingSince!).toISOString()})`);
    }
    return out;
  }

  /** Facts per export, for status.json. */
  status(): ExportStatus[] {
    return this.writers.map(({ spec, writer }) => ({
      path: spec.path,
      format: spec.format,
      entries: writer.lastRebuild?.entries ?? 0,
      rebuilds: writer.rebuilds,
      last_rebuild_at: writer.lastRebuild ? new Date(writer.lastRebuild.at).toISOString() : null,
      error: writer.lastError,
    }));
  }

  /** Lets rewrites in flight finish. */
  async close(): Promise<void> {
    await Promise.all(this.writers.map(({ writer }) => writer.settled()));
  }
}

/** The export's static networks as the file's first entries, under a comment saying where they come from. */
export function staticLines(spec: ExportSpec): string {
  if (!spec.static.length) return "";
  return `# From server.toml (export static), whatever the leases:\n${spec.static.map((n) => leaseText(n) + "\n").join("")}# Live leases:\n`;
}

/**
 * The configured exports over the live index. A path that holds a file
 * relayctl did not write is refused at start, as for the lookup's own file:
 * an operator's hand-kept InternalHosts is never overwritten.
 */
export function openExports(config: ServerConfig, index: LiveView, clock: Clock): Exports {
  return new Exports(
    config.exports.map((spec) => {
      mkdirSync(dirname(spec.path), { recursive: true });
      assertOurMap(spec.path, `${spec.where}: path`, "/etc/opendkim/relayctl/hosts");
      const writer = new LineFileWriter({
        path: spec.path,
        // The live index's text already is the address, or the network as CIDR.
        line: (text) => text,
        preamble: staticLines(spec),
        addresses: () => index.liveTexts(clock.now()),
        reload: spec.reload && reloadCommand(spec.reload, config.postmapTimeout * 1000),
      });
      return { spec, writer };
    }),
  );
}
