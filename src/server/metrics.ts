import type { ClientSeen } from "./runtime/watchdog.ts";

/** The value of relayctl_client_overdue per state. */
const OVERDUE_VALUE = { ok: 0, late: 1, silent: 2 } as const;

/** Upper bounds (seconds) of the map rebuild duration histogram. */
const REBUILD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Counters since start, rendered in Prometheus text format for GET /metrics. */
export class Metrics {
  readonly events = new Map<string, number>();
  readonly refusals = new Map<string, number>();
  postmapFailures = 0;
  private readonly buckets = REBUILD_BUCKETS.map(() => 0);
  private rebuildCount = 0;
  private rebuildSum = 0;

  /** Counts a lease event: grant, renew, replace, release, expire, revoke. */
  event(name: string, n = 1): void {
    this.events.set(name, (this.events.get(name) ?? 0) + n);
  }

  /** Counts a refused request by its error code (unauthorized, address_not_allowed, ...). */
  refusal(reason: string): void {
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
  }

  /** Records one map rebuild's duration in milliseconds. */
  rebuild(ms: number): void {
    const s = ms / 1000;
    this.rebuildCount++;
    this.rebuildSum += s;
    REBUILD_BUCKETS.forEach((b, i) => {
      if (s <= b) this.buckets[i]!++;
    });
  }

  /** Renders every metric; gauges come from the caller since they live in state. */
  render(gauges: { leases: number; clients: number; degraded: boolean; lookupEntries: number; state?: { stale: boolean; ageSeconds: number }; overdue?: { counts: Record<"late" | "silent", number>; perClient: ClientSeen[] | null } }): string {
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, lines: string[]): void => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
    };
    metric("relayctl_leases_active", "gauge", "Leases currently live.", [`relayctl_leases_active ${gauges.leases}`]);
    metric("relayctl_clients", "gauge", "Enrolled clients.", [`relayctl_clients ${gauges.clients}`]);
    metric("relayctl_lookup_entries", "gauge", "Networks Postfix relays for, as the lookup (map or policy) last published them.", [`relayctl_lookup_entries ${gauges.lookupEntries}`]);
    // The first name of relayctl_lookup_entries, kept for dashboards until the next release.
    metric("relayctl_map_entries", "gauge", "Deprecated alias of relayctl_lookup_entries.", [`relayctl_map_entries ${gauges.lookupEntries}`]);
    metric("relayctl_degraded", "gauge", "1 when the lookup or the state is degraded (see /healthz).", [`relayctl_degraded ${gauges.degraded ? 1 : 0}`]);
    // Only for the shared database: a SQLite host is never stale (runtime/freshness.ts).
    if (gauges.state) {
      metric("relayctl_state_stale", "gauge", "1 while this host's view of the shared database is older than stale_after and every lease is withheld from the MTA.", [`relayctl_state_stale ${gauges.state.stale ? 1 : 0}`]);
      metric("relayctl_state_age_seconds", "gauge", "Seconds since this host last read every lease from the shared database.", [`relayctl_state_age_seconds ${gauges.state.ageSeconds.toFixed(3)}`]);
    }
    const events = ["grant", "renew", "replace", "release", "expire", "revoke"];
    metric("relayctl_lease_events_total", "counter", "Lease events since start.", events.map((e) => `relayctl_lease_events_total{event="${e}"} ${this.events.get(e) ?? 0}`));
    metric("relayctl_refusals_total", "counter", "Refused requests since start, by reason.", [...this.refusals].sort().map(([r, n]) => `relayctl_refusals_total{reason="${r}"} ${n}`));
    metric("relayctl_postmap_failures_total", "counter", "Failed map rebuilds (postmap error, timeout or missing).", [`relayctl_postmap_failures_total ${this.postmapFailures}`]);
    metric("relayctl_map_rebuild_duration_seconds", "histogram", "Duration of successful map rebuilds.", [
      ...REBUILD_BUCKETS.map((b, i) => `relayctl_map_rebuild_duration_seconds_bucket{le="${b}"} ${this.buckets[i]}`),
      `relayctl_map_rebuild_duration_seconds_bucket{le="+Inf"} ${this.rebuildCount}`,
      `relayctl_map_rebuild_duration_seconds_sum ${this.rebuildSum.toFixed(6)}`,
      `relayctl_map_rebuild_duration_seconds_count ${this.rebuildCount}`,
    ]);
    const o = gauges.overdue;
    if (o) {
      metric("relayctl_clients_overdue", "gauge", "Clients late (missed two renewal intervals) or silent (lease expired) at the last overdue check.", [
        `relayctl_clients_overdue{state="late"} ${o.counts.late}`,
        `relayctl_clients_overdue{state="silent"} ${o.counts.silent}`,
      ]);
    }
    // One series per client and metric: client_metrics = false turns them off for very large sites.
    if (o?.perClient) {
      metric("relayctl_client_overdue", "gauge", "Per client: 0 ok, 1 late, 2 silent (client_metrics).", o.perClient.map((c) => `relayctl_client_overdue{client="${c.name}"} ${OVERDUE_VALUE[c.state]}`));
      const seen = o.perClient.filter((c) => c.last_seen !== null);
      metric("relayctl_client_last_renewal_timestamp_seconds", "gauge", "Per client: Unix time of its last renewal (client_metrics).", seen.map((c) => `relayctl_client_last_renewal_timestamp_seconds{client="${c.name}"} ${(c.last_seen! / 1000).toFixed(3)}`));
    }
    return out.join("\n") + "\n";
  }
}
