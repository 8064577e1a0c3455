import { mkdirSync } from "node:fs";
import { loadServerConfig, type ServerConfig } from "../lib/config.ts";
import { ExitCode, RelayError } from "../lib/errors.ts";
import { log, setLogFormat, setLogLevel } from "../lib/logging.ts";
import { certificateExpiry, certificatePin, ensureServerCertificate, type ServerCertificate } from "../lib/tls.ts";
import { MAX_BODY } from "./doors/api.ts";
import { dyndnsRoute } from "./doors/dyndns2.ts";
import { dispatcher, routes, type Route } from "./doors/routes.ts";
import { LeaseBook, monotonicWallClock, systemClock, type Clock } from "./leases.ts";
import { StateLock } from "./lock.ts";
import { lookupTypeOf, type Lookup, type LookupType } from "./lookups/index.ts";
import { Metrics } from "./metrics.ts";
import { RefusalLog } from "./refusals.ts";
import { ExpiryTimer } from "./runtime/expiry.ts";
import { planReload } from "./runtime/reload.ts";
import { Retrier } from "./runtime/retry.ts";
import { writeStatus, type ServerStatus } from "./runtime/status.ts";
import { realTimers, type Timers } from "./runtime/timers.ts";
import { LeaseService } from "./service.ts";
import { storeClock, type Store } from "./stores/index.ts";
import { openStore } from "./stores/open.ts";
import { AuthThrottle, RenewalLimiter } from "./throttle.ts";

/** How often the lookup is checked for damage by others (a deleted map): at most 5 s, as promised. */
const LOOKUP_CHECK_MS = 2_000;
/** How often aggregated refusal counts reach the audit log. */
const REFUSAL_FLUSH_MS = 5_000;
/** How often the WAL is folded into the database and truncated, when anything was written. */
const CHECKPOINT_MS = 10_000;

/** State, lease rules and the lookup type of a config: what server, admin commands and sweep share. */
export interface Core {
  config: ServerConfig;
  store: Store;
  leases: LeaseBook;
  lookupType: LookupType;
  clock: Clock;
}

/**
 * Opens state (SQLite, or the shared PostgreSQL database) and loads the live
 * index; the caller decides whether it holds the lock. `tolerant`: a server
 * starts even when the database cannot be reached, with an empty index, and
 * catches up when it answers.
 */
export async function openCore(config: ServerConfig, base: Clock = systemClock, opts: { tolerant?: boolean } = {}): Promise<Core> {
  const store = await openStore(config, base, opts);
  // Leases expire by the store's clock: PostgreSQL's now() on every host alike.
  const clock = storeClock(base, store);
  // Read through the holder so a SIGHUP reload changes the default ttl in place.
  const core: Core = { config, store, leases: new LeaseBook(store, () => core.config.ttl, clock), lookupType: lookupTypeOf(config), clock };
  try {
    await core.leases.reload();
  } catch (err) {
    if (!opts.tolerant) {
      await store.close();
      throw err;
    }
    log.error(`state: cannot read leases from ${store.where} (${(err as Error).message}); starting empty, catching up when it answers`);
  }
  return core;
}

/** Opens the configured lookup over a core's live index. */
export function openLookup(core: Core, onPublish?: (r: { ms: number; entries: number } | Error) => void): Promise<Lookup> {
  return core.lookupType.open({ config: core.config, index: core.leases.index, clock: core.clock, onPublish });
}

/** A running server: its URL, certificate pin, and how to reload or stop it. */
export interface RunningServer {
  port: number;
  readonly pin: string;
  core: Core;
  lookup: Lookup;
  /** Re-reads server.toml and the TLS files (SIGHUP). */
  reload(): Promise<void>;
  stop(): Promise<void>;
}

