import type { Server } from "bun";
import { cidrContains, parseCidr, parseIp, specialAddressKind, type Cidr, type Ip } from "../lib/ip.ts";
import { log } from "../lib/logging.ts";
import { authenticate, bearer } from "./tokens.ts";
import type { LeaseBook } from "./leases.ts";
import type { AuthThrottle, RenewalLimiter } from "./throttle.ts";
import type { Metrics } from "./metrics.ts";
import type { MapWriter } from "./map.ts";
import type { ClientRow, LeaseRow, StateStore } from "./state.ts";

/** Largest request body accepted; a lease request is a few dozen bytes. */
export const MAX_BODY = 4096;

/** What the API handler needs from the running server. */
export interface ApiContext {
  store: StateStore;
  leases: LeaseBook;
  map: MapWriter;
  /** Mutable: SIGHUP replaces these with the reloaded configuration's. */
  trustedProxies: Cidr[];
  metricsAllow: Cidr[];
  renewals: RenewalLimiter;
  authThrottle: AuthThrottle;
  metrics: Metrics;
  /** Prometheus text for GET /metrics. */
  renderMetrics(): string;
  /** Brings the map up to date; rejects when postmap fails (the caller answers 503). */
  syncMap(): Promise<unknown>;
  /** Reasons the server is degraded; empty when healthy. */
  degraded(): string[];
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
    /** False where auditing each refusal would let an attacker fill the log (one entry per burst instead). */
    readonly audit = true,
  ) {
    super(message);
  }
}

function isSqliteError(err: unknown): boolean {
  return (err as { name?: string })?.name === "SQLiteError" || /^SQLITE_/.test(String((err as { code?: string })?.code ?? ""));
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store", ...headers },
  });
}

function leaseView(l: LeaseRow): { ip: string; family: number; renewed_at: string; expires_at: string } {
  return { ip: l.ip, family: l.family, renewed_at: new Date(l.renewed_at).toISOString(), expires_at: new Date(l.expires_at).toISOString() };
}

/** Reads a JSON body without ever holding more than MAX_BODY bytes; undefined when empty. */
async function readJsonBody(req: Request): Promise<unknown> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > MAX_BODY) throw new HttpError(413, "body_too_large", `request body over ${MAX_BODY} bytes`);
  if (!req.body) return undefined;
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY) {
      await reader.cancel();
      throw new HttpError(413, "body_too_large", `request body over ${MAX_BODY} bytes`);
    }
    chunks.push(value);
  }
  if (size === 0) return undefined;
  const type = (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json") throw new HttpError(415, "unsupported_media_type", "send the body as application/json");
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new HttpError(400, "bad_json", "request body is not valid JSON");
  }
}

/** The client address: the connection's, or the forwarded one when the connection is a trusted proxy. */
export function observedAddress(peer: string | undefined, forwarded: string | null, trusted: Cidr[]): Ip {
  let ip = peer ? parseIp(peer) : null;
  if (!ip) throw new HttpError(400, "no_address", "cannot determine the client address");
  if (forwarded !== null && trusted.some((n) => cidrContains(n, ip!))) {
    // Walk right to left: the first hop not run by us is the client.
    const hops = forwarded.split(",").map((h) => h.trim());
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = parseIp(hops[i]!);
      if (!hop) throw new HttpError(400, "bad_forwarded", "X-Forwarded-For holds an invalid address");
      ip = hop;
      if (!trusted.some((n) => cidrContains(n, hop))) break;
    }
  }
  return ip;
}

/** Decides which address a lease request is for, enforcing the client's allow list. */
export function leaseAddress(client: ClientRow, observed: Ip, requested: unknown): Ip {
  let target = observed;
  if (requested !== undefined) {
    const ip = typeof requested === "string" ? parseIp(requested) : null;
    if (!ip) throw new HttpError(400, "invalid_ip", "ip must be a single IPv4 or IPv6 address");
    target = ip;
  }
  // Allow lists were validated when stored, so parseCidr cannot return null here.
  const nets = (JSON.parse(client.allow) as string[]).map((c) => parseCidr(c)!);
  if (nets.length === 0) {
    if (target.text !== observed.text) {
      throw new HttpError(403, "address_not_allowed", `client ${client.name} may only lease the address it connects from (${observed.text}); the admin can allow others with --allow`);
    }
  } else if (!nets.some((n) => cidrContains(n, target))) {
    throw new HttpError(403, "address_not_allowed", `${target.text} is outside the allow list of client ${client.name}`);
  }
  const kind = specialAddressKind(target);
  // Only an allow list entry narrower than "everything" can admit special addresses.
  if (kind && !nets.some((n) => n.prefix > 0 && cidrContains(n, target))) {
    throw new HttpError(403, "address_not_allowed", `${target.text} is a ${kind} address and cannot be leased`);
  }
  return target;
}

