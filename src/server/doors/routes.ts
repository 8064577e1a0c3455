import type { Server } from "bun";
import { cidrContains, parseIp, specialAddressKind, type Cidr, type Ip } from "../../lib/ip.ts";
import type { LeaseService } from "../service.ts";
import { errorResponse, HttpError, json, leaseRoute } from "./api.ts";
import { dyndnsRoute } from "./dyndns2.ts";

/** A route: one path, every method; it answers 405 itself for the ones it does not take. */
export type Route = (req: Request, server: Server<unknown>) => Response | Promise<Response>;

/** What the routes need besides the lease service. */
export interface RouteContext {
  service: LeaseService;
  /** Reasons the server is degraded; empty when healthy. */
  degraded(): string[];
  /** Prometheus text for GET /metrics. */
  renderMetrics(): string | Promise<string>;
  /** Networks besides loopback that may read /metrics (SIGHUP may change them). */
  metricsAllow(): Cidr[];
}

/** A front door: a path and the route that turns its requests into lease service calls. */
export interface Door {
  path: string;
  route(service: LeaseService): Route;
}

/** Every front door, one row each: a new door is a row here and a file in doors/. */
export const DOORS: readonly Door[] = [
  { path: "/v1/lease", route: leaseRoute },
  { path: "/nic/update", route: dyndnsRoute },
];

/** Every path the HTTPS listener serves (health, metrics and the DOORS), for Bun.serve's `routes`. */
export function routes(ctx: RouteContext): Record<string, Route> {
  return {
    "/healthz": (req) => {
      if (req.method !== "GET" && req.method !== "HEAD") return errorResponse(new HttpError(405, "method_not_allowed", "use GET", { allow: "GET, HEAD" }));
      const reasons = ctx.degraded();
      return reasons.length ? json(503, { status: "degraded", reasons }) : json(200, { status: "ok" });
    },
    "/metrics": async (req, server) => {
      const reader = metricsReader(ctx.service, server.requestIP(req)?.address, req.headers);
      // Anyone else gets the same 404 as for a path that does not exist.
      const allowed = reader && (specialAddressKind(reader) === "loopback" || ctx.metricsAllow().some((n) => cidrContains(n, reader)));
      if (!allowed) return notFound(req);
      if (req.method !== "GET") return errorResponse(new HttpError(405, "method_not_allowed", "use GET", { allow: "GET" }));
      return new Response(await ctx.renderMetrics(), { headers: { "content-type": "text/plain; version=0.0.4", "cache-control": "no-store" } });
    },
    ...Object.fromEntries(DOORS.map((d) => [d.path, d.route(ctx.service)])),
  };
}

/** Headers a reverse proxy adds to say whom it forwards for. */
const FORWARDING = ["x-forwarded-for", "forwarded", "x-real-ip"];

/**
 * Who is asking for /metrics, or null when that cannot be told. Behind a
 * reverse proxy on this host every request comes from loopback, so a
 * forwarded request is judged by the client the trusted proxy names in
 * X-Forwarded-For; one forwarded by a peer not in trusted_proxies, or
 * without X-Forwarded-For, cannot be judged and is refused.
 */
export function metricsReader(service: LeaseService, peer: string | undefined, headers: Headers): Ip | null {
  const ip = parseIp(peer ?? "");
  if (!ip) return null;
  if (!FORWARDING.some((h) => headers.has(h))) return ip;
  const forwarded = headers.get("x-forwarded-for");
  if (forwarded === null || !service.trusts(ip)) return null;
  try {
    return service.believe(peer, forwarded);
  } catch {
    return null;
  }
}

/** The answer for any path no route serves. */
export function notFound(req: Request): Response {
  return errorResponse(new HttpError(404, "not_found", `no such endpoint: ${new URL(req.url).pathname}`));
}

/** One fetch function over the routes, as Bun.serve dispatches them (for tests and the fallback). */
export function dispatcher(table: Record<string, Route>): (req: Request, server: Server<unknown>) => Promise<Response> {
  return async (req, server) => {
    const route = table[new URL(req.url).pathname];
    try {
      return await (route ? route(req, server) : notFound(req));
    } catch (err) {
      return errorResponse(err);
    }
  };
}
