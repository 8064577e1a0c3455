import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { ServerConfig } from "../../lib/config.ts";
import { ownerFor, writeFileAtomic } from "../../lib/fsutil.ts";
import { log } from "../../lib/logging.ts";
import type { LiveIndex } from "../live.ts";
import type { Clock } from "../leases.ts";
import { Coalescer } from "./coalesce.ts";
import type { Lookup, LookupContext, LookupName, LookupStatus, LookupType } from "./index.ts";
import { assertOurMap, HEAD, identityOf, lstatOrNull, sameIdentity, type Identity, type RebuildInfo } from "./map.ts";

/**
 * A "line file" lookup: a plain file with one leased network a line, which
 * another MTA reads by itself (Exim per connection) or after being told to
 * (OpenSMTPD's `smtpctl update table`). What differs between MTAs is in
 * the spec; writing, coalescing, repair and status are shared here.
 */
export interface LineFileSpec {
  name: LookupName;
  /** The server.toml key naming the file, for errors. */
  key: string;
  /** An example path for that key, for errors. */
  example: string;
  /** The file the MTA reads. */
  path: (config: ServerConfig) => string;
  /** One line of the file for one lease, given as the live index keeps it (`ADDR` or `NET/LEN`). */
  line: (text: string) => string;
  /** Lines every file holds after the header, whatever the leases (none when omitted). */
  preamble?: string;
  /** The step that makes the MTA use the file just installed (rejects when it did not: the MTA keeps its last table); none when it reads the file per connection. */
  reload?: (ctx: LookupContext) => () => Promise<void>;
}

/** The file text for the sorted, distinct lease texts: the generated header, the preamble, then one line each. */
export function renderLines(sorted: readonly string[], line: (text: string) => string, preamble = ""): string {
  let out = HEAD + preamble;
  for (const t of sorted) out += line(t) + "\n";
  return out;
}

/** The lease texts in a line file as relayctl wrote it: comments, quotes (Exim's IPv6 keys) and OpenSMTPD's 0.0.0.0 left out. */
export function lineFileKeys(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.trim().replace(/^"(.*)"$/, "$1"))
    .filter((l) => l && !l.startsWith("#") && l !== "0.0.0.0");
}

/** Options of a LineFileWriter. */
export interface LineFileWriterOptions {
  path: string;
  line: (text: string) => string;
  preamble?: string;
  /** The lease texts the file must hold right now, sorted and distinct. */
  addresses: () => readonly string[];
  reload?: () => Promise<void>;
  /** Called once per rebuild that ran: its result, or its error. */
  onRebuild?: (result: RebuildInfo | Error) => void;
}

/**
 * Keeps a line file equal to the live leases: each rebuild replaces the file
 * by an atomic rename (the MTA reads the old file or the new one, never a
 * part) and then runs the reload step, if any. Concurrent callers share one
 * rebuild. A rebuild counts as done only once the reload succeeded: until
 * then the next sync rewrites and reloads again, whatever the text.
 */
export class LineFileWriter {
  private readonly jobs = new Coalescer(() => this.rebuild());
  private written: { text: string; file: Identity } | null = null;
  /** The lease texts the MTA was last made to use. */
  installed: readonly string[] = [];
  rebuilds = 0;
  lastError: string | null = null;
  /** When rebuilds started failing (null while they work). */
  failingSince: number | null = null;
  lastRebuild: { at: number; ms: number; entries: number } | null = null;

  constructor(private readonly opts: LineFileWriterOptions) {}

  /** The file the MTA reads. */
  get path(): string {
    return this.opts.path;
  }

  /** Brings the file (and the MTA) up to date; resolves once the MTA answers from it. */
  sync(): Promise<RebuildInfo> {
    return this.jobs.run();
  }

  /** Resolves once no rebuild is running or queued. */
  settled(): Promise<void> {
    return this.jobs.settled();
  }

  /** What is wrong with the installed file, or null when it is the one this process wrote. */
  tampered(): string | null {
    if (!this.written) return null;
    const st = lstatOrNull(this.opts.path);
    if (!st) return `${this.opts.path} is missing`;
    if (!sameIdentity(identityOf(st), this.written.file)) return `${this.opts.path} was replaced or changed by another program`;
    return null;
  }

  /** Forgets what was installed, so the next sync rewrites whatever the text. */
  invalidate(): void {
    this.written = null;
  }

