import type { Clock } from "../../lib/clock.ts";
import type { ServerConfig } from "../../lib/config.ts";
import { CLIENT_METRICS_AUTO_MAX } from "../../lib/schema.ts";
import { log } from "../../lib/logging.ts";
import { batchEvents, describe, type AlertEvent, type Alerter } from "../alerts.ts";
import { eventOf, expectedMs, judge, type OverdueState } from "../overdue.ts";
import { storeClock, type Store } from "../stores/index.ts";

/** State changes recorded per check; the rest stay candidates for the next one, so a huge backlog never holds one check for long. */
export const MAX_MOVES_PER_CHECK = 1_000;

/** One client as the last check saw it, for the per-client metrics. */
export interface ClientSeen {
  name: string;
  state: OverdueState;
  last_seen: number | null;
}

/**
 * The overdue check housekeeping runs every overdue_check: judges the
 * clients whose state may have changed, records each change with a
 * conditional UPDATE (of several relay hosts, the one whose UPDATE changed
 * the row alerts) and hands the events to the alerter. Renewals never come
 * here: a client coming back is noticed by the next check.
 */
export class Watchdog {
  /** Every client at the last check (client_metrics on), else null. */
  perClient: ClientSeen[] | null = null;
  /** Late and silent clients at the last check. */
  counts: Record<"late" | "silent", number> = { late: 0, silent: 0 };

  /** Whether the last check kept per-client series, to log when "auto" changes its mind. */
  private perClientWas: boolean | null = null;

  constructor(
    private readonly d: {
      store: Store;
      clock: Clock;
      alerter: Alerter;
      config(): ServerConfig;
      host: string;
      /** Enrolled clients as last counted (the follower's count: no query). */
      clients(): number;
    },
  ) {}

  /** Whether this check reads every client for the per-client series (client_metrics, "auto" by the client count). */
  private perClientWanted(): boolean {
    const setting = this.d.config().clientMetrics;
    const clients = this.d.clients();
    const want = setting === "auto" ? clients <= CLIENT_METRICS_AUTO_MAX : setting;
    if (setting === "auto" && this.perClientWas !== null && want !== this.perClientWas) {
      log.info(`client_metrics "auto": per-client series ${want ? "on" : "off"} at ${clients.toLocaleString("en-US")} clients (the limit is ${CLIENT_METRICS_AUTO_MAX.toLocaleString("en-US")})`);
    } else if (setting === "auto" && this.perClientWas === null && !want) {
      log.info(`client_metrics "auto": no per-client series for ${clients.toLocaleString("en-US")} clients (above ${CLIENT_METRICS_AUTO_MAX.toLocaleString("en-US")}, each check would read every client); set client_metrics = true to have them anyway`);
    }
    this.perClientWas = want;
    return want;
  }

  /** One check; returns the events sent (one per change, or one summary). */
  async check(): Promise<AlertEvent[]> {
    const { store } = this.d;
    // An unreachable database says nothing about the clients: judging them from
    // what was last read would declare everyone late at once.
    if (store.problems().length) return [];
    const now = storeClock(this.d.clock, store).now();
    const all = this.perClientWanted();
    let rows;
    try {
      rows = await store.watched(all, now);
    } catch (err) {
      log.warn(`overdue check skipped: ${(err as Error).message}`);
      return [];
    }
    const judged = rows.map((w) => ({ w, j: judge(w, now) }));
    this.perClient = all ? judged.map(({ w, j }) => ({ name: w.name, state: j.state, last_seen: j.last_seen })) : null;
    this.counts = { late: judged.filter((x) => x.j.state === "late").length, silent: judged.filter((x) => x.j.state === "silent").length };
    const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
    const moved: AlertEvent[] = [];
    for (const { w, j } of judged) {
      const event = eventOf(w.state, j.state);
      if (!event) continue;
      if (moved.length >= MAX_MOVES_PER_CHECK) break;
      let won: boolean;
      try {
        won = await store.tx(async (t) => {
          if (!(await t.moveOverdue(w.name, w.state, j.state, j.last_seen, j.last_ip))) return false;
          await t.audit({ ts: t.now, event, client: w.name, ip: j.last_ip, source: null, detail: j.last_seen === null ? null : `last seen ${iso(j.last_seen)}` });
          return true;
        });
      } catch (err) {
        log.warn(`overdue check stopped: ${(err as Error).message}`);
        break;
      }
      // Another host recorded this change first and alerts for it.
      if (!won) continue;
      const e = expectedMs(w);
      moved.push({ event, client: w.name, state: j.state, last_seen: iso(j.last_seen), last_address: j.last_ip, expect_seconds: e && Math.round(e.ms / 1000), at: iso(now)!, host: this.d.host });
    }
    for (const m of moved) {
      if (m.event === "back") log.info(`overdue: ${describe(m)}`);
      else log.warn(`overdue: ${describe(m)}`);
    }
    const events = batchEvents(moved, iso(now)!, this.d.host);
    this.d.alerter.send(events);
    return events;
  }
}
