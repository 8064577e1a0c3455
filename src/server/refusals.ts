import type { Ip } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";
import type { Clock } from "./leases.ts";
import type { StateStore } from "./state.ts";
import { sourceKey } from "./service.ts";

/** One refusal as the service reports it. */
export interface Refusal {
  code: string;
  message: string;
  client: string | null;
  source: Ip | null;
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
 * minute, beyond which only a counter grows and one summary row per minute
 * says how many went unrecorded. A flood from rotating sources costs at most
 * perMinute + 1 rows a minute.
 */
export class RefusalLog {
  private readonly bursts = new Map<string, Burst>();
  private minute = { start: 0, rows: 0, over: 0, sources: new Set<string>() };

  constructor(
    private readonly store: StateStore,
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
      this.minute.over++;
      this.minute.sources.add(source);
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

  private rollMinute(now: number): void {
    if (now - this.minute.start < 60_000) return;
    const m = this.minute;
    this.minute = { start: now, rows: 0, over: 0, sources: new Set() };
    if (m.over === 0) return;
    log.warn(`refused ${m.over} more requests from ${m.sources.size} sources in one minute; audit rows are capped at ${this.perMinute} a minute`);
    try {
      this.store.audit({ ts: now, event: "refuse", client: null, ip: null, source: null, detail: `unrecorded: over the audit cap of ${this.perMinute} rows a minute, from ${m.sources.size} sources`, count: m.over });
    } catch (err) {
      log.error(`cannot record refusal summary in the audit log: ${(err as Error).message}`);
    }
  }
}