/** The server certificate for a config: the configured files, or the generated pair in state_dir. */
export function certFor(config: ServerConfig): Promise<ServerCertificate> {
  return ensureServerCertificate({
    stateDir: config.stateDir,
    host: new URL(config.publicUrl).hostname.replace(/^\[|\]$/g, ""),
    certPath: config.tlsCert,
    keyPath: config.tlsKey,
  });
}

/**
 * Refuses an address another process already listens on. The listener sets
 * SO_REUSEPORT so a SIGHUP can bind the new certificate beside the old
 * listener, but the kernel then lets any process of the same user join the
 * port the same way (a second server with another state_dir) and hands it
 * half the connections. A plain bind without the option fails while anyone
 * holds the port; anything else it meets is left to the real bind to report.
 */
export function refuseHeldPort(host: string, port: number): void {
  if (port === 0) return;
  try {
    Bun.listen({ hostname: host, port, exclusive: true, socket: { data() {} } }).stop(true);
  } catch (err) {
    if ((err as { code?: string }).code !== "EADDRINUSE") return;
    const shown = `${host.includes(":") ? `[${host}]` : host}:${port}`;
    throw new RelayError(`cannot listen on ${shown}: another process already listens on port ${port}`, {
      exitCode: ExitCode.USAGE,
      hint: "stop it (ss -ltnp shows which), or give this server another listen in server.toml",
    });
  }
}

/** Starts the HTTPS server: lock, state, lookup published from state, timers. */
export async function startServer(opts: { configPath?: string; config?: ServerConfig; clock?: Clock; timers?: Timers; extraRoutes?: (service: LeaseService) => Record<string, Route> } = {}): Promise<RunningServer> {
  const config = opts.config ?? loadServerConfig(opts.configPath);
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const lock = StateLock.acquire(config.stateDir);
  // Before state or the lookup is touched: a second server on a held port changes nothing.
  try {
    refuseHeldPort(config.listen.host, config.listen.port);
  } catch (err) {
    lock.release();
    throw err;
  }
  let core: Core | undefined;
  let lookup: Lookup | undefined;
  try {
    core = await openCore(config, opts.clock ?? monotonicWallClock(), { tolerant: true });
    const metrics = new Metrics();
    lookup = await openLookup(core, (r) => {
      if (r instanceof Error) metrics.postmapFailures++;
      else metrics.rebuild(r.ms);
    });
    return await serve(core, lookup, lock, metrics, opts);
  } catch (err) {
    await lookup?.close();
    await core?.store.close();
    lock.release();
    throw err;
  }
}

