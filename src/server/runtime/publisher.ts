import { ExitCode, RelayError } from "../../lib/errors.ts";
import { log } from "../../lib/logging.ts";
import type { Exports } from "../exports.ts";
import type { LeaseBook } from "../leases.ts";
import type { Lookup } from "../lookups/index.ts";
import type { Metrics } from "../metrics.ts";
import { ExpiryTimer } from "./expiry.ts";
import { Retrier } from "./retry.ts";
import { writeStatus, type ServerStatus } from "./status.ts";
import type { Timers } from "./timers.ts";

/**
 * How long status.json may lag a publication: writes are gathered and made
 * at most once per this delay, after the answer, so a renewal's 200 never
 * waits for the file's fsyncs and `server status` is at most this late.
 */
export const STATUS_DELAY_MS = 250;

/** What the publisher drives and what it reports from. */
export interface PublisherParts {
  leases: LeaseBook;
  lookup: Lookup;
  /** Export files that follow every publication, in the background: relaying never waits for them. */
  exports: Exports;
  metrics: Metrics;
  timers: Timers;
  /** Where status.json goes (state_dir). */
  stateDir: string;
  /** The facts status.json holds right now. */
  status(): ServerStatus;
}

/**
 * The live set on its way to Postfix: every publication goes through one
 * Retrier (a failed one heals without anyone asking again), the expiry timer
 * is re-armed after each change, and status.json follows, debounced.
 */
export class Publisher {
  readonly expiry: ExpiryTimer;
  private readonly retrier: Retrier;
  private statusTimer: unknown = null;
  /** status.json is written only between start() and stop(): it says a server runs. */
  private running = false;

  constructor(private readonly d: PublisherParts) {
    this.retrier = new Retrier(async () => {
      try {
        await d.lookup.publish();
      } finally {
        this.statusSoon();
      }
    }, d.timers);
    this.expiry = new ExpiryTimer(d.leases, d.metrics, () => this.publish(), d.timers);
  }

  /** Expires what fell due while stopped, publishes the live set whatever an earlier process left installed, arms the expiry timer; status.json is written from now on. */
  async start(): Promise<void> {
    this.running = true;
    const expired = await this.d.leases.expireDueOrLocally();
    this.d.metrics.event("expire", expired.gone.length);
    for (const l of expired.gone) log.info(`expired while stopped: ${l.client} ${l.ip}`);
    try {
      await this.publish();
    } catch (err) {
      // Only a human can fix a refusal (OpenSMTPD's reload as a non-root
      // user, say): retrying would leave the MTA on a stale table for good.
      if (err instanceof RelayError && err.exitCode === ExitCode.USAGE) {
        this.stop();
        throw err;
      }
      log.error(`initial publication to Postfix failed: ${(err as Error).message}`);
    }
    this.expiry.arm();
  }

  /** Publishes now; a failure rejects and is retried with backoff. The exports follow on their own (a failing one is retried by its check). */
  publish(): Promise<void> {
    void this.d.exports.sync();
    return this.retrier.run();
  }

  /** After this process changed a lease: publish, and once published aim the expiry timer anew. */
  async leaseChanged(): Promise<void> {
    await this.publish();
    this.expiry.arm();
  }

  /** After the live set was refreshed from the store: publish in the background, re-arm at once. */
  refreshed(): void {
    this.publish().catch(() => undefined);
    this.expiry.arm();
  }

  /** Writes status.json within STATUS_DELAY_MS, once for any number of calls meanwhile. */
  statusSoon(): void {
    if (this.statusTimer !== null || !this.running) return;
    this.statusTimer = this.d.timers.set(() => this.writeStatus(), STATUS_DELAY_MS);
  }

  /** Writes status.json now (start, reload), folding in a pending debounced write. */
  writeStatus(): void {
    if (this.statusTimer !== null) this.d.timers.clear(this.statusTimer);
    this.statusTimer = null;
    if (this.running) writeStatus(this.d.stateDir, this.d.status());
  }

  /** A new configuration (ttl may have changed): re-aim the expiry timer, say so in status at once. */
  reload(): void {
    this.expiry.arm();
    this.writeStatus();
  }

  /** Stops the timers for good; a publication in flight finishes. */
  stop(): void {
    if (this.statusTimer !== null) this.d.timers.clear(this.statusTimer);
    this.statusTimer = null;
    this.running = false;
    this.expiry.stop();
    this.retrier.stop();
  }
}
