import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { apiError, createApi } from "../../../src/lib/http.ts";
import { certificatePin, pinnedTls } from "../../../src/lib/pin.ts";
import { generateSelfSigned } from "../../../src/lib/tls.ts";

// A loopback HTTPS server with a certificate nobody trusts or pinned, recording what it was sent.
const mine = generateSelfSigned({ hosts: ["127.0.0.1"] });
const stranger = generateSelfSigned({ hosts: ["127.0.0.1"] });
const seen: (string | null)[] = [];
let server: ReturnType<typeof Bun.serve>;
let url: string;

beforeAll(() => {
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: stranger.certPem, key: stranger.keyPem },
    fetch(req) {
      seen.push(req.headers.get("authorization"));
      return Response.json({ client: "x" });
    },
  });
  url = `https://127.0.0.1:${server.port}`;
});
afterAll(() => server.stop(true));

describe("NODE_TLS_REJECT_UNAUTHORIZED=0 changes nothing", () => {
  const before = process.env.NODE_TLS_REJECT_UNAUTHORIZED;
  beforeAll(() => {
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
  });
  afterAll(() => {
    if (before === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
    else process.env.NODE_TLS_REJECT_UNAUTHORIZED = before;
  });
  afterEach(() => {
    expect(seen).toEqual([]);
  });

  test("a saved chain and pin of another certificate: refused in the handshake, no token sent", async () => {
    const api = await createApi({ server: url, token: "secret", pin: certificatePin(mine.certPem), serverCert: mine.certPem, retries: 0 });
    const err = await api("/v1/lease").then(() => null, (e: unknown) => e);
    expect(err).not.toBeNull();
    expect(apiError(err, url).exitCode).toBe(3);
  });

  test("a pin of another certificate without a saved chain: refused before connecting for real", async () => {
    const err = await createApi({ server: url, token: "secret", pin: certificatePin(mine.certPem), retries: 0 }).then(() => null, (e: unknown) => e);
    expect(apiError(err, url).message).toContain("does not match the pinned");
    expect(apiError(err, url).exitCode).toBe(3);
  });

  test("no pin: the self-signed certificate fails CA verification", async () => {
    const api = await createApi({ server: url, token: "secret", retries: 0 });
    const err = await api("/v1/lease").then(() => null, (e: unknown) => e);
    expect(apiError(err, url).message).toContain("cannot verify the server certificate");
    expect(apiError(err, url).exitCode).toBe(3);
  });

  test("the pinned options force verification whatever the default", async () => {
    expect((await pinnedTls(certificatePin(mine.certPem), mine.certPem)).rejectUnauthorized).toBe(true);
  });
});