/** Builds the fetch handler for Bun.serve: /healthz and /v1/lease. */
export function createHandler(ctx: ApiContext): (req: Request, server: Server<unknown>) => Promise<Response> {
  async function lease(req: Request, server: Server<unknown>): Promise<Response> {
    // The raw peer, not X-Forwarded-For: throttling must key on what the attacker cannot forge.
    const peer = server.requestIP(req)?.address ?? "unknown";
    const source = parseIp(peer)?.text ?? peer;
    let client: ClientRow | null = null;
    try {
      const wait = ctx.authThrottle.retryAfter(source);
      if (wait) throw new HttpError(429, "too_many_failures", `too many failed authentications from ${source}; retry in ${wait}s`, { "retry-after": String(wait) }, false);
      client = authenticate(ctx.store, bearer(req.headers.get("authorization")));
      if (!client) {
        const blocked = ctx.authThrottle.fail(source);
        if (blocked) log.warn(`refused: too many bad tokens from ${source}, blocked for ${blocked}s`);
        throw new HttpError(401, "unauthorized", "token missing, unknown or revoked", { "www-authenticate": "Bearer" });
      }
      return await authorized(req, client, peer);
    } catch (err) {
      if (err instanceof HttpError && err.status < 500) ctx.metrics.refusal(err.code);
      if (err instanceof HttpError && err.status < 500 && err.audit) {
        try {
          ctx.store.audit({ ts: Date.now(), event: "refuse", client: client?.name ?? null, ip: null, source, detail: `${err.code}: ${err.message}` });
        } catch (auditErr) {
          // The refusal stands even when the disk is full; say why it went unrecorded.
          log.error(`cannot record refusal in the audit log: ${(auditErr as Error).message}`);
        }
      }
      throw err;
    }
  }

  async function authorized(req: Request, client: ClientRow, peer: string): Promise<Response> {
    const observed = observedAddress(peer, req.headers.get("x-forwarded-for"), ctx.trustedProxies);
    const source = observed.text;
    if (req.method === "GET") {
      return json(200, { client: client.name, ip: observed.text, ttl: ctx.leases.ttlOf(client), leases: ctx.store.leasesOf(client.name).map(leaseView) });
    }
    if (req.method === "DELETE") {
      const gone = ctx.leases.release(client.name, source);
      ctx.metrics.event("release", gone.length);
      if (gone.length) {
        log.info(`released: ${client.name} ${gone.map((l) => l.ip).join(" ")}`);
        await syncOr503();
      }
      return json(200, { client: client.name, released: gone.map((l) => l.ip) });
    }
    const limited = ctx.renewals.take(client.name);
    if (limited.wait) {
      if (limited.first) log.warn(`refused: client ${client.name} renews too often`);
      throw new HttpError(429, "rate_limited", `client ${client.name} renews too often; retry in ${limited.wait}s`, { "retry-after": String(limited.wait) }, limited.first);
    }
    const body = await readJsonBody(req);
    if (body !== undefined && (typeof body !== "object" || body === null || Array.isArray(body))) {
      throw new HttpError(400, "bad_request", 'body must be a JSON object like {"ip": "198.51.100.7"}');
    }
    const requested = (body as Record<string, unknown> | undefined)?.ip;
    const ip = leaseAddress(client, observed, requested);
    const r = ctx.leases.renew(client, ip, source);
    ctx.metrics.event(r.event);
    if (r.event !== "renew") log.info(`${r.event}: ${client.name} ${ip.text}${r.replaced ? ` (was ${r.replaced})` : ""}`);
    // A plain renewal leaves the map alone unless an earlier rebuild failed.
    if (r.mapChanged || ctx.map.lastError) await syncOr503();
    return json(200, {
      client: client.name,
      ip: r.lease.ip,
      expires_at: new Date(r.lease.expires_at).toISOString(),
      ttl: ctx.leases.ttlOf(client),
      event: r.event,
    });
  }

  async function syncOr503(): Promise<void> {
    try {
      await ctx.syncMap();
    } catch (err) {
      throw new HttpError(503, "map_update_failed", `lease recorded but the Postfix map could not be updated: ${(err as Error).message}`, { "retry-after": "5" });
    }
  }

  return async (req, server) => {
    const path = new URL(req.url).pathname;
    try {
      if (path === "/healthz") {
        if (req.method !== "GET" && req.method !== "HEAD") throw new HttpError(405, "method_not_allowed", "use GET", { allow: "GET, HEAD" });
        const reasons = ctx.degraded();
        return reasons.length ? json(503, { status: "degraded", reasons }) : json(200, { status: "ok" });
      }
      if (path === "/metrics") {
        const peer = parseIp(server.requestIP(req)?.address ?? "");
        // Anyone else gets the same 404 as for a path that does not exist.
        const allowed = peer && (specialAddressKind(peer) === "loopback" || ctx.metricsAllow.some((n) => cidrContains(n, peer)));
        if (!allowed) throw new HttpError(404, "not_found", `no such endpoint: ${path}`);
        if (req.method !== "GET") throw new HttpError(405, "method_not_allowed", "use GET", { allow: "GET" });
        return new Response(ctx.renderMetrics(), { headers: { "content-type": "text/plain; version=0.0.4", "cache-control": "no-store" } });
      }
      if (path === "/v1/lease") {
        if (!["GET", "POST", "DELETE"].includes(req.method)) throw new HttpError(405, "method_not_allowed", "use GET, POST or DELETE", { allow: "GET, POST, DELETE" });
        return await lease(req, server);
      }
      throw new HttpError(404, "not_found", `no such endpoint: ${path}`);
    } catch (err) {
      if (err instanceof HttpError) return json(err.status, { error: err.code, message: err.message }, err.headers);
      if (isSqliteError(err)) {
        log.error(`state database error: ${(err as Error).message}`);
        return json(503, { error: "state_unavailable", message: `the state database cannot be written (${(err as Error).message}); nothing was changed` }, { "retry-after": "30" });
      }
      log.error(`request ${req.method} ${path} failed: ${(err as Error).stack ?? err}`);
      return json(500, { error: "internal", message: "internal server error; see the server log" });
    }
  };
}
