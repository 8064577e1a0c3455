import type { Clock } from "../../lib/clock.ts";
import type { Ip } from "../../lib/ip.ts";
import { log } from "../../lib/logging.ts";
import type { LiveView } from "../live.ts";
import type { Timers } from "./timers.ts";

/**
 * How often staleness is checked, whether or not a refresh is attempted (a
 * hung connection attempts none): a host withholds every lease at most
 * stale_after plus this after its last successful read of the database.
 */
export const FRESHNESS_CHECK_MS = 1_000;

const NO_TEXTS: readonly string[] = Object.freeze([]);

/**
 * The live index as the lookups see it: the index itself while this host's
 * view is current, and "no lease is live" while it is withheld. Every lookup
 * reads through here (LookupContext.index), so no lookup has its own check.
 */
export class WithheldView implements LiveView {
  /** True while every lease is withheld from the MTA. */
  withheld = false;

  constructor(private readonly index: LiveView) {}

  covers(ip: Ip, now: number): boolean {
    return !this.withheld && this.index.covers(ip, now);
  }
  liveTexts(now: number): readonly string[] {
    return this.withheld ? NO_TEXTS : this.index.liveTexts(now);
  }
  onlyIPv4Hosts(): boolean {
    return this.withheld || this.index.onlyIPv4Hosts();
  }
  liveCount(now: number): number {
    return this.withheld ? 0 : this.index.liveCount(now);
  }
}

/** What Freshness watches and what it tells. */
export interface FreshnessParts {
  /**
   * False for a store no other host writes (SQLite): see assemble.ts for why
   * such a host is never stale. Then nothing is ever withheld.
   */
  applies: boolean;
  /** Where the state is, for messages. */
  where: string;
  /** A clock that never jumps with the database's (the base clock, not the store's). */
  clock: Clock;
  timers: Timers;
  /** stale_after in seconds, read at each check so a SIGHUP reload applies at once. */
  staleAfter(): number;
  /** When the view was last read whole from the store (Follower.currentAt); null before the first refresh. */
  currentAt(): number | null;
  view: WithheldView;
  /** Stale became current or the other way round: publish (the view already says which). */
  changed(stale: boolean): void;
}

/**
 * Fails closed on staleness: once the last successful refresh from the
 * shared database is older than stale_after, another host may have revoked,
 * released or moved any lease without this host hearing of it, so it tells
 * its MTA that no lease is live until a refresh succeeds again. Whatever made
 * the refreshes fail (the database down, a network cut, a revoked grant, a
 * hung connection) counts alike: only the age of the view is looked at.
 */
export class Freshness {
  private stale = false;
  /** Age reference before the first refresh: when this part started (the index was loaded just before, or is empty). */
  private startedAt = 0;
  private timer: unknown = null;

  constructor(private readonly d: FreshnessParts) {}

  /** Starts checking every FRESHNESS_CHECK_MS. */
  start(): void {
    this.startedAt = this.d.clock.now();
    this.schedule();
  }

  private schedule(): void {
    this.timer = this.d.timers.set(() => {
      this.check();
      this.schedule();
    }, FRESHNESS_CHECK_MS);
  }

  /** Milliseconds since the view was last current. */
  ageMs(): number {
    return Math.max(0, this.d.clock.now() - (this.d.currentAt() ?? this.startedAt));
  }

  /** True while every lease is withheld. */
  get isStale(): boolean {
    return this.stale;
  }

  /** Looks at the view's age now (the timer, each refresh, a reload); on a change withholds or restores the leases, logs once and tells. */
  check(): void {
    if (!this.d.applies || this.timer === null) return;
    const stale = this.ageMs() > this.d.staleAfter() * 1000;
    if (stale === this.stale) return;
    this.stale = this.d.view.withheld = stale;
    if (stale) log.error(`state: ${this.problem()}`);
    else log.info(`state: this host reads ${this.d.where} again; the MTA relays for the live leases again`);
    this.d.changed(stale);
  }

  private problem(): string {
    const at = this.d.currentAt();
    const since = at === null ? "never read since start" : `last read ${new Date(at).toISOString()}`;
    return `this host's view of ${this.d.where} is older than stale_after (${this.d.staleAfter()}s; ${since}); the MTA is told no lease is live until it reads the database again`;
  }

  /** A new configuration (stale_after may have changed): looks again at once. */
  reload(): void {
    this.check();
  }

  /** The degraded reason while stale; empty while current. */
  problems(): string[] {
    return this.stale ? [`state: ${this.problem()}`] : [];
  }

  /** For /metrics: whether leases are withheld and how old the view is; undefined when staleness does not apply. */
  gauges(): { stale: boolean; ageSeconds: number } | undefined {
    return this.d.applies ? { stale: this.stale, ageSeconds: this.ageMs() / 1000 } : undefined;
  }

  /** Stops checking; the view stays as it is (the server is stopping). */
  stop(): void {
    if (this.timer !== null) this.d.timers.clear(this.timer);
    this.timer = null;
  }
}
