import { loadServerConfig, type ServerConfig } from "../lib/config.ts";
import { log, setLogFormat, setLogLevel } from "../lib/logging.ts";
import { certificateExpiry, type ServerCertificate } from "../lib/tls.ts";
import { certFor, openCore, openLookup, type Core } from "./core.ts";
import { routes, type Route } from "./doors/routes.ts";
import { monotonicWallClock, type Clock } from "../lib/clock.ts";
import type { Lookup } from "./lookups/index.ts";
import { Metrics } from "./metrics.ts";
import { RefusalLog } from "./refusals.ts";
import { Follower } from "./runtime/follower.ts";
import { Housekeeping, pruneAudit, serverChores } from "./runtime/housekeeping.ts";
import { hostPort, Listener } from "./runtime/listener.ts";
import { Publisher } from "./runtime/publisher.ts";
import { planReload } from "./runtime/reload.ts";
import type { ServerStatus } from "./runtime/status.ts";
import { realTimers, type Timers } from "./runtime/timers.ts";
import { LeaseService } from "./service.ts";
import type { Store } from "./stores/index.ts";
import { AuthThrottle, RenewalLimiter } from "./throttle.ts";

/**
 * Parts a caller may swap; the wiring between them never changes. Production
 * passes at most a clock; tests pass fake ones and an open store.
 */
export interface Parts {
  clock?: Clock;
  timers?: Timers;
  /** An open store instead of the one the config names. */
  store?: Store;
  authThrottle?: AuthThrottle;
  /** The renewal limiter until the next reload (which builds one from renewals_per_minute). */
  renewals?: RenewalLimiter;
  /** Refusal rows written per reason and minute. */
  refusalsPerMinute?: number;
}

/** The server as named parts: what the skeleton starts, reloads and stops. */
export interface Skeleton {
  core: Core;
  lookup: Lookup;
  metrics: Metrics;
  refusals: RefusalLog;
  service: LeaseService;
  /** Every HTTPS path, as the listener serves them. */
  routes: Record<string, Route>;
  publisher: Publisher;
  follower: Follower;
  housekeeping: Housekeeping;
  /** The HTTPS listener, once started. */
  readonly listener: Listener | undefined;
  /** Publishes from state, follows the store, runs the chores, listens. */
  start(): Promise<void>;
  /** Re-reads server.toml (from `path`, else where it came from) and the TLS files (SIGHUP). */
  reload(path?: string): Promise<void>;
  /** Stops every part and closes lookup and store; the caller releases the lock. */
  stop(): Promise<void>;
}

/**
 * The one wiring of a server, for startServer and the tests alike: state and
 * the live index, the lookup over it, the lease service and its doors, and
 * the runtime parts (publisher, follower, housekeeping, listener). Nothing
 * runs until start().
 */
export async function assemble(config: ServerConfig, parts: Parts = {}): Promise<Skeleton> {
  const core = await openCore(config, parts.clock ?? monotonicWallClock(), { tolerant: true, store: parts.store });
  const metrics = new Metrics();
  try {
    const lookup = await openLookup(core, (r) => {
      if (r instanceof Error) metrics.postmapFailures++;
      else metrics.rebuild(r.ms);
    });
    return new Assembled(core, lookup, metrics, parts);
  } catch (err) {
    await core.store.close();
    throw err;
  }
}

/** The parts of one server and the order they start, reload and stop in. */
class Assembled implements Skeleton {
  readonly refusals: RefusalLog;
  readonly service: LeaseService;
  readonly routes: Record<string, Route>;
  readonly publisher: Publisher;
  readonly follower: Follower;
  readonly housekeeping: Housekeeping;
  listener: Listener | undefined;
  private renewals: RenewalLimiter;
  private readonly startedAt = new Date().toISOString();
  private reloadedAt: string | null = null;

