import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { loadServerConfig, type MapType, type ServerConfig } from "../lib/config.ts";
import { ExitCode, RelayError } from "../lib/errors.ts";
import { log, setLogFormat, setLogLevel } from "../lib/logging.ts";
import { Metrics } from "./metrics.ts";
import { certificateExpiry, certificatePin, ensureServerCertificate, type ServerCertificate } from "../lib/tls.ts";
import { createHandler, MAX_BODY } from "./http.ts";
import { LeaseBook, monotonicWallClock, systemClock, type Clock } from "./leases.ts";
import { StateLock } from "./lock.ts";
import { MapWriter, type RebuildInfo } from "./map.ts";
import { defaultMapType, findPostfixTool, requirePostfixTool } from "./postfix.ts";
import { StateStore } from "./state.ts";
import { AuthThrottle, RenewalLimiter } from "./throttle.ts";

/** How often the server looks for changes made by admin commands (revoke, add). */
const ADMIN_POLL_MS = 250;
/** Longest sleep of the expiry timer, so a changed clock or missed wake-up is caught soon. */
const MAX_TIMER_MS = 30_000;

/** Map location, type and the postmap binary, resolved the same way for server and admin commands. */
export async function resolveMap(config: ServerConfig): Promise<{ path: string; type: MapType; postmap: string }> {
  const postmap = requirePostfixTool("postmap", config.postmap);
  const type = config.mapType ?? (await defaultMapType(findPostfixTool("postconf")));
  return { path: config.map, type, postmap };
}

/** Everything a state change needs: store, lease rules and the map writer, shared by server and admin commands. */
export interface Core {
  config: ServerConfig;
  store: StateStore;
  leases: LeaseBook;
  map: MapWriter;
  /** Set by a running server: metrics and status.json follow each rebuild. */
  onRebuild?: (result: RebuildInfo | Error) => void;
}

/** Opens state and map for a config; the caller decides whether it holds the lock. */
export async function openCore(config: ServerConfig, clock: Clock = systemClock): Promise<Core> {
  const store = new StateStore(config.stateDir);
  const m = await resolveMap(config);
  mkdirSync(dirname(m.path), { recursive: true });
  // Read through the holder so a SIGHUP reload changes the default ttl in place.
  const leases = new LeaseBook(store, () => core.config.ttl, clock);
  const map = new MapWriter({
    ...m,
    addresses: () => leases.liveAddresses(),
    timeoutMs: config.postmapTimeout * 1000,
    onRebuild: (r) => core.onRebuild?.(r),
  });
  const core: Core = { config, store, leases, map };
  return core;
}

/** A running server: its URL, certificate pin, and how to reload or stop it. */
export interface RunningServer {
  port: number;
  readonly pin: string;
  core: Core;
  /** Re-reads server.toml and the TLS files (SIGHUP). */
  reload(): Promise<void>;
  stop(): Promise<void>;
}

/** What `relayctl server status` reads from state_dir while a server runs. */
export interface ServerStatus {
  pid: number;
  started_at: string;
  listen: string;
  public_url: string;
  pin: string;
  pin_changed_at: string | null;
  cert_path: string;
  cert_expires_at: string;
  map: { path: string; db: string; type: string; entries: number; rebuilds: number; last_rebuild_at: string | null; last_rebuild_ms: number | null };
  degraded: string[];
  reloaded_at: string | null;
}

