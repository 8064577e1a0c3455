import { lstatSync, type Stats } from "node:fs";
import { log } from "../../lib/logging.ts";
import type { Clock } from "../../lib/clock.ts";
import type { LiveView } from "../live.ts";
import { Coalescer } from "./coalesce.ts";
import type { Lookup, LookupStatus, LookupType } from "./types.ts";

/** What identifies an installed file: replaced or deleted, any of these changes. */
export type Identity = { dev: number; ino: number; size: number; mtimeMs: number } | null;
/** The identity of a file's lstat result (null: no file). */
export const identityOf = (st: Stats | null): Identity => (st ? { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs } : null);
/** True when both name the same, unchanged file. */
export const sameIdentity = (a: Identity, b: Identity): boolean => a !== null && b !== null && a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs;
/** lstat, or null when nothing is there. */
export function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

/** Why the file at path is not the one identified by `was` (missing, replaced or changed), or null when it is. */
export function whatChanged(path: string, was: Identity): string | null {
  const st = lstatOrNull(path);
  if (!st) return `${path} is missing`;
  return sameIdentity(identityOf(st), was) ? null : `${path} was replaced or changed by another program`;
}

/** Result of one rebuild, for logs and status. */
export interface RebuildInfo {
  changed: boolean;
  entries: number;
  ms: number;
}

/**
 * The bookkeeping every writer of a file for the MTA keeps (MapWriter,
 * LineFileWriter): rebuilds run one at a time through a Coalescer, and each
 * ends in failed() or succeeded(), which status, problems and metrics read.
 */
export abstract class FileWriter<Written extends { text: string } = { text: string }> {
  protected readonly jobs = new Coalescer(() => this.rebuild());
  /** The text (and file identities) this process installed last; null until its first rebuild, and after invalidate(). */
  protected written: Written | null = null;
  rebuilds = 0;
  lastError: string | null = null;
  /** When rebuilds started failing (null while they work): entries gone since then are frozen in the MTA. */
  failingSince: number | null = null;
  lastRebuild: { at: number; ms: number; entries: number } | null = null;

  constructor(private readonly onRebuild?: (result: RebuildInfo | Error) => void) {}

  /** The lease texts the MTA was last made to use. */
  abstract readonly installed: readonly string[];
  /** What is wrong with the installed files, or null when they are the ones this process wrote. */
  abstract tampered(): string | null;
  /** Forgets what was installed, so the next sync rebuilds whatever the text. */
  invalidate(): void {
    this.written = null;
  }

  /** True when `text` is what this process installed last and nobody changed the files since: nothing to do. */
  protected unchanged(text: string): boolean {
    return this.written?.text === text && this.tampered() === null;
  }
  protected abstract rebuild(): Promise<RebuildInfo>;

  /** Brings the file up to date with state; resolves once the MTA answers from it. */
  sync(): Promise<RebuildInfo> {
    return this.jobs.run();
  }

  /** Resolves once no rebuild is running or queued (for shutdown), whatever their outcome. */
  async settled(): Promise<void> {
    await this.jobs.settled();
  }

  /** Records a failed rebuild (`label` names the file in the log) and rethrows nothing: the caller throws. */
  protected failed(label: string, err: unknown): void {
    this.lastError = (err as Error).message;
    this.failingSince ??= Date.now();
    log.error(`${label}: ${this.lastError}`);
    this.onRebuild?.(err as Error);
  }

  /** Records a rebuild that installed `entries` entries, started at performance.now() `t0`. */
  protected succeeded(label: string, entries: number, t0: number): RebuildInfo {
    this.lastError = null;
    this.failingSince = null;
    this.rebuilds++;
    const ms = performance.now() - t0;
    this.lastRebuild = { at: Date.now(), ms, entries };
    log.debug(`${label}: rebuilt with ${entries} entries in ${ms.toFixed(1)} ms`);
    const info = { changed: true, entries, ms };
    this.onRebuild?.(info);
    return info;
  }
}

/**
 * A lookup that keeps a file the MTA reads (the map, Exim's or OpenSMTPD's
 * line file): publish rewrites it, check() repairs it when another program
 * deleted or replaced it, problems() say what the MTA may still admit while
 * rewrites fail. Subclasses name themselves and report their own status.
 */
export abstract class FileLookup<W extends FileWriter> implements Lookup {
  abstract readonly type: LookupType;
  private checking: Promise<void> | null = null;
  private damage: string | null = null;

  constructor(
    readonly writer: W,
    private readonly index: LiveView,
    private readonly clock: Clock,
  ) {}

  /** The log line when damage is found. */
  protected abstract repairing(why: string): string;
  /** The log line once it is repaired. */
  protected abstract repaired(): string;
  abstract status(): LookupStatus;

  /** Rewrites the file when the live set differs from what the MTA uses. */
  async publish(): Promise<void> {
    await this.writer.sync();
  }

  /** Notices the file deleted or replaced under the running server and writes it again. */
  check(): Promise<void> {
    this.checking ??= (async () => {
      const why = this.writer.tampered();
      if (!why) return;
      this.damage = why;
      log.warn(this.repairing(why));
      this.writer.invalidate();
      await this.writer.sync();
      this.damage = null;
      log.info(this.repaired());
    })().finally(() => {
      this.checking = null;
    });
    return this.checking;
  }

  /** Degraded reasons: a failing rebuild, damage not yet repaired, entries the MTA still admits without a lease. */
  problems(): string[] {
    const name = this.type.name;
    const out: string[] = [];
    if (this.damage) out.push(`${name}: ${this.damage}`);
    if (this.writer.lastError) {
      out.push(`${name}: ${this.writer.lastError}`);
      // Only while rewrites fail can the MTA hold what is no longer leased.
      const live = new Set(this.index.liveTexts(this.clock.now()));
      const frozen = this.writer.installed.filter((t) => !live.has(t)).length;
      if (frozen) out.push(`${name}: ${frozen} entries without a live lease still relay (frozen since ${new Date(this.writer.failingSince!).toISOString()})`);
    }
    return out;
  }

  /** Rebuild count and the last rebuild, for status(). */
  protected rebuildFacts(): { entries: number; rebuilds: number; last_rebuild_at: string | null; last_rebuild_ms: number | null } {
    const w = this.writer;
    return {
      entries: w.lastRebuild?.entries ?? 0,
      rebuilds: w.rebuilds,
      last_rebuild_at: w.lastRebuild ? new Date(w.lastRebuild.at).toISOString() : null,
      last_rebuild_ms: w.lastRebuild ? Math.round(w.lastRebuild.ms * 10) / 10 : null,
    };
  }

  /** Lets a running rebuild finish; none is started on the way out. */
  async close(): Promise<void> {
    await this.writer.settled();
  }
}
