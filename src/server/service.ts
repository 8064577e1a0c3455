import type { ServerConfig } from "../lib/config.ts";
import { cidrContains, cidrWithin, leaseText, maskText, parseCidr, parseIp, sourceKey, specialRangesTouching, type Cidr, type Ip } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";
import type { Clock } from "../lib/clock.ts";
import type { LeaseBook, RenewEvent, RenewRequest } from "./leases.ts";
import type { Lookup } from "./lookups/index.ts";
import type { Metrics } from "./metrics.ts";
import type { RefusalLog } from "./refusals.ts";
import type { ClientRow, LeaseRow } from "./state.ts";
import { StoreUnavailable, type Store } from "./stores/index.ts";
import { authenticateIn, type Credential } from "./tokens.ts";
import type { AuthThrottle, RenewalLimiter } from "./throttle.ts";

/**
 * Why the service said no, in words any front door can translate: the JSON
 * API into a status and `{error, message}`, dyndns2 into its answer words.
 */
export type LeaseErrorCode =
  | "unauthorized"
  | "too_many_failures"
  | "rate_limited"
  | "no_address"
  | "bad_forwarded"
  | "invalid_ip"
  | "address_not_allowed"
  | "lookup_cannot_hold"
  | "map_update_failed"
  | "state_unavailable";

/** A refusal or failure of the lease service. */
export class LeaseError extends Error {
  constructor(
    readonly code: LeaseErrorCode,
    message: string,
    readonly retryAfter?: number,
    /** False where auditing each refusal would let an attacker fill the log. */
    readonly audit = true,
  ) {
    super(message);
  }

  /** True for refusals (the caller's fault), false for server trouble. */
  get refusal(): boolean {
    return this.code !== "map_update_failed" && this.code !== "state_unavailable";
  }
}

/** The client address: the connection's, or the forwarded one when the connection is a trusted proxy. */
export function observedAddress(peer: string | undefined, forwarded: string | null, trusted: Cidr[]): Ip {
  let ip = peer ? parseIp(peer) : null;
  if (!ip) throw new LeaseError("no_address", "cannot determine the client address");
  if (forwarded !== null && trusted.some((n) => cidrContains(n, ip!))) {
    // Walk right to left: the first hop not run by us is the client.
    const hops = forwarded.split(",").map((h) => h.trim());
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = parseIp(hops[i]!);
      if (!hop) throw new LeaseError("bad_forwarded", "X-Forwarded-For holds an invalid address");
      ip = hop;
      if (!trusted.some((n) => cidrContains(n, hop))) break;
    }
  }
  return ip;
}

/**
 * Decides which network a lease request is for: the observed address or the
 * requested one, widened to the client's IPv6 prefix, checked against the
 * allow list (which must hold all of it) and the special ranges.
 */
export function leaseNetwork(client: ClientRow, observed: Ip, requested: unknown, ipv6Prefix: number): Cidr {
  let target = observed;
  if (requested !== undefined) {
    const ip = typeof requested === "string" ? parseIp(requested) : null;
    if (!ip) throw new LeaseError("invalid_ip", "ip must be a single IPv4 or IPv6 address");
    target = ip;
  }
  // A list that cannot be read admits nothing: read as empty it would admit any address the client connects from.
  if (client.allow.broken) throw new LeaseError("address_not_allowed", `the allow list of client ${client.name} cannot be read (${client.allow.broken}); the admin can set it again with relayctl server edit`);
  const nets = client.allow.nets;
  if (nets.length === 0) {
    if (target.text !== observed.text) {
      throw new LeaseError("address_not_allowed", `client ${client.name} may only lease the address it connects from (${observed.text}); the admin can allow others with --allow`);
    }
  }
  const net = parseCidr(maskText(target, target.family === 6 ? ipv6Prefix : 32)!)!;
  // The whole network must lie inside one allow entry, not just the address.
  if (nets.length > 0 && !nets.some((n) => cidrWithin(net, n))) {
    throw new LeaseError("address_not_allowed", `${leaseText(net)} is outside the allow list of client ${client.name}`);
  }
  // Only an allow entry that lies inside the special range itself admits it
  // (--allow 127.0.0.1/32 for a test host); 0.0.0.0/0 or two /1s never do.
  // The whole leased network counts: a /64 around ::2 holds loopback ::1.
  for (const special of specialRangesTouching(net)) {
    if (!nets.some((n) => cidrWithin(n, special.net) && cidrWithin(net, n))) {
      throw new LeaseError("address_not_allowed", `${leaseText(net)} ${net.prefix === special.net.prefix || cidrWithin(net, special.net) ? "is" : "holds"} a ${special.kind} address and cannot be leased`);
    }
  }
  return net;
}

