import type { Server } from "bun";
import { cidrContains, parseIp, specialAddressKind, type Cidr } from "../../lib/ip.ts";
import type { LeaseService } from "../service.ts";
import { errorResponse, HttpError, json, leaseRoute } from "./api.ts";

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
  /** Routes of other front doors (dyndns2), by path. */
  extra?: Record<string, Route>;
}

/** Every path the HTTPS listener serves, for Bun.serve's `routes`. */
export function routes(ctx: RouteContext): Record<string, Route> {
  return {
    "/healthz": (req) => {
      if (req.method !== "GET" && req.method !== "HEAD") return errorResponse(new HttpError(405, "method_not_allowed", "use GET", { allow: "GET, HEAD" }));
      const reasons = ctx.degraded();
      return reasons.length ? json(503, { status: "degraded", reasons }) : json(200, { status: "ok" });
    },
    "/metrics": async (req, server) => {
      const peer = parseIp(server.requestIP(req)?.address ?? "");
      // Anyone else gets the same 404 as for a path that does not exist.
      const allowed = peer && (specialAddressKind(peer) === "loopback" || ctx.metricsAllow().some((n) => cidrContains(n, peer)));
      if (!allowed) return notFound(req);
      if (req.method !== "GET") return errorResponse(new HttpError(405, "method_not_allowed", "use GET", { allow: "GET" }));
      return new Response(await ctx.renderMetrics(), { headers: { "content-type": "text/plain; version=0.0.4", "cache-control": "no-store" } });
    },
    "/v1/lease": leaseRoute(ctx.service),
    ...ctx.extra,
  };
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
