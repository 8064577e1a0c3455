/**
 * In-memory limits that protect the server without touching the database:
 * a blocked source costs one Map lookup, so a brute-force run never slows
 * down the clients that hold valid tokens.
 */

/** Monotonic milliseconds; wall-clock jumps must not lift or extend a block. */
export type MonoNow = () => number;
const mono: MonoNow = () => performance.now();

/** Largest number of sources or clients tracked; the oldest entry goes first beyond it. */
const MAX_KEYS = 50_000;

function boundedSet<K, V>(map: Map<K, V>, key: K, value: V): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > MAX_KEYS) map.delete(map.keys().next().value as K);
}

interface FailureState {
  windowStart: number;
  failures: number;
  blockedUntil: number;
  strikes: number;
}

/** Blocks a source address after too many failed authentications, for a period that doubles per burst. */
export class AuthThrottle {
  private readonly state = new Map<string, FailureState>();

  constructor(
    private readonly limit = 10,
    private readonly windowMs = 60_000,
    private readonly baseBlockMs = 60_000,
    private readonly maxBlockMs = 3_600_000,
    private readonly now: MonoNow = mono,
  ) {}

  /** Seconds the source must still wait, or 0 when it may try. */
  retryAfter(source: string): number {
    const s = this.state.get(source);
    const left = s ? s.blockedUntil - this.now() : 0;
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  /** Records a failure; returns the block in seconds when this failure starts one (log it once), else 0. */
  fail(source: string): number {
    const t = this.now();
    const s = this.state.get(source) ?? { windowStart: t, failures: 0, blockedUntil: 0, strikes: 0 };
    if (t - s.windowStart > this.windowMs) {
      s.windowStart = t;
      s.failures = 0;
      // A quiet window earns forgiveness for one earlier burst.
      if (t > s.blockedUntil + this.windowMs) s.strikes = Math.max(0, s.strikes - 1);
    }
    s.failures++;
    let started = 0;
    if (s.failures >= this.limit) {
      const ms = Math.min(this.baseBlockMs * 2 ** s.strikes, this.maxBlockMs);
      s.blockedUntil = t + ms;
      s.strikes++;
      s.failures = 0;
      s.windowStart = t;
      started = Math.ceil(ms / 1000);
    }
    boundedSet(this.state, source, s);
    return started;
  }
}

/** Caps renewals per client per minute: a cron `* * * * *` passes, a loop does not. */
export class RenewalLimiter {
  private readonly windows = new Map<string, { start: number; count: number }>();

  constructor(
    private readonly perMinute: number,
    private readonly now: MonoNow = mono,
  ) {}

  /** Counts one request: seconds to wait when over the cap (else 0), and whether this is the first refusal of the minute. */
  take(client: string): { wait: number; first: boolean } {
    if (this.perMinute <= 0) return { wait: 0, first: false };
    const t = this.now();
    let w = this.windows.get(client);
    if (!w || t - w.start >= 60_000) w = { start: t, count: 0 };
    w.count++;
    boundedSet(this.windows, client, w);
    const over = w.count > this.perMinute;
    return { wait: over ? Math.max(1, Math.ceil((w.start + 60_000 - t) / 1000)) : 0, first: w.count === this.perMinute + 1 };
  }
}
