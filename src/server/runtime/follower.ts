import { systemClock, type Clock } from "../../lib/clock.ts";
import { log } from "../../lib/logging.ts";
import type { LeaseBook } from "../leases.ts";
import type { Store } from "../stores/index.ts";
import { realTimers, type Timers } from "./timers.ts";

/**
 * How often each host reloads every lease anyway (jittered by up to a fifth
 * either way, so hosts started together do not reconcile together): the
 * safety net under the change log, for a plain renewal another host never
 * hears of (its expiry there stays the earlier one) and for anything a bug
 * might have missed. Its cost per host is one full read, the same at 2 hosts
 * as at 20 (docs/performance.md).
 */
export const RECONCILE_MS = 300_000;

/**
 * Follows changes other processes commit (an admin command, another relay
 * host): each wake-up (a notice, the store's poll) catches up from the
 * store's change log, one catch-up at a time, and wake-ups arriving
 * meanwhile fold into one more. Every RECONCILE_MS it reloads everything,
 * while catch-ups go on.
 * Also keeps the client count for /metrics, read again when the log says
 * clients were enrolled or removed, so a scrape never queries the store.
 */
export class Follower {
  /** Enrolled clients as of the last count. */
  clients = 0;
  /** When the last successful reload began: the view is at least this current (runtime/freshness.ts); null before the first. */
  currentAt: number | null = null;
  private pending = false;
  /** The next catch-up reloads everything (the reconcile is due, or the last one failed). */
  private full = false;
  private running: Promise<void> | null = null;
  private unwatch: (() => void) | null = null;
  private reconcileTimer: unknown = null;
  private readonly timers: Timers;

  constructor(
    private readonly d: {
      store: Store;
      leases: LeaseBook;
      /**
       * Called after each successful catch-up (the view is current as of
       * currentAt); `changed` when it read any lease: then publish and re-arm.
       * An empty catch-up each second must not re-render a 1,000,000-line map.
       */
      onRefreshed(changed: boolean): void;
      /** Stamps currentAt; a clock that does not move with the database's. */
      clock?: Clock;
      timers?: Timers;
    },
  ) {
    this.timers = d.timers ?? realTimers;
  }

  /** Counts clients, then listens for changes and schedules the reconcile. */
  async start(): Promise<void> {
    await this.countClients().catch(() => undefined);
    this.unwatch = this.d.store.watch(() => void this.notice());
    this.scheduleReconcile();
  }

  /** A change may have been committed elsewhere: catch up (now, or right after the catch-up running). Resolves when none is pending. */
  notice(): Promise<void> {
    this.pending = true;
    this.running ??= this.drain().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /**
   * Reloads every lease (the periodic safety net) beside the catch-ups, not
   * in their queue: at 1,000,000 leases it takes seconds, and a revoke must
   * not wait for it. If it fails, the next catch-up reloads everything
   * instead (and says why if that fails too).
   */
  reconcile(): Promise<void> {
    return this.d.leases.reconcile().then(
      () => this.d.onRefreshed(true),
      () => {
        this.full = true;
        return this.notice();
      },
    );
  }

  private scheduleReconcile(): void {
    const jittered = RECONCILE_MS * (0.8 + 0.4 * Math.random());
    this.reconcileTimer = this.timers.set(() => {
      void this.reconcile().finally(() => {
        if (this.unwatch) this.scheduleReconcile();
      });
    }, jittered);
  }

  private async drain(): Promise<void> {
    while (this.pending) {
      this.pending = false;
      const asOf = (this.d.clock ?? systemClock).now();
      const full = this.full;
      this.full = false;
      let enrolled: boolean;
      let changed: boolean;
      try {
        ({ enrolled, changed } = await this.d.leases.catchUp(full));
        if (enrolled) await this.countClients();
        this.currentAt = asOf;
      } catch (err) {
        if (full) this.full = true;
        // An unreachable database is already reported (once, and in health); anything else is news.
        if (this.d.store.problems().length === 0) log.warn(`state: cannot refresh leases from ${this.d.store.where}: ${(err as Error).message}`);
        continue;
      }
      this.d.onRefreshed(changed);
    }
  }

  private async countClients(): Promise<void> {
    this.clients = (await this.d.store.counts()).clients;
  }

  /** Stops listening and reconciling; a catch-up in flight finishes. */
  stop(): void {
    this.unwatch?.();
    this.unwatch = null;
    if (this.reconcileTimer !== null) this.timers.clear(this.reconcileTimer);
    this.reconcileTimer = null;
  }
}
