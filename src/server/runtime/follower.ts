import { systemClock, type Clock } from "../../lib/clock.ts";
import { log } from "../../lib/logging.ts";
import type { LeaseBook } from "../leases.ts";
import type { Store } from "../stores/index.ts";

/**
 * Follows changes other processes commit (an admin command, another relay
 * host): every notice means "reload all", one reload at a time, and notices
 * arriving meanwhile fold into one more. Also keeps the client count for
 * /metrics, read with each reload so a scrape never queries the store.
 */
export class Follower {
  /** Enrolled clients as of the last reload. */
  clients = 0;
  /** When the last successful reload began: the view is at least this current (runtime/freshness.ts); null before the first. */
  currentAt: number | null = null;
  private pending = false;
  private running: Promise<void> | null = null;
  private unwatch: (() => void) | null = null;

  constructor(
    private readonly d: {
      store: Store;
      leases: LeaseBook;
      /** Called after each successful reload: publish and re-arm. */
      onRefreshed(): void;
      /** Stamps currentAt; a clock that does not move with the database's. */
      clock?: Clock;
    },
  ) {}

  /** Counts clients, then listens for changes. */
  async start(): Promise<void> {
    await this.countClients().catch(() => undefined);
    this.unwatch = this.d.store.watch(() => void this.notice());
  }

  /** A change was committed elsewhere: reload (now, or right after the reload running). Resolves when none is pending. */
  notice(): Promise<void> {
    this.pending = true;
    this.running ??= this.drain().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async drain(): Promise<void> {
    while (this.pending) {
      this.pending = false;
      const asOf = (this.d.clock ?? systemClock).now();
      try {
        await this.d.leases.reload();
        await this.countClients();
        this.currentAt = asOf;
      } catch (err) {
        // An unreachable database is already reported (once, and in health); anything else is news.
        if (this.d.store.problems().length === 0) log.warn(`state: cannot refresh leases from ${this.d.store.where}: ${(err as Error).message}`);
        continue;
      }
      this.d.onRefreshed();
    }
  }

  private async countClients(): Promise<void> {
    this.clients = (await this.d.store.counts()).clients;
  }

  /** Stops listening; a reload in flight finishes. */
  stop(): void {
    this.unwatch?.();
    this.unwatch = null;
  }
}
