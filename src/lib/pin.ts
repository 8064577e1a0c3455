// The client's side of server identity: pins, the pinned `tls` option for
// fetch, and reading the server's chain. Kept apart from tls.ts (certificate
// generation) and free of node:crypto and node:tls at load time: every cron
// run of `relayctl client` passes through here, and loading either module
// cost ~2 ms of start-up each in the compiled binary.
import { ExitCode, RelayError, usageError } from "./errors.ts";
import { parseIp } from "./ip.ts";
import { connectFailure, networkReason, resolveHost } from "./neterr.ts";

/** PEM text of one DER object under `label` (e.g. CERTIFICATE), 64 base64 characters a line. */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** DER of the first certificate in a PEM bundle: the leaf, which is what a pin names. */
export function firstCertificateDer(certPem: string): Buffer {
  const m = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/.exec(certPem);
  if (!m) throw usageError("no PEM certificate found", "expected a -----BEGIN CERTIFICATE----- block");
  return Buffer.from(m[1]!.replace(/\s+/g, ""), "base64");
}

function sha256Pin(der: Uint8Array): string {
  return `sha256:${new Bun.CryptoHasher("sha256").update(der).digest("hex")}`;
}

/** Pin of a certificate: `sha256:` + hex SHA-256 of its DER, as `openssl x509 -outform der | sha256sum` prints. */
export function certificatePin(certPem: string): string {
  return sha256Pin(firstCertificateDer(certPem));
}

/** Validates and normalises a pin: `sha256:` + 64 hex digits, any case, colons between bytes allowed. */
export function parsePin(s: string): string {
  const m = /^sha256(?::|\s+fingerprint=)\s*([0-9a-f:]+)$/i.exec(s.trim());
  const body = m?.[1] ?? "";
  const plain = /^[0-9a-f]{64}$/i.test(body);
  const colons = /^[0-9a-f]{2}(:[0-9a-f]{2}){31}$/i.test(body);
  if (!plain && !colons) {
    throw usageError(`"${s}" is not a certificate pin`, "expected sha256: followed by 64 hex digits, as printed by `relayctl server add`");
  }
  return `sha256:${body.replace(/:/g, "").toLowerCase()}`;
}

function pinsEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

export interface PeerCertificate {
  pem: string;
  der: Buffer;
  pin: string;
  /** Leaf then every certificate the server sent with it, as PEM: the trust list for pinnedTls. */
  chainPem: string;
}

type ChainLink = { raw?: Uint8Array; issuerCertificate?: ChainLink };

function chainToPem(leaf: ChainLink): string {
  const out: string[] = [];
  const seen = new Set<string>();
  // A self-signed root points at itself, so stop on the first repeat.
  for (let c: ChainLink | undefined = leaf; c?.raw && c.raw.length > 0; c = c.issuerCertificate) {
    const key = Buffer.from(c.raw).toString("base64");
    if (seen.has(key)) break;
    seen.add(key);
    out.push(toPem("CERTIFICATE", c.raw));
  }
  return out.join("");
}

function urlHostPort(url: URL): { host: string; port: number } {
  if (url.protocol !== "https:") {
    throw usageError(`${url.origin} is not an https URL`, "a certificate pin only makes sense with https://");
  }
  // URL keeps IPv6 literals bracketed; sockets want them bare.
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  return { host, port: url.port ? Number(url.port) : 443 };
}

/**
 * Reads the server's leaf certificate over a TLS handshake that sends no
 * application data. Resolving the name, connecting and the handshake each
 * get timeoutMs and their own error, so a DNS failure, a refused or
 * unroutable address and a port that never speaks TLS read differently.
 */