/** Where a running server publishes its status. */
export function statusPath(stateDir: string): string {
  return join(stateDir, "status.json");
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

/** Starts the HTTPS server: lock, state, map rebuilt from state, timers. */
export async function startServer(opts: { configPath?: string; config?: ServerConfig; clock?: Clock } = {}): Promise<RunningServer> {
  const config = opts.config ?? loadServerConfig(opts.configPath);
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const lock = StateLock.acquire(config.stateDir);
  let core: Core | undefined;
  try {
    core = await openCore(config, opts.clock ?? monotonicWallClock());
    return await serve(core, lock, opts.configPath);
  } catch (err) {
    core?.store.close();
    lock.release();
    throw err;
  }
}

async function serve(core: Core, lock: StateLock, configPath: string | undefined): Promise<RunningServer> {
  const { store, leases, map } = core;
  let config = core.config;
  setLogFormat(config.logFormat);
  let cert = await certFor(config);
  let pin = certificatePin(cert.certPem);
  let pinChangedAt: string | null = null;
  let reloadedAt: string | null = null;
  const startedAt = new Date().toISOString();
  const metrics = new Metrics();

  let retryDelay = 1000;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let expiryTimer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  let listener: ReturnType<typeof Bun.serve> | undefined;

  const degraded = (): string[] => (map.lastError ? [`map: ${map.lastError}`] : []);
  // Before the first rebuild the map holds what state says is live.
  const mapEntries = (): number => map.lastRebuild?.entries ?? leases.liveAddresses().length;

  // A small file beside the state, so `relayctl server status` can show
  // runtime facts (last rebuild, degraded reasons) without an API of its own.
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
      map: {
        path: config.map,
        db: map.dbPath,
        type: map.type,
        entries: mapEntries(),
        rebuilds: map.rebuilds,
        last_rebuild_at: map.lastRebuild ? new Date(map.lastRebuild.at).toISOString() : null,
        last_rebuild_ms: map.lastRebuild ? Math.round(map.lastRebuild.ms * 10) / 10 : null,
      },
      degraded: degraded(),
      reloaded_at: reloadedAt,
    };
    const path = statusPath(config.stateDir);
    try {
      writeFileSync(`${path}.tmp`, JSON.stringify(status, null, 2) + "\n", { mode: 0o644 });
      renameSync(`${path}.tmp`, path);
    } catch (err) {
      log.warn(`cannot write ${path}: ${(err as Error).message}`);
    }
  };

  // Every map change goes through here, so a failed postmap is retried
  // with backoff until it works, without anyone having to ask again.
  core.onRebuild = (r) => {
    if (r instanceof Error) metrics.postmapFailures++;
    else metrics.rebuild(r.ms);
    publishStatus();
  };
  const syncMap = async (): Promise<unknown> => {
    try {
      const r = await map.sync();
      retryDelay = 1000;
      return r;
    } catch (err) {
      if (!retryTimer && !stopped) {
        retryTimer = setTimeout(() => {
          retryTimer = undefined;
          syncMap().catch(() => undefined);
        }, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 60_000);
      }
      throw err;
    }
  };

  const expireNow = (): void => {
    const gone = leases.expireDue();
    metrics.event("expire", gone.length);
    for (const l of gone) log.info(`expired: ${l.client} ${l.ip}`);
    syncMap().catch(() => undefined);
    armExpiry();
  };

  // One timer aimed at the next expiry, so a lease leaves the map within a
  // second of expiring instead of at the next sweep.
  function armExpiry(): void {
    clearTimeout(expiryTimer);
    if (stopped) return;
    const ms = leases.msUntilNextExpiry();
    expiryTimer = setTimeout(expireNow, Math.min(ms === null ? MAX_TIMER_MS : ms + 5, MAX_TIMER_MS));
  }

  // Rebuild from state first: leases that fell due while we were down go now.
  const expired = leases.expireDue();
  metrics.event("expire", expired.length);
  for (const l of expired) log.info(`expired while stopped: ${l.client} ${l.ip}`);
  await syncMap().catch((err) => log.error(`initial map build failed: ${(err as Error).message}`));

  // Every renewal is audited, so the log is kept to audit_retention.
  const pruneAudit = (): void => {
    try {
      const n = store.pruneAudit(Date.now() - config.auditRetention * 1000);
      if (n) log.info(`audit log: removed ${n} entries older than ${config.auditRetention / 86400} days`);
    } catch (err) {
      log.warn(`audit log pruning failed: ${(err as Error).message}`);
    }
  };
  pruneAudit();
  const pruner = setInterval(pruneAudit, 3_600_000);

  let dataVersion = store.dataVersion();
  const poll = setInterval(() => {
    const v = store.dataVersion();
    if (v === dataVersion) return;
    dataVersion = v;
    syncMap().catch(() => undefined);
    armExpiry();
  }, ADMIN_POLL_MS);

  const ctx = {
    store,
    leases,
    map,
    trustedProxies: config.trustedProxies,
    metricsAllow: config.metricsAllow,
    renewals: new RenewalLimiter(config.renewalsPerMinute),
    authThrottle: new AuthThrottle(),
    metrics,
    renderMetrics: () =>
      metrics.render({ ...store.counts(), degraded: degraded().length > 0, mapEntries: mapEntries() }),
    syncMap: async () => {
      const r = await syncMap();
      armExpiry();
      return r;
    },
    degraded,
  };
  const handler = createHandler(ctx);

  const listen = (): ReturnType<typeof Bun.serve> => {
    try {
      return Bun.serve({
        hostname: config.listen.host,
        port: config.listen.port,
        tls: { cert: cert.certPem, key: cert.keyPem },
        maxRequestBodySize: MAX_BODY * 4,
        fetch: handler,
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
    listener = listen();
  } catch (err) {
    clearInterval(poll);
    clearInterval(pruner);
    throw err;
  }
  armExpiry();
  publishStatus();
  log.info(`listening on ${config.listen.host}:${listener.port} (${config.publicUrl}), map ${map.dbPath}, pin ${pin}`);

  // SIGHUP: ttl, allow-list related limits, proxies, logging and TLS files
  // change in place; what would need new sockets, state or map says so.
  const reload = async (): Promise<void> => {
    let next: ServerConfig;
    let nextCert: ServerCertificate;
    try {
      next = loadServerConfig(configPath ?? config.path);
      nextCert = await certFor(next);
    } catch (err) {
      log.error(`reload failed, keeping the running configuration: ${(err as Error).message}`);
      return;
    }
    for (const [key, a, b] of [
      ["listen", JSON.stringify(config.listen), JSON.stringify(next.listen)],
      ["state_dir", config.stateDir, next.stateDir],
      ["map", config.map, next.map],
      ["map_type", config.mapType ?? "", next.mapType ?? ""],
      ["postmap", config.postmap ?? "", next.postmap ?? ""],
    ] as const) {
      if (a !== b) log.warn(`reload: ${key} changed; restart the server for it to take effect`);
    }
    config = { ...next, listen: config.listen, stateDir: config.stateDir, map: config.map, mapType: config.mapType, postmap: config.postmap };
    core.config = config;
    ctx.trustedProxies = config.trustedProxies;
    ctx.metricsAllow = config.metricsAllow;
    ctx.renewals = new RenewalLimiter(config.renewalsPerMinute);
    setLogFormat(config.logFormat);
    setLogLevel(config.logLevel);
    if (nextCert.certPem !== cert.certPem) {
      const nextPin = certificatePin(nextCert.certPem);
      cert = nextCert;
      // Bun cannot swap certificates on a live socket: listen anew.
      await listener?.stop();
      listener = listen();
      if (nextPin !== pin) {
        log.warn(`reload: certificate changed, pin is now ${nextPin}; clients enrolled with --pin must re-enroll`);
        pin = nextPin;
        pinChangedAt = new Date().toISOString();
      } else log.info("reload: certificate renewed, pin unchanged");
    }
    reloadedAt = new Date().toISOString();
    publishStatus();
    armExpiry();
    log.info("reloaded configuration");
  };

  return {
    port: listener.port!,
    get pin() {
      return pin;
    },
    core,
    reload,
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(poll);
      clearInterval(pruner);
      clearTimeout(expiryTimer);
      clearTimeout(retryTimer);
      await listener?.stop();
      // Let an in-flight rebuild finish; starting a new one on the way out is not wanted.
      await map.settled();
      store.close();
      lock.release();
    },
  };
}
