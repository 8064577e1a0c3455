/**
 * The dyndns2 front door, `GET|POST /nic/update`: routers, NAS boxes,
 * ddclient and inadyn renew leases with the protocol they already speak.
 * It only translates; the lease service decides. Answers are the words
 * the "Routers and NAS boxes" docs tabulate, chosen for what the real
 * clients do with them.
 */
import type { Server } from "bun";
import { parseIp, type Ip } from "../../lib/ip.ts";
import { log } from "../../lib/logging.ts";
import { LeaseError, type LeaseErrorCode, type LeaseService } from "../service.ts";
import type { RenewEvent } from "../leases.ts";
import type { ClientRow } from "../state.ts";
import { basic, type Credential } from "../tokens.ts";
import { HttpError, isStateError, mediaType, readBody } from "./api.ts";

/** The Basic challenge: GNU wget and OpenWrt's uclient send credentials only after it. */
export const CHALLENGE = 'Basic realm="relayctl"';

/** What an update asks for, parsed from its parameters (the credential aside). */
export interface Update {
  /** The addresses myip names, normalised, at most one per family; empty means the observed address. */
  addresses: Ip[];
  /** offline=YES: release the lease instead of renewing it. */
  offline: boolean;
}

/** An answer of this door: status, the text lines, extra headers. */
export interface Answer {
  status: number;
  lines: string[];
  headers: Record<string, string>;
}

/**
 * How each lease-service refusal reads in dyndns2. No word contains ok,
 * good, true, updated, success or nochg in any case: inadyn's custom
 * provider takes any of them, anywhere in the body, as success.
 */
const LEASE_ANSWERS: Record<LeaseErrorCode, { status: number; word: string }> = {
  unauthorized: { status: 401, word: "badauth" },
  // Only a wrong credential is ever blocked (a valid one always passes), so to the device it is one.
  too_many_failures: { status: 401, word: "badauth" },
  // 5xx, not 429: inadyn retries a 5xx after 600 s but exits on any other non-200.
  rate_limited: { status: 503, word: "911" },
  no_address: { status: 400, word: "notfqdn" },
  bad_forwarded: { status: 400, word: "notfqdn" },
  invalid_ip: { status: 400, word: "notfqdn" },
  address_not_allowed: { status: 403, word: "nohost" },
  lookup_cannot_hold: { status: 403, word: "nohost" },
  map_update_failed: { status: 503, word: "911" },
  // The shared database is down: transient, so the device retries later.
  state_unavailable: { status: 503, word: "911" },
};

/** Parses myip: absent, empty or all-empty entries mean none (the observed address); else one address per family. */
export function parseMyip(value: string | null): Ip[] {
  // FRITZ!Box fills `<ipaddr>,<ip6addr>` with an empty IPv6 part when it has none.
  const entries = (value ?? "").split(",").map((e) => e.trim()).filter(Boolean);
  const invalid = (): HttpError => new HttpError(400, "invalid_myip", "myip must be an IPv4 address, an IPv6 address, or one of each separated by a comma");
  if (entries.length > 2) throw invalid();
  const ips: Ip[] = [];
  for (const e of entries) {
    const ip = parseIp(e);
    if (!ip) throw invalid();
    ips.push(ip);
  }
  if (ips.length === 2 && ips[0]!.family === ips[1]!.family) throw invalid();
  return ips;
}

/** The credential of an update: HTTP Basic when an Authorization header is sent, else `username` and `password` from the parameters. */
export function credentialOf(authorization: string | null, params: URLSearchParams): Credential | null {
  if (authorization !== null) return basic(authorization);
  const name = params.get("username");
  const token = params.get("password");
  return name && token ? { name, token } : null;
}

/** Parses an update's parameters; hostname, system, wildcard, mx, backmx and offline=NO are ignored. */
export function parseUpdate(params: URLSearchParams): Update {
  return {
    addresses: parseMyip(params.get("myip")),
    offline: (params.get("offline") ?? "").toUpperCase() === "YES",
  };
}

