import { log } from "../../lib/logging.ts";
import type { LeaseBook } from "../leases.ts";
import type { Metrics } from "../metrics.ts";
import type { Timers } from "./timers.ts";

/** Longest sleep of the expiry timer, so a changed clock or missed wake-up is caught soon. */
export const MAX_TIMER_MS = 30_000;
/** Sleep between attempts while the store cannot be reached (the index has already dropped what was due). */
const RETRY_MS = 1_000;

/**
 * One timer aimed at the next expiry, so a lease leaves the lookup within a
 * second of expiring instead of at the next sweep.
 */
export class ExpiryTimer {
  private timer: unknown = null;
  private stopped = false;
  private running: Promise<void> | null = null;

  constructor(
    private readonly leases: LeaseBook,
    private readonly metrics: Metrics,
    /** Publishes the lookup after leases went (errors are retried by the caller's Retrier). */
    private readonly publish: () => Promise<void>,
    private readonly timers: Timers,
  ) {}

  /** Expires what is due (in the store, or locally when it is down), publishes if anything went, and aims the timer at the next expiry. */
  fire(): Promise<void> {
    // One expiry pass at a time: a slow database must not stack them up.
    this.running ??= (async () => {
      let retry = false;
      try {
        let published = false;
        const publish = (): void => {
          published = true;
          this.publish().catch(() => undefined);
        };
        const { gone, local } = await this.leases.expireDueOrLocally(publish);
        retry = local;
        this.metrics.event("expire", gone.length);
        for (const l of gone) log.info(`expired${local ? " (local lookup only)" : ""}: ${l.client} ${l.ip}`);
        // Usually published already, as the index dropped them; not when another host expired them first.
        if (gone.length && !published) publish();
      } finally {
        this.running = null;
        this.arm(retry ? RETRY_MS : undefined);
      }
    })();
    return this.running;
  }

  /** (Re)aims the timer at the next expiry, at most MAX_TIMER_MS (or `atMost`) away. */
  arm(atMost = MAX_TIMER_MS): void {
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
    if (this.stopped) return;
    const ms = this.leases.msUntilNextExpiry();
    this.timer = this.timers.set(() => {
      this.timer = null;
      void this.fire();
    }, Math.min(ms === null ? atMost : ms + 5, atMost));
  }

  /** Stops for good. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
  }
}