/**
 * Runs a store call, turning "the database cannot be reached" into the
 * service's own 503: nothing was changed, the client retries.
 */
async function stored<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof StoreUnavailable) throw new LeaseError("state_unavailable", `the shared lease database cannot be reached (${err.message}); nothing was changed, retry later`, 30, false);
    throw err;
  }
}

/** What a renewal answered. */
export interface RenewAnswer {
  client: string;
  event: RenewEvent;
  lease: LeaseRow;
  replaced?: string;
  ttl: number;
}

/** What the service needs; the running server and the unit tests build it alike. */
export interface ServiceDeps {
  store: Store;
  leases: LeaseBook;
  lookup: Lookup;
  clock: Clock;
  metrics: Metrics;
  refusals: RefusalLog;
  authThrottle: AuthThrottle;
  /** Read on every request: SIGHUP swaps the configuration and the renewal limiter. */
  config(): ServerConfig;
  renewals(): RenewalLimiter;
  /** Publishes the live set to the lookup, retrying in the background when it fails. */
  publish(): Promise<void>;
}

/**
 * The lease service: the one place the use-case lives. Every front door
 * (the JSON API, dyndns2) turns its request into these calls: believe an
 * address, authenticate a credential, renew or release, and the lookup is
 * published before any answer says yes.
 */
export class LeaseService {
  constructor(private readonly d: ServiceDeps) {}

  /** True when the peer is a trusted proxy, whose X-Forwarded-For is believed. */
  trusts(peer: Ip): boolean {
    return this.d.config().trustedProxies.some((n) => cidrContains(n, peer));
  }

  /** The address the request is believed to come from, after the trusted-proxy rules. */
  believe(peer: string | undefined, forwarded: string | null): Ip {
    return observedAddress(peer, forwarded, this.d.config().trustedProxies);
  }

  /**
   * The client a credential belongs to. Failures are counted per source
   * (IPv6 per /64) and block that source for a while, but a valid token
   * always authenticates, even from a blocked source: strangers sharing a
   * proxy or a /64 can never lock a client out.
   */
  async authenticate(credential: Credential | null, source: Ip): Promise<ClientRow> {
    const key = sourceKey(source);
    const client = await stored(() => authenticateIn(this.d.store, credential));
    if (client) return client;
    const wait = this.d.authThrottle.retryAfter(key);
    if (wait) throw new LeaseError("too_many_failures", `too many failed authentications from ${key}; retry in ${wait}s`, wait, false);
    const blocked = this.d.authThrottle.fail(key);
    if (blocked) log.warn(`refused: too many bad tokens from ${key}, blocked for ${blocked}s`);
    throw new LeaseError("unauthorized", "token missing, unknown or revoked");
  }

  /** The ttl in seconds that applies to a client. */
  ttlOf(client: ClientRow): number {
    return this.d.leases.ttlOf(client);
  }

  /** The IPv6 prefix length a client's leases take. */
  ipv6PrefixOf(client: ClientRow): number {
    return client.ipv6_prefix ?? this.d.config().ipv6Prefix;
  }

  /** Grants, renews or replaces a lease for the observed or requested address; resolves once Postfix relays for it. */
  async renew(client: ClientRow, observed: Ip, requested?: unknown): Promise<RenewAnswer> {
    return (await this.renewEach(client, observed, [requested]))[0]!;
  }

