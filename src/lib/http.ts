import { FetchError, ofetch, type $Fetch } from "ofetch";
import { ExitCode, RelayError } from "./errors.ts";
import { serverTlsOptions, VERIFY_PEER } from "./pin.ts";

/** Where and how to reach a relayctl server. */
export interface ApiOptions {
  server: string;
  token?: string;
  pin?: string;
  /** Chain saved at enrollment; see serverTlsOptions. */
  serverCert?: string;
  timeoutMs?: number;
  /** Quick retries on network errors and 5xx, for the blip the seed's 20-minute grace period papered over. */
  retries?: number;
}

/**
 * The one HTTP factory. With a pin, the server certificate is checked before
 * any request (and so the token) leaves this host; without one, normal CA
 * verification applies. Neither depends on the environment: see VERIFY_PEER.
 */
export async function createApi(o: ApiOptions): Promise<$Fetch> {
  const tls = await serverTlsOptions(new URL(o.server), o.pin, o.serverCert);
  return ofetch.create({
    baseURL: o.server,
    headers: o.token ? { authorization: `Bearer ${o.token}` } : {},
    timeout: o.timeoutMs ?? 10_000,
    retry: o.retries ?? 2,
    retryDelay: 700,
    retryStatusCodes: [408, 500, 502, 503, 504],
    tls: tls ?? VERIFY_PEER,
  } as Parameters<typeof ofetch.create>[0]);
}

const TLS_TROUBLE = /CERT|SELF_SIGNED|ALTNAME|TLS|SSL|pinned/i;

/** True when a request failed in certificate verification rather than on the network or at the server. */
export function isTlsTrouble(err: unknown): boolean {
  if (err instanceof RelayError) return false;
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  return TLS_TROUBLE.test([cause?.code, cause?.message, (err as Error)?.message].filter(Boolean).join(" "));
}

/** What a network failure means, by error code, in words a mail admin acts on, and what to check. */
const NETWORK_TROUBLE: Record<string, [string, string]> = {
  ECONNREFUSED: ["connection refused", "check that the server runs and listens on that port, and that no firewall rejects it"],
  ENOTFOUND: ["the host name does not resolve", "check the server URL and this host's DNS"],
  EAI_AGAIN: ["DNS lookup failed for now", "check this host's DNS; the next run retries"],
  ETIMEDOUT: ["no answer in time", "check the network path and the firewall (a dropped port looks like this)"],
  TimeoutError: ["no answer in time", "check the network path and the firewall (a dropped port looks like this)"],
  ECONNRESET: ["the connection was reset", "check for a proxy or firewall in between; the next run retries"],
  ConnectionClosed: ["the server closed the connection", "check that the URL points at the relayctl server's HTTPS port"],
  EHOSTUNREACH: ["no route to the host", "check this host's network and routes"],
  ENETUNREACH: ["the network is unreachable", "check this host's network and routes"],
};

/**
 * The runtime's own words for a failed request, without the advice Bun appends
 * ("Is the computer able to access the url?", "pass `verbose: true`").
 */
export function networkReason(err: unknown): { what: string; hint: string } {
  const cause = (err as { cause?: { code?: string; name?: string; message?: string } })?.cause;
  const known = NETWORK_TROUBLE[cause?.code ?? ""] ?? NETWORK_TROUBLE[cause?.name ?? ""] ?? NETWORK_TROUBLE[(err as Error)?.name ?? ""];
  if (known) return { what: known[0], hint: known[1] };
  const raw = cause?.message ?? (err as Error)?.message ?? String(err);
  const what = raw
    .replace(/^\[\w+\] "[^"]*": (<no response> )?/, "")
    .replace(/:? ?Unable to connect\. Is the computer able to access the url\?/, "")
    .replace(/ fetching "[^"]*"\. For more information, pass `verbose: true`.*$/, "")
    .trim();
  return { what: what || "network error", hint: "check the network, DNS and firewall; the next run retries" };
}

/** Turns an HTTP failure into a RelayError with the documented exit code and a hint. */
export function apiError(err: unknown, server: string): RelayError {
  if (err instanceof RelayError) return err;
  if (err instanceof FetchError && err.response) {
    const body = err.data as { error?: string; message?: string } | undefined;
    const said = body?.message ?? err.statusText ?? "";
    const status = err.response.status;
    if (status === 401) return new RelayError(`server refused the token (${said})`, { exitCode: ExitCode.REFUSED, hint: "the client was revoked or the token is wrong: enroll again with a line from `relayctl server add`" });
    if (status === 403) return new RelayError(`server refused: ${said}`, { exitCode: ExitCode.REFUSED, hint: "ask the mail admin to widen this client's --allow list" });
    if (status === 429) return new RelayError(`server is rate limiting this client: ${said}`, { hint: "run the client less often (every 4 minutes is plenty)" });
    if (status >= 500) return new RelayError(`server error ${status}: ${said}`, { hint: "the server log says more; the next run retries" });
    if (status === 404 || status === 405) return new RelayError(`${server} does not look like a relayctl server (HTTP ${status})`, { exitCode: ExitCode.USAGE, hint: "check the server URL in the client config" });
    return new RelayError(`server rejected the request (HTTP ${status}): ${said}`, { exitCode: ExitCode.USAGE });
  }
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  if (isTlsTrouble(err)) {
    return new RelayError(`cannot verify the server certificate of ${server}: ${cause?.code ?? (err as Error).message}`, {
      exitCode: ExitCode.REFUSED,
      hint: "enroll with the --pin printed by `relayctl server add`, or give the server a CA-signed certificate",
    });
  }
  const { what, hint } = networkReason(err);
  return new RelayError(`cannot reach ${server}: ${what}`, { hint });
}
