import type { Server } from "bun";
import type { Ip } from "../../lib/ip.ts";
import { log } from "../../lib/logging.ts";
import { LeaseError, type LeaseErrorCode, type LeaseService } from "../service.ts";
import type { ClientRow, LeaseRow } from "../state.ts";
import { bearer } from "../tokens.ts";
import type { ErrorBody, LeaseAnswerBody, LeaseStatusBody, LeaseView, ReleaseBody, WireBody } from "../../lib/wire.ts";

/** Largest request body accepted; a lease request is a few dozen bytes. */
export const MAX_BODY = 4096;

/** An HTTP-level refusal of this door (bad body, wrong method, unknown path). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** How each lease-service refusal reads in the JSON API. */
const STATUS: Record<LeaseErrorCode, number> = {
  unauthorized: 401,
  too_many_failures: 429,
  rate_limited: 429,
  no_address: 400,
  bad_forwarded: 400,
  invalid_ip: 400,
  address_not_allowed: 403,
  lookup_cannot_hold: 403,
  map_update_failed: 503,
  state_unavailable: 503,
};

/** A JSON answer that no cache keeps. */
export function json(status: number, body: WireBody, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store", ...headers },
  });
}

/** A lease as the API and `server list` show it. */
export function leaseView(l: LeaseRow): LeaseView {
  return { ip: l.ip, family: l.family, renewed_at: new Date(l.renewed_at).toISOString(), expires_at: new Date(l.expires_at).toISOString() };
}

/** An error answer's body. */
function errorBody(error: string, message: string): ErrorBody {
  return { error, message };
}

/** True for an error of the state database (full disk, read-only, locked): the server's trouble, not the caller's. */
export function isStateError(err: unknown): boolean {
  return (err as { name?: string })?.name === "SQLiteError" || /^SQLITE_/.test(String((err as { code?: string })?.code ?? ""));
}

/** Translates any error into this door's JSON answer. */
export function errorResponse(err: unknown): Response {
  if (err instanceof LeaseError) {
    const headers: Record<string, string> = err.retryAfter ? { "retry-after": String(err.retryAfter) } : {};
    if (err.code === "unauthorized") headers["www-authenticate"] = "Bearer";
    return json(STATUS[err.code], errorBody(err.code, err.message), headers);
  }
  if (err instanceof HttpError) return json(err.status, errorBody(err.code, err.message), err.headers);
  if (isStateError(err)) {
    log.error(`state database error: ${(err as Error).message}`);
    return json(503, errorBody("state_unavailable", `the state database cannot be written (${(err as Error).message}); nothing was changed`), { "retry-after": "30" });
  }
  log.error(`request failed: ${(err as Error)?.stack ?? err}`);
  return json(500, errorBody("internal", "internal server error; see the server log"));
}

/** Reads a request body without ever holding more than MAX_BODY bytes; undefined when empty. */
export async function readBody(req: Request): Promise<Buffer | undefined> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > MAX_BODY) throw new HttpError(413, "body_too_large", `request body over ${MAX_BODY} bytes`);
  if (!req.body) return undefined;
  // A declared small body is read in one call (a stream reader cost ~14 µs a
  // renewal); Bun.serve's maxRequestBodySize bounds what a lying header gets.
  if (declared !== null) {
    const whole = Buffer.from(await req.arrayBuffer());
    if (whole.byteLength > MAX_BODY) throw new HttpError(413, "body_too_large", `request body over ${MAX_BODY} bytes`);
    return whole.byteLength === 0 ? undefined : whole;
  }
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
  return size === 0 ? undefined : Buffer.concat(chunks);
}

/** The media type of a request body, lower case, without parameters. */
export function mediaType(req: Request): string {
  return (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
}

/** Reads a JSON body (see readBody); undefined when empty. */
async function readJsonBody(req: Request): Promise<unknown> {
  const body = await readBody(req);
  if (body === undefined) return undefined;
  if (mediaType(req) !== "application/json") throw new HttpError(415, "unsupported_media_type", "send the body as application/json");
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    throw new HttpError(400, "bad_json", "request body is not valid JSON");
  }
}

/**
 * The JSON front door, `/v1/lease` with a Bearer token: GET shows, POST
 * renews, DELETE releases. It only translates; the lease service decides.
 */
export function leaseRoute(service: LeaseService): (req: Request, server: Server<unknown>) => Promise<Response> {
  return async (req, server) => {
    if (!["GET", "POST", "DELETE"].includes(req.method)) {
      return errorResponse(new HttpError(405, "method_not_allowed", "use GET, POST or DELETE", { allow: "GET, POST, DELETE" }));
    }
    let client: ClientRow | null = null;
    let source: Ip | null = null;
    try {
      source = service.believe(server.requestIP(req)?.address, req.headers.get("x-forwarded-for"));
      client = await service.authenticate(bearer(req.headers.get("authorization")), source);
      if (req.method === "GET") {
        const status: LeaseStatusBody = { client: client.name, ip: source.text, ttl: service.ttlOf(client), leases: (await service.leasesOf(client)).map(leaseView) };
        return json(200, status);
      }
      if (req.method === "DELETE") {
        const gone = await service.release(client, source);
        const released: ReleaseBody = { client: client.name, released: gone.map((l) => l.ip) };
        return json(200, released);
      }
      const body = await readJsonBody(req);
      if (body !== undefined && (typeof body !== "object" || body === null || Array.isArray(body))) {
        throw new HttpError(400, "bad_request", 'body must be a JSON object like {"ip": "198.51.100.7"}');
      }
      const r = await service.renew(client, source, (body as Record<string, unknown> | undefined)?.ip);
      const answer: LeaseAnswerBody = { client: r.client, ip: r.lease.ip, expires_at: new Date(r.lease.expires_at).toISOString(), ttl: r.ttl, event: r.event };
      return json(200, answer);
    } catch (err) {
      if (err instanceof LeaseError && err.refusal) service.refused(err, client?.name ?? null, source);
      else if (err instanceof HttpError && err.status < 500) service.refused(err, client?.name ?? null, source);
      return errorResponse(err);
    }
  };
}
