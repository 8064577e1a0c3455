/**
 * Runs one job at a time. A caller arriving while a job runs waits for the
 * next run, which all such callers share: a burst of changes costs at most
 * two runs, and every caller resolves only after a run that started after it
 * asked (so it saw the caller's change).
 */
export class Coalescer<T> {
  private running: Promise<T> | null = null;
  private queued: Promise<T> | null = null;

  constructor(private readonly job: () => Promise<T>) {}

  /** Starts the job, or joins the one queued behind the running one. */
  run(): Promise<T> {
    if (this.queued) return this.queued;
    if (!this.running) return this.start();
    this.queued = this.running.catch(() => undefined).then(() => {
      this.queued = null;
      return this.start();
    });
    return this.queued;
  }

  /** Resolves once no job is running or queued, whatever their outcome. */
  async settled(): Promise<void> {
    while (this.running || this.queued) await (this.queued ?? this.running)!.catch(() => undefined);
  }

  private start(): Promise<T> {
    const run = this.job().finally(() => {
      if (this.running === run) this.running = null;
    });
    this.running = run;
    return run;
  }
}