async function serve(
  core: Core,
  lookup: Lookup,
  lock: StateLock,
  metrics: Metrics,
  opts: { configPath?: string; timers?: Timers; extraRoutes?: (service: LeaseService) => Record<string, Route> },
): Promise<RunningServer> {
  const { store, leases, clock } = core;
  const timers = opts.timers ?? realTimers;
  let config = core.config;
  setLogFormat(config.logFormat);
  let cert = await certFor(config);
  let pin = certificatePin(cert.certPem);
  let pinChangedAt: string | null = null;
  let reloadedAt: string | null = null;
  const startedAt = new Date().toISOString();
  let listener: ReturnType<typeof Bun.serve> | undefined;
  let renewals = new RenewalLimiter(config.renewalsPerMinute);

  const degraded = (): string[] => [...store.problems(), ...lookup.problems()];
  const publishStatus = (): void => {
    const status: ServerStatus = {
      pid: process.pid,
      started_at: startedAt,
      listen: `${config.listen.host.includes(":") ? `[${config.listen.host}]` : config.listen.host}:${listener?.port ?? config.listen.port}`,
      public_url: config.publicUrl,
      pin,
      pin_changed_at: pinChangedAt,
      cert_path: cert.certPath,
      cert_expires_at: certificateExpiry(cert.certPem).toISOString(),
      lookup: lookup.status(),
      map: lookup.type.name === "map" ? lookup.status() : undefined,
      degraded: degraded(),
      reloaded_at: reloadedAt,
    };
    writeStatus(config.stateDir, status);
  };

  // Every publication goes through here, so a failed one is retried with
  // backoff until it works, without anyone having to ask again.
  const publisher = new Retrier(async () => {
    try {
      await lookup.publish();
    } finally {
      publishStatus();
    }
  }, timers);
  const publish = (): Promise<void> => publisher.run();
  const expiry = new ExpiryTimer(leases, metrics, publish, timers);

  // Leases that fell due while we were down go first; then the lookup is
  // built from state, whatever an earlier process left installed.
  const expired = await leases.expireDueOrLocally();
  metrics.event("expire", expired.gone.length);
  for (const l of expired.gone) log.info(`expired while stopped: ${l.client} ${l.ip}`);
  try {
    await publish();
  } catch (err) {
    // Only a human can fix a refusal (OpenSMTPD's reload as a non-root
    // user, say): retrying would leave the MTA on a stale table for good.
    if (err instanceof RelayError && err.exitCode === ExitCode.USAGE) {
      publisher.stop();
      throw err;
    }
    log.error(`initial publication to Postfix failed: ${(err as Error).message}`);
  }

  // Every refusal is audited (aggregated), so the log is kept to audit_retention.
  const pruneAudit = async (): Promise<void> => {
    try {
      const n = await store.pruneAudit(Date.now() - config.auditRetention * 1000);
      if (n) log.info(`audit log: removed ${n} entries older than ${config.auditRetention / 86400} days`);
    } catch (err) {
      log.warn(`audit log pruning failed: ${(err as Error).message}`);
    }
  };
  await pruneAudit();
  const refusals = new RefusalLog(store.refusalSink(), clock);
  // The client count for /metrics, read again with every full reload (an
  // admin command committed, or the shared database's periodic reconcile).
  let clients = 0;
  const countClients = async (): Promise<void> => {
    clients = (await store.counts()).clients;
  };
  await countClients().catch(() => undefined);
  // Another process or relay host changed state: refresh the index (only the
  // clients named, when a notice names them) and publish. One refresh at a
  // time; changes arriving meanwhile are folded into the next.
  let pending: Set<string> | null | undefined;
  let refreshing = false;
  const refresh = async (): Promise<void> => {
    if (refreshing) return;
    refreshing = true;
    try {
      while (pending !== undefined) {
        const which = pending;
        pending = undefined;
        try {
          if (which === null) {
            await leases.reload();
            await countClients();
          } else await leases.refresh([...which]);
        } catch (err) {
          // An unreachable database is already reported (once, and in health); anything else is news.
          if (store.problems().length === 0) log.warn(`state: cannot refresh leases from ${store.where}: ${(err as Error).message}`);
          continue;
        }
        publish().catch(() => undefined);
        expiry.arm();
      }
    } finally {
      refreshing = false;
    }
  };
  const stopWatch = store.watch((change) => {
    if (change === null || pending === null) pending = null;
    else {
      pending ??= new Set();
      for (const c of change) pending.add(c);
    }
    void refresh();
  });
  const intervals = [
    setInterval(() => void pruneAudit(), 3_600_000),
    setInterval(() => refusals.flush(), REFUSAL_FLUSH_MS),
    setInterval(() => {
      try {
        store.maintain();
      } catch (err) {
        log.warn(`state checkpoint failed: ${(err as Error).message}`);
      }
    }, CHECKPOINT_MS),
    setInterval(() => {
      lookup.check().then(publishStatus, () => publishStatus());
    }, LOOKUP_CHECK_MS),
  ];

  const service = new LeaseService({
    store,
    leases,
    lookup,
    clock,
    metrics,
    refusals,
    authThrottle: new AuthThrottle(),
    config: () => config,
    renewals: () => renewals,
    publish: async () => {
      await publish();
      expiry.arm();
    },
  });
  const table = routes({
    service,
    degraded,
    metricsAllow: () => config.metricsAllow,
    // From memory: a scrape never costs a database query.
    renderMetrics: () => metrics.render({ leases: leases.index.liveCount(clock.now()), clients, degraded: degraded().length > 0, mapEntries: lookup.status().entries }),
    extra: { "/nic/update": dyndnsRoute(service), ...opts.extraRoutes?.(service) },
  });
  const fallback = dispatcher({});

  const listen = (): ReturnType<typeof Bun.serve> => {
    try {
      return Bun.serve({
        hostname: config.listen.host,
        port: config.listen.port,
        // A reload binds the new certificate beside the old listener before
        // closing it, so the port is never free for another process to take.
        reusePort: true,
        tls: { cert: cert.certPem, key: cert.keyPem },
        maxRequestBodySize: MAX_BODY * 4,
        routes: table,
        fetch: fallback,
        error: (err) => {
          log.error(`request failed: ${err.message}`);
          return new Response('{"error":"internal","message":"internal server error"}\n', { status: 500 });
        },
      });
    } catch (err) {
      throw new RelayError(`cannot listen on ${config.listen.host}:${config.listen.port}: ${(err as Error).message}`, {
        exitCode: ExitCode.USAGE,
        hint: "another process holds the port, or the address is not on this host; change listen in server.toml",
      });
    }
  };
  try {
    // Again just before binding: check and bind are then microseconds apart, not the seconds state takes to load.
    refuseHeldPort(config.listen.host, config.listen.port);
    listener = listen();
  } catch (err) {
    for (const i of intervals) clearInterval(i);
    stopWatch();
    publisher.stop();
    throw err;
  }
  expiry.arm();
  publishStatus();
  log.info(`listening on ${config.listen.host}:${listener.port} (${config.publicUrl}), lookup ${lookup.type.name} at ${lookup.status().target}, pin ${pin}`);

  // SIGHUP: ttl, limits, proxies, logging and TLS files change in place;
  // what would need new sockets, state or lookup says so.
  const reload = async (): Promise<void> => {
    let next: ServerConfig;
    let nextCert: ServerCertificate;
    try {
      next = loadServerConfig(opts.configPath ?? config.path);
      nextCert = await certFor(next);
    } catch (err) {
      log.error(`reload failed, keeping the running configuration: ${(err as Error).message}`);
      return;
    }
    const plan = planReload(config, next);
    for (const w of plan.warnings) log.warn(w);
    if (nextCert.certPem !== cert.certPem) {
      const previous = { cert, listener };
      cert = nextCert;
      try {
        listener = listen();
      } catch (err) {
        cert = previous.cert;
        log.error(`reload: cannot listen with the new certificate, keeping the old listener: ${(err as Error).message}`);
        return;
      }
      // The old listener finishes its open requests, then closes.
      void previous.listener?.stop();
      const nextPin = certificatePin(nextCert.certPem);
      if (nextPin !== pin) {
        log.warn(`reload: certificate changed, pin is now ${nextPin}; clients enrolled with --pin must re-enroll`);
        pin = nextPin;
        pinChangedAt = new Date().toISOString();
      } else log.info("reload: certificate renewed, pin unchanged");
    }
    config = plan.config;
    core.config = config;
    renewals = new RenewalLimiter(config.renewalsPerMinute);
    setLogFormat(config.logFormat);
    setLogLevel(config.logLevel);
    reloadedAt = new Date().toISOString();
    publishStatus();
    expiry.arm();
    log.info("reloaded configuration");
  };

  let stopped = false;
  return {
    port: listener.port!,
    get pin() {
      return pin;
    },
    core,
    lookup,
    reload,
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const i of intervals) clearInterval(i);
      stopWatch();
      expiry.stop();
      publisher.stop();
      await listener?.stop();
      // Let in-flight work finish; nothing new is started on the way out.
      await lookup.close();
      refusals.flush();
      await store.close();
      lock.release();
    },
  };
}
