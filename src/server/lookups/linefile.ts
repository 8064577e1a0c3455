import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";
import type { ServerConfig } from "../../lib/config.ts";
import { ownerFor, writeFileAtomic } from "../../lib/fsutil.ts";
import type { LiveView } from "../live.ts";
import type { Clock } from "../../lib/clock.ts";
import { FileLookup, FileWriter, identityOf, lstatOrNull, whatChanged, type Identity, type RebuildInfo } from "./filelookup.ts";
import type { InstalledView, Lookup, LookupContext, LookupName, LookupStatus, LookupType } from "./types.ts";
import { assertOurMap, frozenEntries, HEAD } from "./map.ts";

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
export class LineFileWriter extends FileWriter<{ text: string; file: Identity }> {
  /** The lease texts the MTA was last made to use. */
  installed: readonly string[] = [];

  constructor(private readonly opts: LineFileWriterOptions) {
    super(opts.onRebuild);
  }

  /** The file the MTA reads. */
  get path(): string {
    return this.opts.path;
  }

  /** What is wrong with the installed file, or null when it is the one this process wrote. */
  override tampered(): string | null {
    if (!this.written) return null;
    return whatChanged(this.opts.path, this.written.file);
  }

  protected async rebuild(): Promise<RebuildInfo> {
    const t0 = performance.now();
    const addresses = this.opts.addresses();
    const text = renderLines(addresses, this.opts.line, this.opts.preamble);
    const entries = addresses.length;
    if (this.unchanged(text)) return { changed: false, entries, ms: 0 };
    const { path } = this.opts;
    try {
      // Root (an admin command, sweep) hands the file to the directory's owner, on the open descriptor.
      writeFileAtomic(path, text, { mode: 0o644, owner: ownerFor(dirname(path)) });
      // Not yet `written`: should the reload fail, the next sync must run it again.
      this.written = null;
      await this.opts.reload?.();
    } catch (err) {
      this.failed(path, err);
      throw err;
    }
    this.written = { text, file: identityOf(lstatOrNull(path)) };
    // A copy: the index's own list holds only until its next change.
    this.installed = addresses.slice();
    return this.succeeded(path, entries, t0);
  }
}

/** A running line-file lookup: the file FileLookup keeps, for Exim or OpenSMTPD. */
export class LineFileLookup extends FileLookup<LineFileWriter> {
  constructor(
    readonly type: LookupType,
    writer: LineFileWriter,
    index: LiveView,
    clock: Clock,
  ) {
    super(writer, index, clock);
  }

  protected repairing(why: string): string {
    return `${this.type.name}: ${why}; writing it again`;
  }

  protected repaired(): string {
    return `${this.type.name}: ${this.writer.path} is whole again`;
  }

  /** Path, entry count and the last rebuild. */
  status(): LookupStatus {
    return { lookup: this.type.name, target: this.writer.path, path: this.writer.path, ...this.rebuildFacts() };
  }
}

/**
 * The lookup-table row of a line-file lookup. Every lease shape is held
 * exactly (both MTAs match addresses and CIDR networks as networks), and the
 * file keeps admitting while the server is down, so sweep expires for it.
 */
export function lineFileRow(spec: LineFileSpec): LookupType {
  const row: LookupType = {
    name: spec.name,
    prefixes: true,
    outlivesServer: true,
    rewritesWhole: `each change rewrites the whole file, one line per lease${spec.reload ? ", and has the MTA load it again" : ""}`,
    refuses: () => null,
    installed: async (config, state) => installedLineFile(spec.name, spec.path(config), state),
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

/** The installed line file, reported under status's `map` key as the map is: its entries, and which of them no live lease backs. */
function installedLineFile(name: LookupName, path: string, state: { leases: readonly { ip: string; expires_at: number }[]; now: number }): InstalledView {
  const there = existsSync(path);
  const keys = there ? lineFileKeys(readFileSync(path, "utf8")) : [];
  return { map: { path, type: name, entries: keys.length, frozen: frozenEntries(keys, state.leases, state.now, there ? statSync(path).mtimeMs : state.now) } };
}
