import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  timingSafeEqual,
  X509Certificate,
  type KeyObject,
} from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as nodeTls from "node:tls";
import { domainToASCII } from "node:url";
import { ExitCode, RelayError, usageError } from "./errors.ts";
import { makeOwnedDir, ownerFor, writeFileAtomic } from "./fsutil.ts";
import { parseIp } from "./ip.ts";

// ---------------------------------------------------------------------------
// Minimal DER encoder: just the types an X.509 v3 certificate needs.
// ---------------------------------------------------------------------------

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function tlv(tag: number, content: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([tag]), derLength(content.length), content]);
}

const seq = (...items: Uint8Array[]): Buffer => tlv(0x30, Buffer.concat(items));
const set = (...items: Uint8Array[]): Buffer => tlv(0x31, Buffer.concat(items));
const octetString = (b: Uint8Array): Buffer => tlv(0x04, b);
const utf8String = (s: string): Buffer => tlv(0x0c, Buffer.from(s, "utf8"));
const boolean = (v: boolean): Buffer => tlv(0x01, Buffer.from([v ? 0xff : 0x00]));
// Unused-bits count first; callers pass whole bytes except for KeyUsage.
const bitString = (b: Uint8Array, unusedBits = 0): Buffer => tlv(0x03, Buffer.concat([Buffer.from([unusedBits]), b]));
const explicit = (n: number, inner: Uint8Array): Buffer => tlv(0xa0 | n, inner);
const implicit = (n: number, content: Uint8Array): Buffer => tlv(0x80 | n, content);

/** Encodes an unsigned big-endian magnitude as a DER INTEGER (minimal, non-negative). */
function integer(magnitude: Uint8Array | number): Buffer {
  let b = typeof magnitude === "number" ? Buffer.from([magnitude]) : Buffer.from(magnitude);
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  b = b.subarray(i);
  // A set top bit would read as negative, so DER requires a leading zero byte.
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return tlv(0x02, b);
}

function oid(dotted: string): Buffer {
  const arcs = dotted.split(".").map(Number);
  const out: number[] = [40 * arcs[0]! + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    const chunk: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift((v & 0x7f) | 0x80);
    out.push(...chunk);
  }
  return tlv(0x06, Buffer.from(out));
}

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 on, always UTC with seconds. */
function x509Time(d: Date): Buffer {
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  const y = d.getUTCFullYear();
  if (y >= 1950 && y < 2050) return tlv(0x17, Buffer.from(`${p(y % 100)}${rest}`, "ascii"));
  return tlv(0x18, Buffer.from(`${p(y, 4)}${rest}`, "ascii"));
}

const OID = {
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  commonName: "2.5.4.3",
  subjectKeyIdentifier: "2.5.29.14",
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
};

function extension(id: string, critical: boolean, value: Uint8Array): Buffer {
  return critical ? seq(oid(id), boolean(true), octetString(value)) : seq(oid(id), octetString(value));
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

type SanEntry = { kind: "dns"; value: string } | { kind: "ip"; bytes: Uint8Array; text: string };

function sanEntry(host: string): SanEntry {
  // Hosts arrive from URLs and listen addresses, so tolerate [v6] and zone ids.
  const bare = host.trim().replace(/^\[(.*)\]$/, "$1").replace(/%.*$/, "");
  const ip = parseIp(bare);
  if (ip) return { kind: "ip", bytes: ip.bytes, text: ip.text };
  // dNSName is IA5String: internationalised names must go in as punycode.
  // domainToASCII parses like a URL and would cut "a/b" to "a", so ASCII input bypasses it.
  const name = bare.replace(/\.$/, "");
  const ascii = /^[\x00-\x7f]*$/.test(name) ? name : domainToASCII(name);
  if (!ascii || !/^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*$/i.test(ascii) || ascii.length > 253) {
    throw usageError(`"${host}" is neither a host name nor an IP address`, "use the name or address clients connect to");
  }
  return { kind: "dns", value: ascii.toLowerCase() };
}

/** Creates an ECDSA P-256 key and a self-signed certificate naming `hosts` (DNS names and/or IPs). */
export function generateSelfSigned(opts: { hosts: string[]; days?: number }): { certPem: string; keyPem: string } {
  const days = opts.days ?? 3650;
  if (!Number.isInteger(days) || days <= 0) throw usageError(`certificate validity of ${days} days is not a positive whole number`);
  const sans = (opts.hosts.length ? opts.hosts : ["localhost"]).map(sanEntry);
  const first = sans[0]!;
  const firstName = first.kind === "dns" ? first.value : first.text;
  // X.520 caps commonName at 64 characters; the SAN carries the real names anyway.
  const cn = firstName.length <= 64 ? firstName : "relayctl";

  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const spki = publicKey.export({ type: "spki", format: "der" });

  const serial = randomBytes(16);
  // Positive and exactly 16 bytes: clear the sign bit, set the next one so it never shrinks.
  serial[0] = (serial[0]! & 0x7f) | 0x40;

  // Skew tolerance: a client whose clock is a little behind must not see "not yet valid".
  const notBefore = new Date(Math.floor(Date.now() / 1000) * 1000 - 3600_000);
  const notAfter = new Date(notBefore.getTime() + 3600_000 + days * 86400_000);

  const name = seq(set(seq(oid(OID.commonName), utf8String(cn))));
  const algorithm = seq(oid(OID.ecdsaWithSha256));

  const generalNames = sans.map((s) => (s.kind === "dns" ? implicit(2, Buffer.from(s.value, "ascii")) : implicit(7, s.bytes)));
  // The key identifier is the SHA-1 of the public key bits (RFC 5280 4.2.1.2 method 1);
  // the last 65 bytes of a P-256 SPKI are exactly that uncompressed point.
  const ski = createHash("sha1").update(spki.subarray(spki.length - 65)).digest();
  const extensions = [
    // cA=FALSE (empty SEQUENCE: DER omits the default). Bun's fetch, Node, curl, Python and
    // `openssl verify -x509_strict` all accept this self-signed leaf as its own trust anchor,
    // so the cert gets no power to sign others.
    extension(OID.basicConstraints, true, seq()),
    // digitalSignature (bit 0) only, which ECDHE handshakes need: 0x80 with seven unused bits.
    extension(OID.keyUsage, true, bitString(Buffer.from([0x80]), 7)),
    extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth))),
    extension(OID.subjectAltName, false, seq(...generalNames)),
    extension(OID.subjectKeyIdentifier, false, octetString(ski)),
  ];

  const tbs = seq(
    explicit(0, integer(2)), // v3, needed for extensions
    integer(serial),
    algorithm,
    name,
    seq(x509Time(notBefore), x509Time(notAfter)),
    name,
    spki,
    explicit(3, seq(...extensions)),
  );
  const signature = sign("sha256", tbs, { key: privateKey, dsaEncoding: "der" });
  const der = seq(tbs, algorithm, bitString(signature));

  return {
    certPem: toPem("CERTIFICATE", der),
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
}

