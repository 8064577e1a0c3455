import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { loadServerConfig, type MapType, type ServerConfig } from "../lib/config.ts";
import { ExitCode, RelayError } from "../lib/errors.ts";
import { log } from "../lib/logging.ts";
import { ensureServerCertificate, certificatePin } from "../lib/tls.ts";
import { createHandler, MAX_BODY } from "./http.ts";
import { LeaseBook, monotonicWallClock, systemClock, type Clock } from "./leases.ts";
import { StateLock } from "./lock.ts";
import { MapWriter } from "./map.ts";
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
}

/** Opens state and map for a config; the caller decides whether it holds the lock. */
export async function openCore(config: ServerConfig, clock: Clock = systemClock): Promise<Core> {
  const store = new StateStore(config.stateDir);
  const m = await resolveMap(config);
  mkdirSync(dirname(m.path), { recursive: true });
  const leases = new LeaseBook(store, () => config.ttl, clock);
  const map = new MapWriter({ ...m, addresses: () => leases.liveAddresses(), timeoutMs: config.postmapTimeout * 1000 });
  return { config, store, leases, map };
}

/** A running server: its URL, certificate pin, and how to stop it. */
export interface RunningServer {
  port: number;
  pin: string;
  core: Core;
  stop(): Promise<void>;
}

/** Starts the HTTPS server: lock, state, map rebuilt from state, timers. */
export async function startServer(opts: { configPath?: string; config?: ServerConfig; clock?: Clock } = {}): Promise<RunningServer> {
  const config = opts.config ?? loadServerConfig(opts.configPath);
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const lock = StateLock.acquire(config.stateDir);
  let core: Core | undefined;
  try {
    core = await openCore(config, opts.clock ?? monotonicWallClock());
    return await serve(core, lock);
  } catch (err) {
    core?.store.close();
    lock.release();
    throw err;
  }
}

async function serve(core: Core, lock: StateLock): Promise<RunningServer> {
  const { config, store, leases, map } = core;
  const cert = await ensureServerCertificate({
    stateDir: config.stateDir,
    host: new URL(config.publicUrl).hostname.replace(/^\[|\]$/g, ""),
    certPath: config.tlsCert,
    keyPath: config.tlsKey,
  });

  let retryDelay = 1000;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let expiryTimer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;

  // Every map change goes through here, so a failed postmap is retried
  // with backoff until it works, without anyone having to ask again.
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
  for (const l of expired) log.info(`expired while stopped: ${l.client} ${l.ip}`);
  await map.sync().catch((err) => log.error(`initial map build failed: ${(err as Error).message}`));

  let dataVersion = store.dataVersion();
  const poll = setInterval(() => {
    const v = store.dataVersion();
    if (v === dataVersion) return;
    dataVersion = v;
    syncMap().catch(() => undefined);
    armExpiry();
  }, ADMIN_POLL_MS);

  const handler = createHandler({
    store,
    leases,
    map,
    trustedProxies: config.trustedProxies,
    authThrottle: new AuthThrottle(),
    renewals: new RenewalLimiter(config.renewalsPerMinute),
    syncMap: async () => {
      const r = await syncMap();
      armExpiry();
      return r;
    },
    degraded: () => (map.lastError ? [`map: ${map.lastError}`] : []),
  });

  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({
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
    clearInterval(poll);
    throw new RelayError(`cannot listen on ${config.listen.host}:${config.listen.port}: ${(err as Error).message}`, {
      exitCode: ExitCode.USAGE,
      hint: "another process holds the port, or the address is not on this host; change listen in server.toml",
    });
  }
  armExpiry();
  const pin = certificatePin(cert.certPem);
  log.info(`listening on ${config.listen.host}:${server.port} (${config.publicUrl}), map ${map.dbPath}, pin ${pin}`);

  return {
    port: server.port!,
    pin,
    core,
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(poll);
      clearTimeout(expiryTimer);
      clearTimeout(retryTimer);
      await server.stop();
      await map.sync().catch(() => undefined);
      store.close();
      lock.release();
    },
  };
}
