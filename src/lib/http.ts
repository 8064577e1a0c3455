import { FetchError, ofetch, type $Fetch } from "ofetch";
import { ExitCode, RelayError } from "./errors.ts";
import type { ErrorBody } from "./wire.ts";
import { isTimeout, networkReason, resolveHost } from "./neterr.ts";
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
  const timeoutMs = o.timeoutMs ?? 10_000;
  return ofetch.create({
    baseURL: o.server,
    headers: o.token ? { authorization: `Bearer ${o.token}` } : {},
    retry: o.retries ?? 2,
    retryDelay: 700,
    retryStatusCodes: [408, 500, 502, 503, 504],
    tls: tls ?? VERIFY_PEER,
    // Each attempt its own deadline: ofetch's `timeout` hands the first attempt's signal to
    // the retries, so after two quick failures (no route, refused) the third timed out and
    // the error said "no answer in time" instead of why.
    onRequest({ options }) {
      options.signal = AbortSignal.timeout(timeoutMs);
    },
    // A whole timeout spent: answer now rather than wait it out twice more.
    onRequestError({ error, options }) {
      if (isTimeout(error)) options.retry = 0;
    },
  } as Parameters<typeof ofetch.create>[0]);
}

const TLS_TROUBLE = /CERT|SELF_SIGNED|ALTNAME|TLS|SSL|pinned/i;

/** True when a request failed in certificate verification rather than on the network or at the server. */
export function isTlsTrouble(err: unknown): boolean {
  if (err instanceof RelayError) return false;
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  return TLS_TROUBLE.test([cause?.code, cause?.message, (err as Error)?.message].filter(Boolean).join(" "));
}

/**
 * Like apiError, but a timeout against a host name first asks DNS: a
 * resolver that does not answer looks to fetch like a server that does not.
 */
export async function apiFailure(err: unknown, server: string): Promise<RelayError> {
  if (!isTimeout(err)) return apiError(err, server);
  const host = new URL(server).hostname.replace(/^\[(.*)\]$/, "$1");
  const dns = await resolveHost(host, DNS_CHECK_MS).then(
    () => null,
    (e: unknown) => networkReason(e),
  );
  return dns ? new RelayError(`cannot reach ${server}: ${dns.what}`, { hint: dns.hint, cause: err }) : apiError(err, server);
}

/** How long apiFailure waits for DNS after a timeout: a working resolver answers well within it. */
const DNS_CHECK_MS = 3_000;

/** Turns an HTTP failure into a RelayError with the documented exit code and a hint. */
export function apiError(err: unknown, server: string): RelayError {
  if (err instanceof RelayError) return err;
  if (err instanceof FetchError && err.response) {
    // Partial: a proxy in between may answer with anything.
    const body = err.data as Partial<ErrorBody> | undefined;
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