export async function fetchPeerCertificate(url: URL, timeoutMs = 10000): Promise<PeerCertificate> {
  const { host, port } = urlHostPort(url);
  const failed = (why: { what: string; hint: string }, cause?: unknown) =>
    new RelayError(`cannot read the TLS certificate of ${url.host}: ${why.what}`, { exitCode: ExitCode.FAILED, hint: why.hint, cause });
  const address = await resolveHost(host, timeoutMs).catch((err: unknown) => {
    throw failed(networkReason(err), err);
  });
  // Only enrollment, a pin mismatch and doctor get here, never a plain renewal.
  const { connect } = await import("node:tls");
  const socket = connect({
    host: address,
    port,
    // SNI must be a name; sending an IP there is invalid (RFC 6066 3).
    ...(parseIp(host) ? {} : { servername: host }),
    // Safe only because nothing is written on this socket: identity is judged from the pin.
    rejectUnauthorized: false,
  });
  let connected = false;
  socket.once("connect", () => (connected = true));
  const outcome = await new Promise<PeerCertificate | { failure: { what: string; hint: string } } | { error: NodeJS.ErrnoException }>((resolve) => {
    const timer = setTimeout(
      () =>
        resolve({
          failure: connected
            ? { what: `port ${port} took the connection but sent no TLS handshake within ${timeoutMs} ms`, hint: "check that the URL names the relayctl server's HTTPS port (listen in server.toml), not another service" }
            : { what: `no connection within ${timeoutMs} ms`, hint: "check the network path and the firewall (a dropped port looks like this)" },
        }),
      timeoutMs,
    );
    const done = (v: Parameters<typeof resolve>[0]) => (clearTimeout(timer), resolve(v));
    socket.once("secureConnect", () => {
      const peer = socket.getPeerCertificate(true) as ChainLink | undefined;
      if (!peer?.raw || peer.raw.length === 0) return done({ failure: { what: "the server sent no certificate", hint: "check that the URL names the relayctl server" } });
      const der = Buffer.from(peer.raw);
      done({ der, pem: toPem("CERTIFICATE", der), pin: sha256Pin(der), chainPem: chainToPem(peer) });
    });
    socket.once("error", (err: NodeJS.ErrnoException) => done({ error: err }));
    socket.once("close", () => done({ failure: { what: "connection closed during the TLS handshake", hint: "check that the URL names the relayctl server's HTTPS port, not another service" } }));
  });
  socket.destroy();
  if ("pin" in outcome) return outcome;
  if ("failure" in outcome) throw failed(outcome.failure);
  const err = outcome.error;
  // Bun says ECONNREFUSED for every failed connect: ask for the real reason.
  const real = !connected && err.code === "ECONNREFUSED" ? await connectFailure(address, port, timeoutMs) : err;
  throw failed(networkReason(real), err);
}

/**
 * Always set explicitly: Bun's fetch otherwise takes its default from
 * NODE_TLS_REJECT_UNAUTHORIZED, and with that set to 0 it skips both the
 * chain check and checkServerIdentity, so a pin would check nothing.
 */
export const VERIFY_PEER = { rejectUnauthorized: true } as const;

/** The `tls` option for fetch: chain verification forced on, plus the pin check when pinned. */
export interface PinnedTlsOptions {
  rejectUnauthorized: true;
  ca: string[];
  checkServerIdentity: (host: string, cert: { raw?: Uint8Array }) => Error | undefined;
}

/**
 * The `tls` option for fetch that accepts exactly the server whose certificate hashes to `pin`;
 * `peerPem` is the leaf, or the leaf plus the chain the server sent (one PEM string).
 */
export async function pinnedTls(pin: string, peerPem: string): Promise<PinnedTlsOptions> {
  const expected = parsePin(pin);
  return {
    ...VERIFY_PEER,
    ...(await pinnedCa(peerPem)),
    // Bun's fetch checks the chain before checkServerIdentity runs, so it must verify: the peer's
    // own certs make self-signed and private-CA chains verify, and the roots keep public-CA chains
    // verifying, since giving `ca` replaces the default trust store. The pin does the real check.
    // Returning undefined skips the hostname check on purpose: with a pin the name does not matter.
    checkServerIdentity(_host, cert) {
      if (!cert?.raw) return new Error("server certificate unavailable for the pin check");
      if (!pinsEqual(sha256Pin(cert.raw), expected)) return new Error(`server certificate does not match the pinned ${expected}`);
      return undefined;
    },
  };
}

