import { enroll, leaseStatus, readToken, releaseLease, renewLease, type LeaseStatus } from "../client/client.ts";
import { parseDuration } from "../lib/duration.ts";
import { ExitCode, formatError, RelayError, usageError } from "../lib/errors.ts";
import { log } from "../lib/logging.ts";
import { command, common, ifNoSubcommand, printResult } from "./shared.ts";

/**
 * `relayctl client --watch`: renew every interval until SIGTERM or SIGINT,
 * for hosts without cron. Failures that may heal (network, server) are
 * logged and retried next round; a refusal or a bad config ends the loop.
 */
export async function runClientWatch(opts: { config?: string; ip?: string; verbose?: boolean; interval?: string; signal?: AbortSignal }): Promise<void> {
  const interval = parseDuration(opts.interval ?? "4m", "interval", "--interval");
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  opts.signal?.addEventListener("abort", onSignal);
  try {
    while (!stop.signal.aborted) {
      try {
        await runClient({ config: opts.config, ip: opts.ip, verbose: opts.verbose });
      } catch (err) {
        if (err instanceof RelayError && err.exitCode !== ExitCode.FAILED) throw err;
        log.error(formatError(err));
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, interval * 1000);
        stop.signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
      });
    }
  } finally {
    process.off("SIGTERM", onSignal);
    process.off("SIGINT", onSignal);
  }
}

/** `relayctl client`: renew (default) or release; silent on success unless verbose. */
export async function runClient(opts: { config?: string; release?: boolean; ip?: string; verbose?: boolean }): Promise<void> {
  if (opts.release) {
    const r = await releaseLease({ configPath: opts.config });
    if (opts.verbose) console.log(r.released.length ? `released ${r.released.join(" ")}` : "no lease to release");
    return;
  }
  const r = await renewLease({ configPath: opts.config, ip: opts.ip });
  if (opts.verbose) console.log(`${r.event ?? "renewed"}: ${r.ip} for ${r.client}, expires ${r.expires_at} (ttl ${r.ttl}s)`);
}

/** `relayctl client enroll`: verify server, pin and token, then write the config. */
export async function runClientEnroll(opts: { url: string; name: string; token?: string; tokenFile?: string; pin?: string; config?: string; force?: boolean; verbose?: boolean }): Promise<void> {
  const token = readToken({ token: opts.token, tokenFile: opts.tokenFile, name: opts.name });
  const r = await enroll({ url: opts.url, name: opts.name, token, pin: opts.pin, configPath: opts.config, force: opts.force });
  console.log(`enrolled ${r.status.client}: wrote ${r.path}; the server sees this host as ${r.status.ip}. Next: run \`relayctl client\` from cron every 4 minutes.`);
}

/** Renders the server's view of this client for people. */
export function renderStatus(s: LeaseStatus): string {
  const lines = [`client ${s.client}: server sees ${s.ip}, ttl ${s.ttl}s`];
  for (const l of s.leases) lines.push(`  lease ${l.ip}, renewed ${l.renewed_at}, expires ${l.expires_at}`);
  if (s.leases.length === 0) lines.push("  no lease: run `relayctl client`");
  return lines.join("\n");
}

/** `relayctl client status`: the lease as the server sees it. */
export async function runClientStatus(opts: { config?: string; json?: boolean }): Promise<LeaseStatus> {
  const s = await leaseStatus({ configPath: opts.config });
  printResult(opts.json, s, () => renderStatus(s));
  return s;
}

const enrollCommand = command({
  meta: { name: "enroll", description: "Check the server and write the client config (mode 0600)" },
  args: {
    ...common,
    url: { type: "positional", required: true, description: "server URL, https://HOST:PORT" },
    name: { type: "string", required: true, description: "client name given to `relayctl server add`" },
    token: { type: "string", description: "- (as `relayctl server add` prints it) reads the token from stdin, asking on a terminal, so it stays out of shell history and ps; or the token itself", valueHint: "TOKEN" },
    "token-file": { type: "string", description: "read the token from this file instead of --token", valueHint: "PATH" },
    pin: { type: "string", description: "sha256:HEX of the server certificate" },
    force: { type: "boolean", description: "replace an existing enrollment for another name or server" },
  },
  run: ({ args }) => runClientEnroll({ url: args.url, name: args.name, token: args.token, tokenFile: args["token-file"], pin: args.pin, config: args.config, force: args.force, verbose: args.verbose }),
});

const statusCommand = command({
  meta: { name: "status", description: "Show this client's lease as the server sees it" },
  args: { ...common, json: { type: "boolean", description: "print JSON" } },
  run: ({ args }) => runClientStatus({ config: args.config, json: args.json }).then(() => undefined),
});

export const clientCommand = command({
  meta: { name: "client", description: "Renew (or release) this host's lease; run from cron" },
  args: {
    ...common,
    release: { type: "boolean", description: "drop the lease instead of renewing it" },
    ip: { type: "string", description: "lease this address instead of the one the server sees (needs an allow list)", valueHint: "ADDR" },
    watch: { type: "boolean", description: "keep running and renew every --interval (for hosts without cron)" },
    interval: { type: "string", description: "with --watch: time between renewals (default 4m)", valueHint: "D" },
  },
  subCommands: { enroll: enrollCommand, status: statusCommand },
  run: ifNoSubcommand(({ args }) => {
    if (args.watch && args.release) throw usageError("--watch and --release do not go together");
    if (args.interval !== undefined && !args.watch) throw usageError("--interval only goes with --watch");
    return args.watch
      ? runClientWatch({ config: args.config, ip: args.ip, verbose: args.verbose, interval: args.interval })
      : runClient({ config: args.config, release: args.release, ip: args.ip, verbose: args.verbose });
  }),
});