function toPem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** DER of the first certificate in a PEM bundle: the leaf, which is what a pin names. */
function firstCertificateDer(certPem: string): Buffer {
  const m = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/.exec(certPem);
  if (!m) throw usageError("no PEM certificate found", "expected a -----BEGIN CERTIFICATE----- block");
  return Buffer.from(m[1]!.replace(/\s+/g, ""), "base64");
}

function sha256Pin(der: Uint8Array): string {
  return `sha256:${createHash("sha256").update(der).digest("hex")}`;
}

/** Pin of a certificate: `sha256:` + hex SHA-256 of its DER, as `openssl x509 -outform der | sha256sum` prints. */
export function certificatePin(certPem: string): string {
  return sha256Pin(firstCertificateDer(certPem));
}

/** When the (first) certificate in `certPem` stops being valid. */
export function certificateExpiry(certPem: string): Date {
  const x = new X509Certificate(firstCertificateDer(certPem));
  const d = (x as X509Certificate & { validToDate?: Date }).validToDate ?? new Date(x.validTo);
  if (Number.isNaN(d.getTime())) throw new RelayError(`cannot read the expiry date "${x.validTo}"`);
  return d;
}

/** True when `keyPem` is the private key belonging to the (first) certificate in `certPem`. */
export function keyMatchesCertificate(certPem: string, keyPem: string): boolean {
  try {
    return new X509Certificate(firstCertificateDer(certPem)).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    throw new RelayError(`cannot read TLS ${what} ${path} (${code})`, {
      exitCode: ExitCode.USAGE,
      hint: "check the path in the server configuration and that relayctl may read it",
      cause: err,
    });
  }
}

function checkPair(certPem: string, keyPem: string, certPath: string, keyPath: string): void {
  try {
    new X509Certificate(firstCertificateDer(certPem));
  } catch (err) {
    throw new RelayError(`${certPath} does not hold a PEM certificate`, { exitCode: ExitCode.USAGE, hint: "expected a -----BEGIN CERTIFICATE----- block", cause: err });
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new RelayError(`${keyPath} does not hold a readable private key`, { exitCode: ExitCode.USAGE, hint: "expected an unencrypted PEM private key", cause: err });
  }
  if (!new X509Certificate(firstCertificateDer(certPem)).checkPrivateKey(key)) {
    throw usageError(`the key in ${keyPath} does not belong to the certificate in ${certPath}`, "configure the matching key and certificate pair");
  }
}

export interface ServerCertificate {
  certPem: string;
  keyPem: string;
  certPath: string;
  keyPath: string;
  generated: boolean;
}