/**
 * The trust list for a pinned chain. Bun's fetch verifies the chain before
 * checkServerIdentity runs: the peer's own certificates make self-signed and
 * private-CA chains verify, and the bundled roots (loaded only when needed,
 * ~150 certificates per run) keep public-CA chains that omit their root verifying.
 */
async function pinnedCa(chainPem: string): Promise<{ ca: string[] }> {
  const certs = chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (certs.length && isSelfIssued(certs[certs.length - 1]!)) return { ca: [chainPem] };
  return { ca: [chainPem, ...(await import("node:tls")).rootCertificates] };
}

/** One DER element: its tag and where its whole encoding and its contents end. */
interface Der {
  tag: number;
  start: number;
  contents: number;
  end: number;
}

/** The DER element at `at` in `b`; throws on a truncated or indefinite-length encoding. */
function derAt(b: Uint8Array, at: number): Der {
  if (at + 2 > b.length) throw new Error("truncated DER");
  const tag = b[at]!;
  let len = b[at + 1]!;
  let contents = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || contents + n > b.length) throw new Error("unsupported or truncated DER length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + b[contents + i]!;
    contents += n;
  }
  const end = contents + len;
  if (end > b.length) throw new Error("truncated DER");
  return { tag, start: at, contents, end };
}

/**
 * True when a PEM certificate's issuer and subject are the same name (byte
 * for byte), i.e. it is a root that can anchor the chain by itself. Anything
 * unreadable counts as not self-issued, which only adds the bundled roots.
 */
function isSelfIssued(certPem: string): boolean {
  try {
    const der = firstCertificateDer(certPem);
    const tbs = derAt(der, derAt(der, 0).contents);
    const fields: Der[] = [];
    for (let at = tbs.contents; at < tbs.end && fields.length < 6; at = fields.at(-1)!.end) fields.push(derAt(der, at));
    // TBSCertificate: [0] version (absent in v1), serial, signature algorithm, issuer, validity, subject.
    const [issuer, , subject] = fields[0]?.tag === 0xa0 ? fields.slice(3, 6) : fields.slice(2, 5);
    if (!issuer || !subject || issuer.tag !== 0x30 || subject.tag !== 0x30) return false;
    return Buffer.from(der.subarray(issuer.start, issuer.end)).equals(der.subarray(subject.start, subject.end));
  } catch {
    return false;
  }
}

/** The pin of the first certificate in a PEM chain. */
function pinOfChain(chainPem: string): string | null {
  try {
    return sha256Pin(firstCertificateDer(chainPem));
  } catch {
    return null;
  }
}

/** Fetches the server's chain and checks it against the pin before anything else is sent; returns the chain. */
export async function verifiedPeerChain(url: URL, pin: string): Promise<string> {
  const expected = parsePin(pin);
  const peer = await fetchPeerCertificate(url);
  if (!pinsEqual(peer.pin, expected)) {
    throw new RelayError(`server certificate does not match the pinned ${expected} (got ${peer.pin})`, {
      exitCode: ExitCode.REFUSED,
      hint: "re-enroll with the line printed by `relayctl server add`, or check that you reach the right server",
    });
  }
  return peer.chainPem;
}

/**
 * TLS options for a request to `url`: undefined for normal CA checks, pinned
 * options when `pin` is set. A chain saved at enrollment (`knownChain`) whose
 * pin still matches saves the extra handshake of fetching it first; the pin
 * is checked again inside the real handshake either way.
 */
export async function serverTlsOptions(url: URL, pin?: string, knownChain?: string): Promise<PinnedTlsOptions | undefined> {
  if (pin === undefined || pin === "") return undefined;
  const expected = parsePin(pin);
  if (knownChain && pinsEqual(pinOfChain(knownChain) ?? "", expected)) return pinnedTls(expected, knownChain);
  return pinnedTls(expected, await verifiedPeerChain(url, expected));
}
