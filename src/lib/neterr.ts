// Network failures in relayctl's words, for the API client (http.ts) and the
// certificate reader (pin.ts) alike: a name that does not resolve, a DNS
// server that does not answer, a refused or unroutable connection and a port
// that never speaks TLS each get their own message and fix. Free of ofetch
// and node:tls, so that pin.ts can use it without loading either.
import { parseIp } from "./ip.ts";

/** What a network failure means, by error code, in words a mail admin acts on, and what to check. */
const NETWORK_TROUBLE: Record<string, [string, string]> = {
  ECONNREFUSED: ["connection refused", "check that the server runs and listens on that port, and that no firewall rejects it"],
  ENOTFOUND: ["the host name does not resolve", "check the server URL and this host's DNS"],
  EAI_AGAIN: ["DNS lookup failed for now", "check this host's DNS; the next run retries"],
  DNS_TIMEOUT: ["the DNS lookup got no answer in time", "check the name servers in /etc/resolv.conf and that this host reaches them"],
  ETIMEDOUT: ["no answer in time", "check the network path and the firewall (a dropped port looks like this)"],
  TimeoutError: ["no answer in time", "check the network path and the firewall (a dropped port looks like this)"],
  ECONNRESET: ["the connection was reset", "check for a proxy or firewall in between; the next run retries"],
  ConnectionClosed: ["the server closed the connection", "check that the URL points at the relayctl server's HTTPS port"],
  EHOSTUNREACH: ["no route to the host (nothing answers at that address)", "check the server URL's address and this host's network and routes"],
  ENETUNREACH: ["the network is unreachable", "check this host's network and routes"],
};

/** An error's own code, or its cause's (fetch and ofetch wrap the runtime's error). */
function codeOf(err: unknown): string {
  const e = err as { code?: unknown; name?: string; cause?: { code?: unknown; name?: string } } | undefined;
  for (const c of [e?.cause?.code, e?.code, e?.cause?.name, e?.name]) if (typeof c === "string" && NETWORK_TROUBLE[c]) return c;
  return "";
}

/** True when a request failed because its time ran out (ofetch's or fetch's own timeout). */
export function isTimeout(err: unknown): boolean {
  const c = codeOf(err);
  return c === "TimeoutError" || c === "ETIMEDOUT";
}

/**
 * The runtime's own words for a failed request, without the advice Bun appends
 * ("Is the computer able to access the url?", "pass `verbose: true`").
 */
export function networkReason(err: unknown): { what: string; hint: string } {
  const known = NETWORK_TROUBLE[codeOf(err)];
  if (known) return { what: known[0], hint: known[1] };
  const cause = (err as { cause?: { message?: string } })?.cause;
  const raw = cause?.message ?? (err as Error)?.message ?? String(err);
  const what = raw
    .replace(/^\[\w+\] "[^"]*": (<no response> )?/, "")
    .replace(/:? ?Unable to connect\. Is the computer able to access the url\?/, "")
    .replace(/ fetching "[^"]*"\. For more information, pass `verbose: true`.*$/, "")
    .trim();
  return { what: what || "network error", hint: "check the network, DNS and firewall; the next run retries" };
}

/** A failure with a code from NETWORK_TROUBLE, for failures relayctl detects itself. */
function coded(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

/**
 * Resolves a host name (an IP literal is returned as is) within timeoutMs:
 * a resolver that never answers fails as DNS_TIMEOUT, not as a connection
 * or handshake that timed out.
 */
export async function resolveHost(host: string, timeoutMs: number, lookup?: (host: string) => Promise<string>): Promise<string> {
  if (parseIp(host)) return host;
  const resolve = lookup ?? (async (h: string) => (await (await import("node:dns/promises")).lookup(h)).address);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(coded("DNS_TIMEOUT", `no DNS answer for ${host} within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([resolve(host), late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Why a TCP connection to address:port failed. Bun's node:net and
 * Bun.connect report every failed connect as ECONNREFUSED, an address where
 * nothing answers included; its fetch reports the real errno, so it is asked.
 * Nothing is sent: the probe's identity check fails every server.
 */
export async function connectFailure(address: string, port: number, timeoutMs: number): Promise<unknown> {
  const host = address.includes(":") ? `[${address}]` : address;
  try {
    await fetch(`https://${host}:${port}/`, {
      method: "HEAD",
      signal: AbortSignal.timeout(timeoutMs),
      tls: { rejectUnauthorized: true, checkServerIdentity: () => new Error("connect probe only") },
    } as RequestInit);
  } catch (err) {
    // No known code means it connected after all (a listener came up since): the first answer stands.
    if (codeOf(err)) return err;
  }
  return coded("ECONNREFUSED", "connection refused");
}
