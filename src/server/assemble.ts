import { loadServerConfig, type ServerConfig } from "../lib/config.ts";
import { log, setLogFormat, setLogLevel } from "../lib/logging.ts";
import { certificateExpiry, type ServerCertificate } from "../lib/tls.ts";
import { certFor, openCore, openLookup, type Core } from "./core.ts";
import { openExports, type Exports } from "./exports.ts";
import { routes, type Route } from "./doors/routes.ts";
import { monotonicWallClock, type Clock } from "../lib/clock.ts";
import type { Lookup } from "./lookups/index.ts";
import { Alerter, type AlertDeps } from "./alerts.ts";
import { Metrics } from "./metrics.ts";
import { RefusalLog } from "./refusals.ts";
import { Follower } from "./runtime/follower.ts";
import { Freshness, WithheldView } from "./runtime/freshness.ts";
import { Housekeeping, pruneAudit, serverChores } from "./runtime/housekeeping.ts";
import { hostPort, Listener } from "./runtime/listener.ts";
import { Publisher } from "./runtime/publisher.ts";
import { planReload } from "./runtime/reload.ts";
import type { ServerStatus } from "./runtime/status.ts";
import { realTimers, type Timers } from "./runtime/timers.ts";
import { Watchdog } from "./runtime/watchdog.ts";
import { LeaseService } from "./service.ts";
import type { Store } from "./stores/index.ts";
import { STORES } from "./stores/open.ts";
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
  /** How alerts are delivered (command runner, fetch, sendmail). */
  alertDeps?: Partial<AlertDeps>;
}

/** The server as named parts: what the skeleton starts, reloads and stops. */
export interface Skeleton {
  core: Core;
  lookup: Lookup;
  exports: Exports;
  metrics: Metrics;
  refusals: RefusalLog;
  service: LeaseService;
  /** Every HTTPS path, as the listener serves them. */
  routes: Record<string, Route>;
  publisher: Publisher;
  follower: Follower;
  freshness: Freshness;
  housekeeping: Housekeeping;
  /** The overdue check and the alerts it sends. */
  watchdog: Watchdog;
  alerter: Alerter;
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
  const clock = parts.clock ?? monotonicWallClock();
  const core = await openCore(config, clock, { tolerant: true, store: parts.store });
  const metrics = new Metrics();
  // The lookup reads the index through the view Freshness may withhold.
  const view = new WithheldView(core.leases.index);
  try {
    const lookup = await openLookup(core, (r) => {
      if (r instanceof Error) metrics.postmapFailures++;
      else metrics.rebuild(r.ms);
    }, view);
    let exports: Exports;
    try {
      // Exports read the same view: a host cut off from the database lists nobody to OpenDKIM either.
      exports = openExports(core.config, view, core.clock);
    } catch (err) {
      await lookup.close();
      throw err;
    }
    return new Assembled(core, lookup, exports, metrics, { ...parts, clock }, view);
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
  readonly freshness: Freshness;
  readonly housekeeping: Housekeeping;
  readonly watchdog: Watchdog;
  readonly alerter: Alerter;
  listener: Listener | undefined;
  private renewals: RenewalLimiter;
  private readonly startedAt = new Date().toISOString();
  private reloadedAt: string | null = null;

  constructor(
    readonly core: Core,
    readonly lookup: Lookup,
    readonly exports: Exports,
    readonly metrics: Metrics,
    parts: Parts & { clock: Clock },
    view: WithheldView,
  ) {
    const { store, leases, clock } = core;
    const timers = parts.timers ?? realTimers;
    this.renewals = parts.renewals ?? new RenewalLimiter(core.config.renewalsPerMinute);
    this.publisher = new Publisher({ leases, lookup, exports, metrics, timers, stateDir: core.config.stateDir, status: () => this.status() });
    this.follower = new Follower({
      store,
      leases,
      timers,
      clock: parts.clock,
      onRefreshed: (changed) => {
        // Current again: restore the leases before publishing them (a
        // change of staleness publishes through freshness's own callback).
        this.freshness.check();
        if (changed) this.publisher.refreshed();
      },
    });
    // Only a shared store can change behind this host's back: on SQLite this
    // server is the one writer besides admin commands on the same host, which
    // write the same file; a failure to read that file fails renewals too
    // (503) and no partition can hide another host's revoke. So SQLite is
    // never stale, and its view is not timed.
    this.freshness = new Freshness({
      applies: STORES[store.kind].shared,
      where: store.where,
      clock: parts.clock,
      timers,
      staleAfter: () => core.config.staleAfter,
      currentAt: () => this.follower.currentAt,
      view,
      // status.json says so at once, not after the publication's debounce.
      changed: () => {
        this.publisher.refreshed();
        this.publisher.writeStatus();
      },
    });
    this.refusals = new RefusalLog(store.refusalSink(), clock, parts.refusalsPerMinute);
    this.alerter = new Alerter(() => core.config.alerts, parts.alertDeps);
    this.watchdog = new Watchdog({ store, clock, alerter: this.alerter, config: () => core.config, host: this.alerter.deps.host, clients: () => this.follower.clients });
    const chores = serverChores({ store, lookup, exports, refusals: this.refusals, config: () => core.config, checked: () => this.publisher.statusSoon(), watchdog: this.watchdog });
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
        metrics.render({
          // As the lookup sees them: none while stale.
          leases: view.liveCount(clock.now()),
          clients: this.follower.clients,
          degraded: this.degraded().length > 0,
          lookupEntries: lookup.status().entries,
          state: this.freshness.gauges(),
          overdue: this.watchdog,
        }),
    });
  }

  private degraded(): string[] {
    return [...this.core.store.problems(), ...this.freshness.problems(), ...this.lookup.problems(), ...this.exports.problems()];
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
      exports: this.exports.status(),
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
    this.freshness.start();
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
    this.freshness.reload();
    log.info("reloaded configuration");
  }

  private stopParts(): void {
    this.housekeeping.stop();
    this.freshness.stop();
    this.follower.stop();
    this.publisher.stop();
  }

  async stop(): Promise<void> {
    this.stopParts();
    await this.listener?.stop();
    // Let in-flight work finish; nothing new is started on the way out.
    await this.lookup.close();
    await this.exports.close();
    this.refusals.flush();
    await this.core.store.close();
  }
}
