// Certificates for the server: a self-signed pair in hand-written DER, or a
// configured one checked. The client's side (pins, pinned fetch) is pin.ts.
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { domainToASCII } from "node:url";
import { ExitCode, RelayError, usageError } from "./errors.ts";
import { makeOwnedDir, ownerFor, writeFileAtomic } from "./fsutil.ts";
import { parseIp } from "./ip.ts";
import { firstCertificateDer, toPem } from "./pin.ts";

export { certificatePin, fetchPeerCertificate, parsePin } from "./pin.ts";

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