  constructor(
    readonly core: Core,
    readonly lookup: Lookup,
    readonly metrics: Metrics,
    parts: Parts,
  ) {
    const { store, leases, clock } = core;
    const timers = parts.timers ?? realTimers;
    this.renewals = parts.renewals ?? new RenewalLimiter(core.config.renewalsPerMinute);
    this.publisher = new Publisher({ leases, lookup, metrics, timers, stateDir: core.config.stateDir, status: () => this.status() });
    this.follower = new Follower({ store, leases, timers, onRefreshed: () => this.publisher.refreshed() });
    this.refusals = new RefusalLog(store.refusalSink(), clock, parts.refusalsPerMinute);
    const chores = serverChores({ store, lookup, refusals: this.refusals, config: () => core.config, checked: () => this.publisher.statusSoon() });
    this.housekeeping = new Housekeeping(chores, timers);
    this.service = new LeaseService({
      store,
      leases,
      lookup,
      clock,
      metrics,
      refusals: this.refusals,
      authThrottle: parts.authThrottle ?? new AuthThrottle(),
      config: () => core.config,
      renewals: () => this.renewals,
      publish: () => this.publisher.leaseChanged(),
    });
    this.routes = routes({
      service: this.service,
      degraded: () => this.degraded(),
      metricsAllow: () => core.config.metricsAllow,
      // From memory: a scrape never costs a database query.
      renderMetrics: () =>
        metrics.render({ leases: leases.index.liveCount(clock.now()), clients: this.follower.clients, degraded: this.degraded().length > 0, lookupEntries: lookup.status().entries }),
    });
  }

  private degraded(): string[] {
    return [...this.core.store.problems(), ...this.lookup.problems()];
  }

  /** What status.json holds: listener, certificate, lookup, health. */
  private status(): ServerStatus {
    const { config } = this.core;
    const l = this.listener!;
    return {
      pid: process.pid,
      started_at: this.startedAt,
      listen: hostPort(config.listen.host, l.port ?? config.listen.port),
      public_url: config.publicUrl,
      pin: l.pin,
      pin_changed_at: l.pinChangedAt,
      cert_path: l.cert.certPath,
      cert_expires_at: certificateExpiry(l.cert.certPem).toISOString(),
      lookup: this.lookup.status(),
      ...(this.lookup.type.statusAlias && { [this.lookup.type.statusAlias]: this.lookup.status() }),
      degraded: this.degraded(),
      reloaded_at: this.reloadedAt,
    };
  }

  async start(): Promise<void> {
    const { config, store } = this.core;
    setLogFormat(config.logFormat);
    const listener = (this.listener = new Listener(config.listen, await certFor(config), this.routes));
    await this.publisher.start();
    await pruneAudit(store, config);
    await this.follower.start();
    this.housekeeping.start();
    try {
      listener.start();
    } catch (err) {
      this.stopParts();
      throw err;
    }
    this.publisher.writeStatus();
    log.info(`listening on ${config.listen.host}:${listener.port} (${config.publicUrl}), lookup ${this.lookup.type.name} at ${this.lookup.status().target}, pin ${listener.pin}`);
  }

  // SIGHUP: ttl, limits, proxies, logging and TLS files change in place;
  // what would need new sockets, state or lookup says so.
  async reload(path?: string): Promise<void> {
    let next: ServerConfig;
    let nextCert: ServerCertificate;
    try {
      next = loadServerConfig(path ?? this.core.config.path);
      nextCert = await certFor(next);
    } catch (err) {
      log.error(`reload failed, keeping the running configuration: ${(err as Error).message}`);
      return;
    }
    const plan = planReload(this.core.config, next);
    for (const w of plan.warnings) log.warn(w);
    if (this.listener && !this.listener.reload(nextCert)) return;
    const config = (this.core.config = plan.config);
    this.renewals = new RenewalLimiter(config.renewalsPerMinute);
    setLogFormat(config.logFormat);
    setLogLevel(config.logLevel);
    this.reloadedAt = new Date().toISOString();
    this.publisher.reload();
    log.info("reloaded configuration");
  }

  private stopParts(): void {
    this.housekeeping.stop();
    this.follower.stop();
    this.publisher.stop();
  }

  async stop(): Promise<void> {
    this.stopParts();
    await this.listener?.stop();
    // Let in-flight work finish; nothing new is started on the way out.
    await this.lookup.close();
    this.refusals.flush();
    await this.core.store.close();
  }
}
