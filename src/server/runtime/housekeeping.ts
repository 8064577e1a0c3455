import type { ServerConfig } from "../../lib/config.ts";
import { log } from "../../lib/logging.ts";
import type { Exports } from "../exports.ts";
import type { Lookup } from "../lookups/index.ts";
import type { RefusalLog } from "../refusals.ts";
import type { Store } from "../stores/index.ts";
import type { Timers } from "./timers.ts";
import type { Watchdog } from "./watchdog.ts";

/** One periodic job: what it is called, how often it runs, what it does. */
export interface Chore {
  name: string;
  everyMs: number;
  run(): void | Promise<void>;
}

/** How often the lookup is checked for damage by others (a deleted map): at most 5 s, as promised. */
export const LOOKUP_CHECK_MS = 2_000;
/** How often aggregated refusal counts reach the audit log. */
export const REFUSAL_FLUSH_MS = 5_000;
/** How often the store's upkeep runs: SQLite folds the WAL when anything was written, PostgreSQL prunes the change log when due. */
export const CHECKPOINT_MS = 10_000;
/** How often audit entries older than audit_retention are removed. */
export const AUDIT_PRUNE_MS = 3_600_000;

/** Removes audit entries older than audit_retention: every refusal is audited (aggregated), so the log is kept bounded. */
export async function pruneAudit(store: Store, config: ServerConfig, now = Date.now()): Promise<void> {
  try {
    const n = await store.pruneAudit(now - config.auditRetention * 1000);
    if (n) log.info(`audit log: removed ${n} entries older than ${config.auditRetention / 86400} days`);
  } catch (err) {
    log.warn(`audit log pruning failed: ${(err as Error).message}`);
  }
}

/** The server's interval table: pruning, flushing, checkpoint, lookup and export checks, overdue check. */
export function serverChores(d: { store: Store; lookup: Lookup; exports: Exports; refusals: RefusalLog; config(): ServerConfig; checked(): void; watchdog: Watchdog }): Chore[] {
  return [
    { name: "audit prune", everyMs: AUDIT_PRUNE_MS, run: () => pruneAudit(d.store, d.config()) },
    { name: "refusal flush", everyMs: REFUSAL_FLUSH_MS, run: () => d.refusals.flush() },
    {
      name: "checkpoint",
      everyMs: CHECKPOINT_MS,
      run: async () => {
        try {
          await d.store.maintain();
        } catch (err) {
          log.warn(`state checkpoint failed: ${(err as Error).message}`);
        }
      },
    },
    { name: "lookup check", everyMs: LOOKUP_CHECK_MS, run: () => d.lookup.check().then(d.checked, d.checked) },
    // overdue_check may change on reload: read at each scheduling.
    { name: "overdue check", get everyMs() { return d.config().overdueCheck * 1000; }, run: () => d.watchdog.check().then(() => undefined) },
    // Repairs and retries exports as often as the lookup is checked (never rejects); status follows when it tried.
    { name: "export check", everyMs: LOOKUP_CHECK_MS, run: () => d.exports.check().then((tried) => tried && d.checked()) },
  ];
}

/**
 * Runs each chore every `everyMs`, measured from the end of its last run, so
 * a slow one (a check rebuilding a map) never overlaps itself.
 */
export class Housekeeping {
  private readonly handles = new Map<Chore, unknown>();
  private stopped = true;

  constructor(
    private readonly chores: readonly Chore[],
    private readonly timers: Timers,
  ) {}

  /** Schedules every chore's first run one interval from now. */
  start(): void {
    this.stopped = false;
    for (const c of this.chores) this.schedule(c);
  }

  private schedule(c: Chore): void {
    if (this.stopped) return;
    this.handles.set(
      c,
      this.timers.set(async () => {
        try {
          await c.run();
        } catch (err) {
          log.warn(`${c.name} failed: ${(err as Error).message}`);
        }
        this.schedule(c);
      }, c.everyMs),
    );
  }

  /** Cancels every chore; one running finishes but is not scheduled again. */
  stop(): void {
    this.stopped = true;
    for (const h of this.handles.values()) this.timers.clear(h);
    this.handles.clear();
  }
}
