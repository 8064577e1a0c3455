import type { Timers } from "./timers.ts";

/**
 * Runs an action that may fail (publishing to the lookup) and, when it does,
 * runs it again in the background with a delay that doubles from 1 s to
 * 60 s, until it works: nobody has to ask again for the map to heal.
 */
export class Retrier {
  private timer: unknown = null;
  private delay: number;
  private stopped = false;

  constructor(
    private readonly action: () => Promise<void>,
    private readonly timers: Timers,
    private readonly firstMs = 1000,
    private readonly maxMs = 60_000,
  ) {
    this.delay = firstMs;
  }

  /** Runs the action now; on failure schedules a retry and rethrows. */
  async run(): Promise<void> {
    try {
      await this.action();
      this.delay = this.firstMs;
    } catch (err) {
      this.schedule();
      throw err;
    }
  }

  /** True while a retry is waiting. */
  get pending(): boolean {
    return this.timer !== null;
  }

  private schedule(): void {
    if (this.timer !== null || this.stopped) return;
    const ms = this.delay;
    this.delay = Math.min(this.delay * 2, this.maxMs);
    this.timer = this.timers.set(() => {
      this.timer = null;
      this.run().catch(() => undefined);
    }, ms);
  }

  /** Cancels a waiting retry; none is scheduled afterwards. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
  }
}