  private async rebuild(): Promise<RebuildInfo> {
    const t0 = performance.now();
    const addresses = this.opts.addresses();
    const text = renderLines(addresses, this.opts.line, this.opts.preamble);
    const entries = addresses.length;
    if (this.written?.text === text && this.tampered() === null) return { changed: false, entries, ms: 0 };
    const { path } = this.opts;
    try {
      // Root (an admin command, sweep) hands the file to the directory's owner, on the open descriptor.
      writeFileAtomic(path, text, { mode: 0o644, owner: ownerFor(dirname(path)) });
      // Not yet `written`: should the reload fail, the next sync must run it again.
      this.written = null;
      await this.opts.reload?.();
    } catch (err) {
      this.lastError = (err as Error).message;
      this.failingSince ??= Date.now();
      log.error(`${path}: ${this.lastError}`);
      this.opts.onRebuild?.(err as Error);
      throw err;
    }
    this.written = { text, file: identityOf(lstatOrNull(path)) };
    // A copy: the index's own list holds only until its next change.
    this.installed = addresses.slice();
    this.lastError = null;
    this.failingSince = null;
    this.rebuilds++;
    const ms = performance.now() - t0;
    this.lastRebuild = { at: Date.now(), ms, entries };
    log.debug(`${path}: rewritten with ${entries} entries in ${ms.toFixed(1)} ms`);
    const info = { changed: true, entries, ms };
    this.opts.onRebuild?.(info);
    return info;
  }
}

/** A running line-file lookup: publish rewrites, check repairs, problems name what the MTA may still wrongly admit. */
export class LineFileLookup implements Lookup {
  private checking: Promise<void> | null = null;
  private damage: string | null = null;

  constructor(
    readonly type: LookupType,
    readonly writer: LineFileWriter,
    private readonly index: LiveIndex,
    private readonly clock: Clock,
  ) {}

  /** Rewrites the file (and reloads the MTA) when the live set differs from what it uses. */
  async publish(): Promise<void> {
    await this.writer.sync();
  }

  /** Notices the file deleted or replaced under the running server and writes it again. */
  check(): Promise<void> {
    this.checking ??= (async () => {
      const why = this.writer.tampered();
      if (!why) return;
      this.damage = why;
      log.warn(`${this.type.name}: ${why}; writing it again`);
      this.writer.invalidate();
      await this.writer.sync();
      this.damage = null;
      log.info(`${this.type.name}: ${this.writer.path} is whole again`);
    })().finally(() => {
      this.checking = null;
    });
    return this.checking;
  }

  /** Degraded reasons: a failing rebuild or reload, damage not yet repaired, entries the MTA still admits without a lease. */
  problems(): string[] {
    const name = this.type.name;
    const out: string[] = [];
    if (this.damage) out.push(`${name}: ${this.damage}`);
    if (this.writer.lastError) {
      out.push(`${name}: ${this.writer.lastError}`);
      const live = new Set(this.index.liveTexts(this.clock.now()));
      const frozen = this.writer.installed.filter((t) => !live.has(t)).length;
      if (frozen) out.push(`${name}: ${frozen} entries without a live lease still relay (frozen since ${new Date(this.writer.failingSince!).toISOString()})`);
    }
    return out;
  }

  /** Path, entry count and the last rebuild. */
  status(): LookupStatus {
    const w = this.writer;
    return {
      lookup: this.type.name,
      target: w.path,
      path: w.path,
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

/**
 * The lookup-table row of a line-file lookup. Every lease shape is held
 * exactly (both MTAs match addresses and CIDR networks as networks), and the
 * file keeps admitting while the server is down, so sweep expires for it.
 */
export function lineFileRow(spec: LineFileSpec, hook: LookupType["hook"]): LookupType {
  const row: LookupType = {
    name: spec.name,
    prefixes: true,
    postmap: false,
    outlivesServer: true,
    hook,
    refuses: () => null,
    file: spec.path,
    async open(ctx: LookupContext): Promise<Lookup> {
      const path = spec.path(ctx.config);
      mkdirSync(dirname(path), { recursive: true });
      assertOurMap(path, spec.key, spec.example);
      const writer = new LineFileWriter({
        path,
        line: spec.line,
        preamble: spec.preamble,
        addresses: () => ctx.index.liveTexts(ctx.clock.now()),
        reload: spec.reload?.(ctx),
        onRebuild: ctx.onPublish,
      });
      return new LineFileLookup(row, writer, ctx.index, ctx.clock);
    },
  };
  return row;
}
