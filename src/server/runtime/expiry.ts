import { log } from "../../lib/logging.ts";
import type { LeaseBook } from "../leases.ts";
import type { Metrics } from "../metrics.ts";
import type { Timers } from "./timers.ts";

/** Longest sleep of the expiry timer, so a changed clock or missed wake-up is caught soon. */
export const MAX_TIMER_MS = 30_000;

/**
 * One timer aimed at the next expiry, so a lease leaves the lookup within a
 * second of expiring instead of at the next sweep.
 */
export class ExpiryTimer {
  private timer: unknown = null;
  private stopped = false;

  constructor(
    private readonly leases: LeaseBook,
    private readonly metrics: Metrics,
    /** Publishes the lookup after leases went (errors are retried by the caller's Retrier). */
    private readonly publish: () => Promise<void>,
    private readonly timers: Timers,
  ) {}

  /** Expires what is due, publishes if anything went, and aims the timer at the next expiry. */
  fire(): void {
    const gone = this.leases.expireDue();
    this.metrics.event("expire", gone.length);
    for (const l of gone) log.info(`expired: ${l.client} ${l.ip}`);
    if (gone.length) this.publish().catch(() => undefined);
    this.arm();
  }

  /** (Re)aims the timer at the next expiry, at most MAX_TIMER_MS away. */
  arm(): void {
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
    if (this.stopped) return;
    const ms = this.leases.msUntilNextExpiry();
    this.timer = this.timers.set(() => {
      this.timer = null;
      this.fire();
    }, Math.min(ms === null ? MAX_TIMER_MS : ms + 5, MAX_TIMER_MS));
  }

  /** Stops for good. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
  }
}
