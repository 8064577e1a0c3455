import { existsSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { AlertTargets } from "../lib/config.ts";
import { log } from "../lib/logging.ts";
import type { OverdueEvent, OverdueState } from "./overdue.ts";
import { findPostfixTool, runTool } from "./postfix.ts";

/** One overdue event as every alert channel gets it (the JSON on stdin, in the webhook body and at the end of the mail). */
export interface AlertEvent {
  /** late, silent, back; "summary" stands for more than STORM_OVER changes found at once. */
  event: OverdueEvent | "summary";
  /** The client, or null in a summary. */
  client: string | null;
  /** The client's state after the change (null in a summary). */
  state: OverdueState | null;
  last_seen: string | null;
  last_address: string | null;
  /** The interval the client was judged by, in seconds, or null when unknown. */
  expect_seconds: number | null;
  at: string;
  /** The relay host that noticed (one of several sharing a database sends each event). */
  host: string;
  /** Summary only: how many clients moved, by event, and which (the first SUMMARY_NAMES). */
  counts?: Partial<Record<OverdueEvent, number>>;
  clients?: { client: string; event: OverdueEvent }[];
}

/** More changes than this in one check become one summary: a database outage must not page once per client. */
export const STORM_OVER = 10;
/** Clients a summary names; the counts cover the rest. */
const SUMMARY_NAMES = 50;
/** Events waiting for delivery; beyond this the oldest are dropped (and logged), so a dead channel cannot grow memory. */
const MAX_QUEUED = 100;
/** How long alert_command and sendmail may run. */
const COMMAND_TIMEOUT_MS = 10_000;
/** One webhook attempt's timeout, the attempts, and the pause before the second (doubling). */
const WEBHOOK_TIMEOUT_MS = 5_000;
const WEBHOOK_TRIES = 3;
const WEBHOOK_BACKOFF_MS = 1_000;

/** The events for one check's transitions: each as it is, or one summary when there are more than STORM_OVER. */
export function batchEvents(moved: AlertEvent[], at: string, host: string): AlertEvent[] {
  if (moved.length <= STORM_OVER) return moved;
  const counts: Partial<Record<OverdueEvent, number>> = {};
  for (const m of moved) counts[m.event as OverdueEvent] = (counts[m.event as OverdueEvent] ?? 0) + 1;
  const clients = moved.slice(0, SUMMARY_NAMES).map((m) => ({ client: m.client!, event: m.event as OverdueEvent }));
  return [{ event: "summary", client: null, state: null, last_seen: null, last_address: null, expect_seconds: null, at, host, counts, clients }];
}

/** One line for people: the log, the mail's subject. */
export function describe(e: AlertEvent): string {
  if (e.event === "summary") {
    const parts = Object.entries(e.counts ?? {}).map(([ev, n]) => `${n} ${ev}`);
    return `${parts.join(", ")} (one summary instead of one alert each)`;
  }
  const seen = e.last_seen ? `last seen ${e.last_seen}${e.last_address ? ` from ${e.last_address}` : ""}` : "never seen";
  const what = { late: "is late (missed two renewal intervals)", silent: "is silent (its lease expired)", back: "is back" }[e.event];
  return `client ${e.client} ${what}, ${seen}`;
}

/** The environment alert_command runs with: a fixed PATH and the event, nothing inherited from the server. */
export function commandEnv(e: AlertEvent): Record<string, string> {
  return {
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    RELAYCTL_EVENT: e.event,
    RELAYCTL_CLIENT: e.client ?? "",
    RELAYCTL_STATE: e.state ?? "",
    RELAYCTL_LAST_SEEN: e.last_seen ?? "",
    RELAYCTL_LAST_ADDRESS: e.last_address ?? "",
    RELAYCTL_EXPECT: e.expect_seconds === null ? "" : String(e.expect_seconds),
    RELAYCTL_HOST: e.host,
    RELAYCTL_AT: e.at,
    RELAYCTL_COUNT: e.event === "summary" ? String(Object.values(e.counts ?? {}).reduce((a, b) => a + b, 0)) : "1",
  };
}

/** The plain message sendmail gets: headers from fixed text and validated names only, then the line and the JSON. */
export function mailMessage(e: AlertEvent, to: string[]): string {
  const body = [describe(e), "", ...(e.clients ?? []).map((c) => `  ${c.client}: ${c.event}`), "", `noticed by ${e.host} at ${e.at}`, "", JSON.stringify(e, null, 2)];
  return [
    `To: ${to.join(", ")}`,
    `Subject: relayctl: ${describe(e)}`,
    "Auto-Submitted: auto-generated",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    ...body,
    "",
  ].join("\n");
}

/** Postfix's sendmail: `postconf -h sendmail_path`, else /usr/sbin/sendmail. */
export async function findSendmail(): Promise<string> {
  const postconf = findPostfixTool("postconf");
  if (postconf) {
    const r = await runTool([postconf, "-h", "sendmail_path"], COMMAND_TIMEOUT_MS).catch(() => null);
    const path = r?.code === 0 ? r.stdout.trim() : "";
    if (path.startsWith("/") && existsSync(path)) return path;
  }
  return "/usr/sbin/sendmail";
}

/** What delivery runs on; tests swap them. */
export interface AlertDeps {
  run: typeof runTool;
  fetch: (url: string, init: RequestInit) => Promise<Response>;
  sleep: (ms: number) => Promise<unknown>;
  sendmail: () => Promise<string>;
  host: string;
}

const realDeps: AlertDeps = { run: runTool, fetch: (url, init) => fetch(url, init), sleep: (ms) => Bun.sleep(ms), sendmail: findSendmail, host: hostname() };

/**
 * Delivers overdue events to alert_command, alert_webhook and alert_mail,
 * one event at a time in the background: send() never waits, so neither a
 * renewal nor the overdue check is held up by a slow channel.
 */
export class Alerter {
  private queue: AlertEvent[] = [];
  private draining: Promise<void> | null = null;
  readonly deps: AlertDeps;

  constructor(
    private readonly targets: () => AlertTargets,
    deps: Partial<AlertDeps> = {},
  ) {
    this.deps = { ...realDeps, ...deps };
  }

  /** Queues events for every configured channel and returns at once. */
  send(events: AlertEvent[]): void {
    const t = this.targets();
    if (!t.command.length && !t.webhook && !t.mail.length) return;
    this.queue.push(...events);
    if (this.queue.length > MAX_QUEUED) {
      const dropped = this.queue.splice(0, this.queue.length - MAX_QUEUED);
      log.warn(`alerts: ${dropped.length} event(s) dropped, delivery is behind (the log has every change)`);
    }
    this.draining ??= this.drain().finally(() => (this.draining = null));
  }

  /** Resolves when everything queued so far has been tried (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.draining) await this.draining;
  }

  private async drain(): Promise<void> {
    for (let e = this.queue.shift(); e; e = this.queue.shift()) {
      const t = this.targets();
      await Promise.all([
        t.command.length ? this.command(t.command, e) : null,
        t.webhook ? this.webhook(t.webhook, t.webhookCa, e) : null,
        t.mail.length ? this.mail(t.mail, e) : null,
      ]);
    }
  }

  private async command(argv: string[], e: AlertEvent): Promise<void> {
    try {
      const r = await this.deps.run(argv, COMMAND_TIMEOUT_MS, { input: JSON.stringify(e) + "\n", env: commandEnv(e) });
      if (r.timedOut) log.warn(`alert_command ${argv[0]} was killed after ${COMMAND_TIMEOUT_MS / 1000}s (${e.event} ${e.client ?? ""})`);
      else if (r.code !== 0) log.warn(`alert_command ${argv[0]} exited ${r.code}: ${r.stderr.trim().split("\n")[0] ?? ""}`);
    } catch (err) {
      log.warn(`alert_command ${argv[0]} could not run: ${(err as Error).message}`);
    }
  }

  private async webhook(url: string, caFile: string | undefined, e: AlertEvent): Promise<void> {
    let why = "";
    for (let i = 0; i < WEBHOOK_TRIES; i++) {
      if (i) await this.deps.sleep(WEBHOOK_BACKOFF_MS * 2 ** (i - 1));
      try {
        const tls = caFile ? { tls: { ca: readFileSync(caFile, "utf8") } } : {};
        const r = await this.deps.fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json", "user-agent": "relayctl" },
          body: JSON.stringify(e),
          signal: AbortSignal.timeout(WEBHOOK_TIMEOUT_MS),
          redirect: "error",
          ...tls,
        } as RequestInit);
        await r.body?.cancel();
        if (r.ok) return;
        why = `HTTP ${r.status}`;
        // The receiver refused the event itself: sending it again changes nothing.
        if (r.status >= 400 && r.status < 500 && r.status !== 408 && r.status !== 429) break;
      } catch (err) {
        why = (err as Error).message;
      }
    }
    log.warn(`alert_webhook ${new URL(url).origin}: ${e.event} ${e.client ?? ""} not delivered: ${why}`);
  }

  private async mail(to: string[], e: AlertEvent): Promise<void> {
    try {
      const sendmail = await this.deps.sendmail();
      // -i: a line with a single dot is text; --: no recipient is read as an option.
      const r = await this.deps.run([sendmail, "-i", "--", ...to], COMMAND_TIMEOUT_MS, { input: mailMessage(e, to), env: { PATH: commandEnv(e).PATH!, ...mailConfigEnv() } });
      if (r.timedOut || r.code !== 0) log.warn(`alert_mail: ${sendmail} ${r.timedOut ? "timed out" : `exited ${r.code}: ${r.stderr.trim().split("\n")[0] ?? ""}`}`);
    } catch (err) {
      log.warn(`alert_mail: sendmail could not run: ${(err as Error).message}`);
    }
  }
}

/** MAIL_CONFIG passed on to sendmail when the server has one (a Postfix instance other than the default). */
function mailConfigEnv(): Record<string, string> {
  const dir = process.env.MAIL_CONFIG;
  return dir ? { MAIL_CONFIG: dir } : {};
}
