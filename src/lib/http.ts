import { FetchError, ofetch, type $Fetch } from "ofetch";
import { ExitCode, RelayError } from "./errors.ts";
import { serverTlsOptions, VERIFY_PEER } from "./tls.ts";

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
  return new RelayError(`cannot reach ${server}: ${cause?.message ?? (err as Error)?.message ?? String(err)}`, {
    hint: "check the network, DNS and firewall; the next run retries",
  });
}