/** Loads the configured certificate and key, or creates a self-signed pair under `stateDir/tls` once and reuses it. */
export async function ensureServerCertificate(opts: {
  stateDir: string;
  host: string;
  certPath?: string;
  keyPath?: string;
}): Promise<ServerCertificate> {
  if (opts.certPath || opts.keyPath) {
    if (!opts.certPath || !opts.keyPath) {
      throw usageError(`TLS ${opts.certPath ? "key" : "certificate"} path is missing`, "set both the certificate and the key path, or neither to use a generated certificate");
    }
    const certPem = readPem(opts.certPath, "certificate");
    const keyPem = readPem(opts.keyPath, "key");
    checkPair(certPem, keyPem, opts.certPath, opts.keyPath);
    return { certPem, keyPem, certPath: opts.certPath, keyPath: opts.keyPath, generated: false };
  }

  const dir = join(opts.stateDir, "tls");
  const certPath = join(dir, "cert.pem");
  const keyPath = join(dir, "key.pem");

  // The cert is written last, so its presence marks a complete pair. A key without a cert
  // is a crash leftover nobody can have pinned and is simply replaced.
  if (existsSync(certPath)) {
    if (!existsSync(keyPath)) {
      throw usageError(`${keyPath} is missing but ${certPath} exists`, `restore the key, or delete ${certPath} to generate a new certificate (clients must then re-enroll)`);
    }
    const certPem = readPem(certPath, "certificate");
    const keyPem = readPem(keyPath, "key");
    checkPair(certPem, keyPem, certPath, keyPath);
    return { certPem, keyPem, certPath, keyPath, generated: false };
  }

  const { certPem, keyPem } = generateSelfSigned({ hosts: [opts.host.trim() || "localhost"] });
  try {
    mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
    // Root running `server add` before the first start must not leave a tls/
    // the service user (state_dir's owner) cannot open: it would never start.
    const owner = ownerFor(opts.stateDir);
    makeOwnedDir(dir, 0o700, owner);
    writeFileAtomic(keyPath, keyPem, { mode: 0o600, mkdirMode: 0o700, owner });
    writeFileAtomic(certPath, certPem, { mode: 0o644, mkdirMode: 0o700, owner });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    // O_NOFOLLOW on a symlink fails with ELOOP, or ENOTDIR when a directory was asked for.
    const planted = code === "ELOOP" || code === "ENOTDIR";
    throw new RelayError(`cannot write the TLS certificate to ${dir} (${code})`, {
      exitCode: ExitCode.USAGE,
      hint: planted ? `${dir} or a file in it is a symbolic link or not a directory, and relayctl follows no links there: remove it` : "check that the state directory is writable by relayctl",
      cause: err,
    });
  }
  return { certPem, keyPem, certPath, keyPath, generated: true };
}

// ---------------------------------------------------------------------------
// Client side: server identity
// ---------------------------------------------------------------------------

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
  return x.length === y.length && timingSafeEqual(x, y);
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

/** Reads the server's leaf certificate over a TLS handshake that sends no application data. */
export function fetchPeerCertificate(url: URL, timeoutMs = 10000): Promise<PeerCertificate> {
  const { host, port } = urlHostPort(url);
  const failed = (why: string, cause?: unknown) =>
    new RelayError(`cannot read the TLS certificate of ${url.host}: ${why}`, {
      exitCode: ExitCode.FAILED,
      hint: "check the server URL, that the server is running, and that no firewall blocks the port",
      cause,
    });
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err: RelayError | null, value?: PeerCertificate) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value!);
    };
    const socket = nodeTls.connect({
      host,
      port,
      // SNI must be a name; sending an IP there is invalid (RFC 6066 3).
      ...(parseIp(host) ? {} : { servername: host }),
      // Safe only because nothing is written on this socket: identity is judged from the pin.
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => finish(failed(`no TLS handshake within ${timeoutMs} ms`)), timeoutMs);
    socket.once("secureConnect", () => {
      const peer = socket.getPeerCertificate(true) as ChainLink | undefined;
      if (!peer?.raw || peer.raw.length === 0) return finish(failed("the server sent no certificate"));
      const der = Buffer.from(peer.raw);
      finish(null, { der, pem: toPem("CERTIFICATE", der), pin: sha256Pin(der), chainPem: chainToPem(peer) });
    });
    socket.once("error", (err: NodeJS.ErrnoException) => finish(failed(err.code ?? err.message, err)));
    socket.once("close", () => finish(failed("connection closed during the TLS handshake")));
  });
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
export function pinnedTls(pin: string, peerPem: string): PinnedTlsOptions {
  const expected = parsePin(pin);
  return {
    ...VERIFY_PEER,
    ...pinnedCa(peerPem),
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
 * private-CA chains verify, and the system roots (parsed only when needed,
 * ~150 certificates per run) keep public-CA chains that omit their root verifying.
 */
function pinnedCa(chainPem: string): { ca: string[] } {
  const certs = chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const top = certs.length ? new X509Certificate(certs[certs.length - 1]!) : null;
  const selfContained = top !== null && top.issuer === top.subject;
  return { ca: selfContained ? [chainPem] : [chainPem, ...nodeTls.rootCertificates] };
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
