import { afterAll, describe, expect, test } from "bun:test";
import { connectFailure, isTimeout, networkReason, resolveHost } from "../../../src/lib/neterr.ts";
import { apiError, apiFailure, createApi } from "../../../src/lib/http.ts";
import { fetchPeerCertificate } from "../../../src/lib/pin.ts";
import { ExitCode, RelayError } from "../../../src/lib/errors.ts";

/** An error shaped as the runtime gives it, with its code on the error or (as ofetch wraps it) on its cause. */
const coded = (code: string, wrapped = false): unknown => {
  const e = Object.assign(new TypeError(`${code}: Unable to connect. Is the computer able to access the url?`), { code });
  return wrapped ? Object.assign(new Error(`[GET] "https://x/": <no response> ${e.message}`), { cause: e }) : e;
};

// Loopback listeners: one that takes connections and never speaks, one that closes each at once after a pause.
const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
const closer = Bun.listen({
  hostname: "127.0.0.1",
  port: 0,
  socket: {
    open(s) {
      setTimeout(() => s.end(), 150);
    },
    data() {},
  },
});
afterAll(() => {
  silent.stop(true);
  closer.stop(true);
});

describe("networkReason: each failure in its own words", () => {
  test.each([
    ["ENOTFOUND", "the host name does not resolve"],
    ["EAI_AGAIN", "DNS lookup failed for now"],
    ["DNS_TIMEOUT", "the DNS lookup got no answer in time"],
    ["ECONNREFUSED", "connection refused"],
    ["EHOSTUNREACH", "no route to the host (nothing answers at that address)"],
    ["ENETUNREACH", "the network is unreachable"],
  ])("%s, bare or wrapped by ofetch", (code, what) => {
    expect(networkReason(coded(code)).what).toBe(what);
    expect(networkReason(coded(code, true)).what).toBe(what);
  });

  test("DNS failures point at DNS, refusals at the server, and neither at the other", () => {
    expect(networkReason(coded("ENOTFOUND")).hint).toContain("DNS");
    expect(networkReason(coded("DNS_TIMEOUT")).hint).toContain("/etc/resolv.conf");
    expect(networkReason(coded("ECONNREFUSED")).hint).not.toContain("DNS");
  });

  test("a timeout is one; a refusal is not", () => {
    expect(isTimeout(new DOMException("The operation timed out.", "TimeoutError"))).toBe(true);
    expect(isTimeout({ cause: new DOMException("x", "TimeoutError") })).toBe(true);
    expect(isTimeout(coded("ECONNREFUSED", true))).toBe(false);
  });
});

describe("resolveHost", () => {
  test("an IP literal is not looked up", async () => {
    const never = () => Promise.reject(new Error("looked up"));
    expect(await resolveHost("198.51.100.7", 10, never)).toBe("198.51.100.7");
    expect(await resolveHost("2001:db8::1", 10, never)).toBe("2001:db8::1");
  });

  test("a resolver that never answers is DNS_TIMEOUT, not a connection timeout", async () => {
    const err = await resolveHost("mail.example.org", 50, () => new Promise<string>(() => {})).catch((e: unknown) => e);
    expect((err as { code: string }).code).toBe("DNS_TIMEOUT");
    expect(networkReason(err).what).toBe("the DNS lookup got no answer in time");
  });

  test("a lookup's own failure passes through", async () => {
    const err = await resolveHost("mail.example.org", 1000, () => Promise.reject(coded("ENOTFOUND"))).catch((e: unknown) => e);
    expect(networkReason(err).what).toBe("the host name does not resolve");
  });
});

describe("connectFailure", () => {
  test("a closed loopback port is a refusal", async () => {
    expect(networkReason(await connectFailure("127.0.0.1", 1, 2000)).what).toBe("connection refused");
  });
});

describe("the API client's timeouts", () => {
  test("each attempt has its own deadline: after retries the last real reason stands, not a timeout", async () => {
    // Each attempt is closed after 150 ms; three of them with two 700 ms pauses outlast one 1 s deadline.
    const api = await createApi({ server: `https://127.0.0.1:${closer.port}`, timeoutMs: 1000, retries: 2 });
    const err = await api("/v1/lease").catch((e: unknown) => e);
    expect(isTimeout(err)).toBe(false);
    expect(apiError(err, "S").message).toBe("cannot reach S: the connection was reset");
  });

  test("a timed-out attempt is not retried: the deadline is spent once", async () => {
    const api = await createApi({ server: `https://127.0.0.1:${silent.port}`, timeoutMs: 300, retries: 2 });
    const started = Date.now();
    const err = await api("/v1/lease").catch((e: unknown) => e);
    // Retried, it would take 300 + 700 + 700 ms at least (two retry pauses).
    expect(Date.now() - started).toBeLessThan(1200);
    expect(isTimeout(err)).toBe(true);
  });

  test("apiFailure: a timeout against an IP literal stays a timeout (no DNS involved)", async () => {
    const err = await apiFailure({ cause: new DOMException("x", "TimeoutError") }, "https://127.0.0.1:8443");
    expect(err).toBeInstanceOf(RelayError);
    expect(err.message).toBe("cannot reach https://127.0.0.1:8443: no answer in time");
  });
});

describe("fetchPeerCertificate: connecting and the handshake fail differently", () => {
  test("a port that takes the connection but never speaks TLS is named as such", async () => {
    const err = await fetchPeerCertificate(new URL(`https://127.0.0.1:${silent.port}/`), 300).catch((e: unknown) => e);
    expect((err as RelayError).exitCode).toBe(ExitCode.FAILED);
    expect((err as RelayError).message).toBe(`cannot read the TLS certificate of 127.0.0.1:${silent.port}: port ${silent.port} took the connection but sent no TLS handshake within 300 ms`);
    expect((err as RelayError).hint).toContain("HTTPS port");
  });

  test("a closed port is a refusal, in words", async () => {
    const err = (await fetchPeerCertificate(new URL("https://127.0.0.1:1/"), 2000).catch((e: unknown) => e)) as RelayError;
    expect(err.message).toBe("cannot read the TLS certificate of 127.0.0.1:1: connection refused");
    expect(err.hint).toContain("listens on that port");
  });
});