/** The parameters of a request: the query, then for POST a form body (the query's value wins where both give one). */
export async function updateParams(req: Request): Promise<URLSearchParams> {
  const params = new URL(req.url).searchParams;
  if (req.method !== "POST") return params;
  const body = await readBody(req);
  if (body === undefined) return params;
  if (mediaType(req) !== "application/x-www-form-urlencoded") throw new HttpError(415, "unsupported_media_type", "send POST parameters as application/x-www-form-urlencoded");
  for (const [k, v] of new URLSearchParams(body.toString("utf8"))) params.append(k, v);
  return params;
}

/** The result line for one address: `good` for a new or moved lease, `nochg` for a renewal of the same one. */
export function resultLine(event: RenewEvent, address: Ip): string {
  return `${event === "renew" ? "nochg" : "good"} ${address.text}`;
}

/** Translates a refusal or failure into this door's answer; null for an unexpected error (answered 500 `911` after logging). */
export function answerFor(err: unknown): Answer | null {
  if (err instanceof LeaseError) {
    const a = LEASE_ANSWERS[err.code];
    const headers: Record<string, string> = err.retryAfter ? { "retry-after": String(err.retryAfter) } : {};
    if (a.status === 401) headers["www-authenticate"] = CHALLENGE;
    return { status: a.status, lines: [a.word], headers };
  }
  // badagent is Dyn's word for a request it cannot take (method, body); notfqdn for a malformed parameter.
  if (err instanceof HttpError) return { status: err.status, lines: [err.status === 400 ? "notfqdn" : "badagent"], headers: err.headers };
  if (isStateError(err)) return { status: 503, lines: ["911"], headers: { "retry-after": "30" } };
  return null;
}

/** A text/plain answer that no cache keeps. */
export function textResponse(a: Answer): Response {
  return new Response(a.lines.join("\n") + "\n", {
    status: a.status,
    headers: { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store", ...a.headers },
  });
}

/**
 * The `/nic/update` route. Credentials may come in the query string, so no
 * part of the request (URL, parameters, headers) is ever logged, audited or
 * echoed: only codes and the client's name are.
 */
export function dyndnsRoute(service: LeaseService): (req: Request, server: Server<unknown>) => Promise<Response> {
  return async (req, server) => {
    let client: ClientRow | null = null;
    let source: Ip | null = null;
    try {
      if (req.method !== "GET" && req.method !== "POST") throw new HttpError(405, "method_not_allowed", "use GET or POST", { allow: "GET, POST" });
      source = service.believe(server.requestIP(req)?.address, req.headers.get("x-forwarded-for"));
      const params = await updateParams(req);
      const credential = credentialOf(req.headers.get("authorization"), params);
      // No credential at all is the first half of HTTP Basic (wget, uclient), not a
      // guess: challenge without counting a failure, even from a blocked source.
      if (!credential) return textResponse({ status: 401, lines: ["badauth"], headers: { "www-authenticate": CHALLENGE } });
      client = await service.authenticate(credential, source);
      const update = parseUpdate(params);
      const named = update.addresses;
      if (update.offline) {
        // One release, one rate-limit token: myip names one family, or both
        // (at most one address each), which is every lease, as is no myip.
        const gone = await service.release(client, source, named.length === 1 ? named[0]!.family : undefined);
        const lines = (named.length ? named : [source]).map((a) => `${gone.some((l) => !named.length || l.family === a.family) ? "good" : "nochg"} ${a.text}`);
        return textResponse({ status: 200, lines, headers: {} });
      }
      const renewed = await service.renewEach(client, source, named.length ? named.map((a) => a.text) : [undefined]);
      return textResponse({ status: 200, lines: renewed.map((r, i) => resultLine(r.event, named[i] ?? source)), headers: {} });
    } catch (err) {
      if ((err instanceof LeaseError && err.refusal) || (err instanceof HttpError && err.status < 500)) service.refused(err, client?.name ?? null, source);
      const answer = answerFor(err);
      if (answer) {
        if (isStateError(err)) log.error(`state database error: ${(err as Error).message}`);
        return textResponse(answer);
      }
      log.error(`dyndns2 update failed: ${(err as Error)?.stack ?? err}`);
      return textResponse({ status: 500, lines: ["911"], headers: {} });
    }
  };
}
