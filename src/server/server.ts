import { mkdirSync } from "node:fs";
import { loadServerConfig, type ServerConfig } from "../lib/config.ts";
import { assemble, type Parts } from "./assemble.ts";
import type { Core } from "./core.ts";
import { StateLock } from "./lock.ts";
import type { Lookup } from "./lookups/index.ts";
import { refuseHeldPort } from "./runtime/listener.ts";

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

/**
 * Starts the HTTPS server: the lock on state_dir, then the assembled parts.
 * The composition root: only `relayctl server` (src/commands/server.ts) imports it.
 */
export async function startServer(opts: { configPath?: string; config?: ServerConfig } & Pick<Parts, "clock" | "timers"> = {}): Promise<RunningServer> {
  const config = opts.config ?? loadServerConfig(opts.configPath);
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const lock = StateLock.acquire(config.stateDir);
  let stopParts: (() => Promise<void>) | undefined;
  try {
    // Before state or the lookup is touched: a second server on a held port changes nothing.
    refuseHeldPort(config.listen.host, config.listen.port);
    const server = await assemble(config, { clock: opts.clock, timers: opts.timers });
    stopParts = () => server.stop();
    await server.start();
    let stopped = false;
    return {
      port: server.listener!.port!,
      get pin() {
        return server.listener!.pin;
      },
      core: server.core,
      lookup: server.lookup,
      reload: () => server.reload(opts.configPath),
      async stop() {
        if (stopped) return;
        stopped = true;
        await server.stop();
        lock.release();
      },
    };
  } catch (err) {
    await stopParts?.();
    lock.release();
    throw err;
  }
}
