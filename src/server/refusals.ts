import { sourceKey, type Ip } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";
import type { Clock } from "../lib/clock.ts";
import type { AuditEntry } from "./stores/index.ts";

/** Where refusal rows are written: ids come back at once so a burst's count can be raised later. */
export interface RefusalSink {
  audit(e: AuditEntry): number;
  setAuditCount(id: number, count: number, detail?: string): void;
}

/** One refusal as the service reports it. */
export interface Refusal {
  code: string;
  message: string;
  client: string | null;
  source: Ip | null;
}

/** This minute's budget: rows written, refusals beyond the cap, and the row that counts them. */
interface Minute {
  start: number;
  rows: number;
  over: number;
  sources: Set<string>;
  summary: Burst | null;
}

interface Burst {
  id: number;
  count: number;
  flushed: number;
  last: number;
}

/**
 * The audit log of refusals, bounded: refusals with the same reason from
 * the same source (IPv6: the same /64) and client share one row while they
 * keep coming (a burst), with a count; at most `perMinute` new rows a
 * minute, beyond which only counters grow, in one summary row per minute
 * that says how many went unrecorded and from how many sources. A flood from rotating sources costs at most
 * perMinute + 1 rows a minute.
 */
export class RefusalLog {
  private readonly bursts = new Map<string, Burst>();
  private minute: Minute = { start: 0, rows: 0, over: 0, sources: new Set(), summary: null };

  constructor(
    private readonly store: RefusalSink,
    private readonly clock: Clock,
    private readonly perMinute = 60,
    private readonly burstGapMs = 60_000,
  ) {}

  /** Counts one refusal, writing a row only for the first of a burst. */
  record(r: Refusal): void {
    const now = this.clock.now();
    this.rollMinute(now);
    const source = r.source ? sourceKey(r.source) : "-";
    const key = `${source}\u0000${r.code}\u0000${r.client ?? ""}`;
    const burst = this.bursts.get(key);
    if (burst && now - burst.last < this.burstGapMs) {
      burst.count++;
      burst.last = now;
      return;
    }
    // The ended burst's last refusals reach its row before a new burst replaces it.
    if (burst) this.write(burst);
    if (this.minute.rows >= this.perMinute) {
      this.overCap(source, now);
      return;
    }
    try {
      const id = this.store.audit({ ts: now, event: "refuse", client: r.client, ip: null, source: r.source?.text ?? null, detail: `${r.code}: ${r.message}` });
      this.minute.rows++;
      this.bursts.set(key, { id, count: 1, flushed: 1, last: now });
    } catch (err) {
      // The refusal stands even when the disk is full; say why it went unrecorded.
      log.error(`cannot record refusal in the audit log: ${(err as Error).message}`);
    }
  }

  /** Writes the counts of bursts that grew, forgets bursts that ended, and closes the minute. */
  flush(): void {
    const now = this.clock.now();
    this.rollMinute(now);
    try {
      this.writeSummary();
      for (const [key, b] of this.bursts) {
        this.write(b);
        if (now - b.last >= this.burstGapMs) this.bursts.delete(key);
      }
    } catch (err) {
      log.error(`cannot update refusal counts in the audit log: ${(err as Error).message}`);
    }
  }

  private write(b: Burst): void {
    if (b.count === b.flushed) return;
    this.store.setAuditCount(b.id, b.count);
    b.flushed = b.count;
  }

  /** Counts a refusal beyond the cap in the minute's summary row (written once, its count kept current by flush). */
  private overCap(source: string, now: number): void {
    const m = this.minute;
    m.over++;
    m.sources.add(source);
    if (m.summary) {
      m.summary.count = m.over;
      m.summary.last = now;
      return;
    }
    log.warn(`refusals: over the audit cap of ${this.perMinute} rows a minute; counting the rest in one row`);
    try {
      const id = this.store.audit({ ts: now, event: "refuse", client: null, ip: null, source: null, detail: this.summaryText(), count: 1 });
      m.summary = { id, count: 1, flushed: 1, last: now };
    } catch (err) {
      log.error(`cannot record refusal summary in the audit log: ${(err as Error).message}`);
    }
  }

  private summaryText(): string {
    return `unrecorded: over the audit cap of ${this.perMinute} rows a minute, from ${this.minute.sources.size} sources`;
  }

  private rollMinute(now: number): void {
    if (now - this.minute.start < 60_000) return;
    this.writeSummary();
    this.minute = { start: now, rows: 0, over: 0, sources: new Set(), summary: null };
  }

  private writeSummary(): void {
    const b = this.minute.summary;
    if (!b || b.count === b.flushed) return;
    this.store.setAuditCount(b.id, b.count, this.summaryText());
    b.flushed = b.count;
  }
}