  /**
   * Renews one lease per requested address (dyndns2 `myip=v4,v6`; undefined
   * is the observed address), all or nothing: one rate-limit token for the
   * request, every address checked before any is leased, all of them
   * committed in one transaction, where each is checked again against the
   * client's row as it is then (a server edit may have committed since).
   */
  async renewEach(client: ClientRow, observed: Ip, requested: unknown[]): Promise<RenewAnswer[]> {
    this.take(client);
    const requests: RenewRequest[] = requested.map((ip) => ({
      net: this.admitted(client, observed, ip),
      recheck: (now) => {
        if (!now) throw new LeaseError("unauthorized", "token missing, unknown or revoked");
        return this.admitted(now, observed, ip);
      },
    }));
    const results = await stored(() => this.d.leases.renewAll(client, requests, observed.text));
    for (const r of results) {
      this.d.metrics.event(r.event);
      if (r.event !== "renew") log.info(`${r.event}: ${client.name} ${r.lease.ip}${r.replaced ? ` (was ${r.replaced})` : ""}`);
    }
    // A plain renewal leaves the lookup alone unless an earlier publication failed.
    if (results.some((r) => r.lookupChanged) || this.d.lookup.problems().length) await this.publish();
    // The ttl the lease was given, which an edit committed meanwhile may have changed.
    return results.map((r) => ({ client: client.name, event: r.event, lease: r.lease, replaced: r.replaced, ttl: Math.round((r.lease.expires_at - r.lease.renewed_at) / 1000) }));
  }

  /**
   * Drops the client's leases (one family, or all); resolves once Postfix no
   * longer relays for them. It takes a rate-limit token like a renewal, so
   * releases between renewals cannot double the audit rows a token holder
   * writes (each needs a grant first, and the grants are what run out), but
   * is never refused for it: giving up relaying must always work.
   */
  async release(client: ClientRow, source: Ip, family?: 4 | 6): Promise<LeaseRow[]> {
    this.d.renewals().take(client.name);
    const gone = await stored(() => this.d.leases.release(client.name, source.text, family));
    this.d.metrics.event("release", gone.length);
    if (gone.length) log.info(`released: ${client.name} ${gone.map((l) => l.ip).join(" ")}`);
    // The client's retry of a release whose publication failed finds nothing
    // to drop, yet the MTA may still relay for it: that retry must not be told it worked.
    if (gone.length || this.d.lookup.problems().length) await this.publish();
    return gone;
  }

  /** The client's current leases, read-only. */
  leasesOf(client: ClientRow): Promise<LeaseRow[]> {
    return stored(() => this.d.store.leasesOfClients([client.name]));
  }

  /** Records a refusal (a LeaseError, or a door's own): metrics always, the audit log aggregated per source and burst. */
  refused(err: { code: string; message: string; audit?: boolean }, client: string | null, source: Ip | null): void {
    this.d.metrics.refusal(err.code);
    if (err.audit !== false) this.d.refusals.record({ code: err.code, message: err.message, client, source });
  }

  /** Takes one of the client's renewal tokens, or refuses the request when it renews too often. */
  private take(client: ClientRow): void {
    const limited = this.d.renewals().take(client.name);
    if (!limited.wait) return;
    if (limited.first) log.warn(`refused: client ${client.name} renews too often`);
    throw new LeaseError("rate_limited", `client ${client.name} renews too often; retry in ${limited.wait}s`, limited.wait, limited.first);
  }

  /** The network a renewal would lease, once the client's rules and the lookup admit it. */
  private admitted(client: ClientRow, observed: Ip, requested: unknown): Cidr {
    const net = leaseNetwork(client, observed, requested, this.ipv6PrefixOf(client));
    const why = this.d.lookup.type.refuses(net);
    if (why) throw new LeaseError("lookup_cannot_hold", why);
    return net;
  }

  private async publish(): Promise<void> {
    try {
      await this.d.publish();
    } catch (err) {
      throw new LeaseError("map_update_failed", `lease recorded but Postfix's lookup could not be updated: ${(err as Error).message}`, 5);
    }
  }
}
