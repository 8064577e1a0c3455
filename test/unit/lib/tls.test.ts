import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RelayError } from "../../../src/lib/errors.ts";
import { certificatePin, fetchPeerCertificate, parsePin, pinnedTls, serverTlsOptions } from "../../../src/lib/pin.ts";
import { certificateExpiry, ensureServerCertificate, generateSelfSigned, keyMatchesCertificate } from "../../../src/lib/tls.ts";

const DAY = 86400_000;

function derOf(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[A-Z ]+-----|\s+/g, ""), "base64");
}

/** A loopback HTTPS server that counts requests, so tests can prove nothing reached it. */
function countingServer(cert: { certPem: string; keyPem: string }) {
  const state = { requests: 0 };
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    tls: { cert: cert.certPem, key: cert.keyPem },
    fetch(req) {
      state.requests++;
      return new Response(`hello ${req.headers.get("authorization") ?? ""}`);
    },
  });
  return { server, state, url: new URL(`https://127.0.0.1:${server.port}/`) };
}

async function expectRelayError(p: Promise<unknown> | (() => unknown), exitCode: number): Promise<RelayError> {
  try {
    if (typeof p === "function") p();
    else await p;
  } catch (err) {
    expect(err).toBeInstanceOf(RelayError);
    expect((err as RelayError).exitCode).toBe(exitCode as never);
    return err as RelayError;
  }
  throw new Error("expected a RelayError");
}

describe("generateSelfSigned", () => {
  const ipCert = generateSelfSigned({ hosts: ["127.0.0.1", "relay.example.org", "::1"] });

  test("parses with X509Certificate and carries SAN, CN and ~10y validity", () => {
    const x = new X509Certificate(ipCert.certPem);
    expect(x.subject).toBe("CN=127.0.0.1");
    expect(x.issuer).toBe("CN=127.0.0.1");
    expect(x.subjectAltName).toBe("IP Address:127.0.0.1, DNS:relay.example.org, IP Address:0:0:0:0:0:0:0:1");
    expect(x.ca).toBe(false);
    const from = new Date(x.validFrom).getTime();
    const to = certificateExpiry(ipCert.certPem).getTime();
    expect(Math.abs(from - (Date.now() - 3600_000))).toBeLessThan(120_000);
    expect(Math.abs(to - (Date.now() + 3650 * DAY))).toBeLessThan(120_000);
    expect(x.verify(x.publicKey)).toBe(true);
    expect(x.checkHost("relay.example.org")).toBe("relay.example.org");
    expect(x.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(keyMatchesCertificate(ipCert.certPem, ipCert.keyPem)).toBe(true);
  });

  test("openssl reads the certificate and verifies it against itself", () => {
    const dir = mkdtempSync(join(tmpdir(), "relayctl-tls-"));
    try {
      const path = join(dir, "c.pem");
      writeFileSync(path, ipCert.certPem);
      const text = execFileSync("openssl", ["x509", "-noout", "-text", "-in", path], { encoding: "utf8" });
      expect(text).toContain("Version: 3 (0x2)");
      expect(text).toContain("ecdsa-with-SHA256");
      expect(text).toContain("prime256v1");
      expect(text).toContain("CA:FALSE");
      expect(text).toContain("TLS Web Server Authentication");
      expect(text).toContain("Digital Signature");
      const verify = execFileSync("openssl", ["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", path, path], { encoding: "utf8" });
      expect(verify.trim()).toBe(`${path}: OK`);
      const der = execFileSync("openssl", ["x509", "-outform", "der", "-in", path]);
      expect(certificatePin(ipCert.certPem)).toBe(`sha256:${createHash("sha256").update(der).digest("hex")}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("serial is positive and 16 bytes; dates past 2049 use GeneralizedTime", () => {
    const long = generateSelfSigned({ hosts: ["localhost"], days: 365 * 40 });
    const x = new X509Certificate(long.certPem);
    expect(x.serialNumber).toMatch(/^[4-7][0-9A-F]{31}$/);
    expect(certificateExpiry(long.certPem).getUTCFullYear()).toBeGreaterThanOrEqual(2050);
    const short = generateSelfSigned({ hosts: ["localhost"], days: 1 });
    expect(certificateExpiry(short.certPem).getTime() - Date.now()).toBeLessThan(DAY + 60_000);
  });

  test("pin is sha256 of the DER, lowercase hex", () => {
    const pin = certificatePin(ipCert.certPem);
    expect(pin).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(pin).toBe(`sha256:${new X509Certificate(ipCert.certPem).fingerprint256.replace(/:/g, "").toLowerCase()}`);
    expect(pin).toBe(`sha256:${createHash("sha256").update(derOf(ipCert.certPem)).digest("hex")}`);
  });

  test("refuses hosts that are neither names nor addresses", async () => {
    await expectRelayError(() => generateSelfSigned({ hosts: ["bad host"] }), 2);
    await expectRelayError(() => generateSelfSigned({ hosts: ["a/b"] }), 2);
  });

  test("keyMatchesCertificate tells pairs apart", () => {
    const other = generateSelfSigned({ hosts: ["localhost"] });
    expect(keyMatchesCertificate(ipCert.certPem, other.keyPem)).toBe(false);
    expect(keyMatchesCertificate("garbage", other.keyPem)).toBe(false);
  });
});

describe("parsePin", () => {
  const hex = "ab".repeat(32);
  test("accepts and normalises", () => {
    expect(parsePin(`sha256:${hex}`)).toBe(`sha256:${hex}`);
    expect(parsePin(`SHA256:${hex.toUpperCase()}`)).toBe(`sha256:${hex}`);
    expect(parsePin(`  sha256:${hex}\n`)).toBe(`sha256:${hex}`);
    const colons = Array(32).fill("AB").join(":");
    expect(parsePin(`sha256:${colons}`)).toBe(`sha256:${hex}`);
    expect(parsePin(`sha256 Fingerprint=${colons}`)).toBe(`sha256:${hex}`);
  });
  test("rejects with exit 2", async () => {
    for (const bad of ["", hex, `sha1:${hex}`, `sha256:${hex.slice(2)}`, `sha256:${hex}00`, `sha256:${"zz".repeat(32)}`, `sha256:${Array(32).fill("ab").join("::")}`]) {
      await expectRelayError(() => parsePin(bad), 2);
    }
  });
});

describe("ensureServerCertificate", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "relayctl-tls-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("creates the pair once with tight modes, then reuses it", async () => {
    const stateDir = join(dir, "state");
    const first = await ensureServerCertificate({ stateDir, host: "relay.example.org" });
    expect(first.generated).toBe(true);
    expect(first.certPath).toBe(join(stateDir, "tls", "cert.pem"));
    expect(first.keyPath).toBe(join(stateDir, "tls", "key.pem"));
    expect(statSync(first.keyPath).mode & 0o777).toBe(0o600);
    expect(statSync(first.certPath).mode & 0o777).toBe(0o644);
    expect(statSync(join(stateDir, "tls")).mode & 0o777).toBe(0o700);
    expect(readFileSync(first.certPath, "utf8")).toBe(first.certPem);
    expect(new X509Certificate(first.certPem).subjectAltName).toBe("DNS:relay.example.org");

    const second = await ensureServerCertificate({ stateDir, host: "relay.example.org" });
    expect(second.generated).toBe(false);
    expect(second.certPem).toBe(first.certPem);
    expect(second.keyPem).toBe(first.keyPem);
  });

  test.skipIf(process.getuid?.() !== 0)("as root: tls/ and its files belong to state_dir's owner, so the service user can start", async () => {
    const stateDir = join(dir, "owned");
    mkdirSync(stateDir, { mode: 0o700 });
    chownSync(stateDir, 64_999, 64_998);
    const c = await ensureServerCertificate({ stateDir, host: "relay.example.org" });
    for (const p of [join(stateDir, "tls"), c.keyPath, c.certPath]) {
      const st = statSync(p);
      expect({ p, uid: st.uid, gid: st.gid }).toEqual({ p, uid: 64_999, gid: 64_998 });
    }
    expect(readdirSync(join(stateDir, "tls")).sort()).toEqual(["cert.pem", "key.pem"]);
  });

  test("a symlink in place of tls/ is refused with exit 2, and nothing is written where it points", async () => {
    const stateDir = join(dir, "planted");
    const elsewhere = join(dir, "elsewhere");
    mkdirSync(stateDir);
    mkdirSync(elsewhere);
    symlinkSync(elsewhere, join(stateDir, "tls"));
    const err = await expectRelayError(ensureServerCertificate({ stateDir, host: "relay.example.org" }), 2);
    expect(err.message).toMatch(new RegExp(`^cannot write the TLS certificate to ${join(stateDir, "tls")} \\((ELOOP|ENOTDIR)\\)$`));
    expect(err.hint).toContain("follows no links there: remove it");
    expect(readdirSync(elsewhere)).toEqual([]);
  });

  test("empty host means localhost; IP hosts become iPAddress", async () => {
    const a = await ensureServerCertificate({ stateDir: join(dir, "empty"), host: "" });
    expect(new X509Certificate(a.certPem).subjectAltName).toBe("DNS:localhost");
    const b = await ensureServerCertificate({ stateDir: join(dir, "ip"), host: "127.0.0.1" });
    expect(new X509Certificate(b.certPem).subjectAltName).toBe("IP Address:127.0.0.1");
  });

  test("configured files: read, mismatch and unreadable are usage errors naming the file", async () => {
    const a = generateSelfSigned({ hosts: ["a.example.org"] });
    const b = generateSelfSigned({ hosts: ["b.example.org"] });
    const certPath = join(dir, "conf-cert.pem");
    const keyPath = join(dir, "conf-key.pem");
    writeFileSync(certPath, a.certPem);
    writeFileSync(keyPath, a.keyPem);
    const ok = await ensureServerCertificate({ stateDir: join(dir, "unused"), host: "x", certPath, keyPath });
    expect(ok).toEqual({ certPem: a.certPem, keyPem: a.keyPem, certPath, keyPath, generated: false });

    writeFileSync(keyPath, b.keyPem);
    const mismatch = await expectRelayError(ensureServerCertificate({ stateDir: dir, host: "x", certPath, keyPath }), 2);
    expect(mismatch.message).toContain(keyPath);
    expect(mismatch.message).toContain("does not belong");

    const missing = await expectRelayError(ensureServerCertificate({ stateDir: dir, host: "x", certPath: join(dir, "nope.pem"), keyPath }), 2);
    expect(missing.message).toContain(join(dir, "nope.pem"));

    writeFileSync(certPath, "not a certificate");
    const garbage = await expectRelayError(ensureServerCertificate({ stateDir: dir, host: "x", certPath, keyPath }), 2);
    expect(garbage.message).toContain(certPath);

    await expectRelayError(ensureServerCertificate({ stateDir: dir, host: "x", certPath }), 2);
  });

  test("a generated pair whose key was swapped is detected", async () => {
    const stateDir = join(dir, "swapped");
    const first = await ensureServerCertificate({ stateDir, host: "localhost" });
    chmodSync(first.keyPath, 0o600);
    writeFileSync(first.keyPath, generateSelfSigned({ hosts: ["localhost"] }).keyPem);
    await expectRelayError(ensureServerCertificate({ stateDir, host: "localhost" }), 2);
  });
});

describe("pinned TLS against real loopback servers", () => {
  // The cert names a host the URL does not use: with a pin, names must not matter.
  const certA = generateSelfSigned({ hosts: ["mail.example.org"] });
  const certB = generateSelfSigned({ hosts: ["mail.example.org"] });
  const pinA = certificatePin(certA.certPem);
  let a: ReturnType<typeof countingServer>;
  let b: ReturnType<typeof countingServer>;
  beforeAll(() => {
    a = countingServer(certA);
    b = countingServer(certB);
  });
  afterAll(() => {
    a.server.stop(true);
    b.server.stop(true);
  });

  test("Bun.serve accepts the generated pair and fetchPeerCertificate reads it without a request", async () => {
    const before = a.state.requests;
    const peer = await fetchPeerCertificate(a.url);
    expect(peer.pin).toBe(pinA);
    expect(peer.der.equals(derOf(certA.certPem))).toBe(true);
    expect(certificatePin(peer.pem)).toBe(pinA);
    expect(peer.chainPem).toBe(peer.pem);
    expect(a.state.requests).toBe(before);
  });

  test("correct pin: fetch succeeds although the URL host is not in the SAN", async () => {
    const tls = await serverTlsOptions(a.url, pinA.toUpperCase().replace("SHA256", "sha256"));
    expect(tls).toBeDefined();
    const res = await fetch(a.url, { headers: { authorization: "Bearer t" }, tls } as RequestInit);
    expect(await res.text()).toBe("hello Bearer t");
  });

  test("wrong pin: REFUSED before any request reaches the server", async () => {
    const before = a.state.requests;
    const err = await expectRelayError(serverTlsOptions(a.url, certificatePin(certB.certPem)), 3);
    expect(err.message).toContain(`does not match the pinned ${certificatePin(certB.certPem)}`);
    expect(err.hint).toContain("relayctl server add");
    expect(a.state.requests).toBe(before);
  });

  test("a different server behind the same address after the pin check is refused by checkServerIdentity", async () => {
    const tls = await pinnedTls(pinA, certA.certPem);
    // Same name in the cert, but a different key: only the pin tells them apart.
    await expect(fetch(b.url, { headers: { authorization: "Bearer t" }, tls } as RequestInit)).rejects.toThrow();
    // Even trusting B's cert for the chain, the pin still refuses it.
    await expect(fetch(b.url, { tls: await pinnedTls(pinA, certB.certPem) } as RequestInit)).rejects.toThrow(`does not match the pinned ${pinA}`);
    expect(b.state.requests).toBe(0);
  });

  test("no pin: normal CA verification refuses the self-signed cert", async () => {
    expect(await serverTlsOptions(a.url)).toBeUndefined();
    expect(await serverTlsOptions(a.url, "")).toBeUndefined();
    const before = a.state.requests;
    await expect(fetch(a.url)).rejects.toThrow();
    expect(a.state.requests).toBe(before);
  });

  test("IPv4 and bracketed IPv6 URLs; closed ports fail with exit 1", async () => {
    let v6: ReturnType<typeof Bun.serve> | undefined;
    try {
      v6 = Bun.serve({ port: 0, hostname: "::1", tls: { cert: certA.certPem, key: certA.keyPem }, fetch: () => new Response("v6") });
    } catch {
      // No IPv6 loopback in this sandbox: nothing to test.
    }
    if (v6) {
      const url = new URL(`https://[::1]:${v6.port}/`);
      const tls = await serverTlsOptions(url, pinA);
      expect(await (await fetch(url, { tls } as RequestInit)).text()).toBe("v6");
      v6.stop(true);
    }
    // Port 1 on loopback: nothing listens there in a test environment.
    const err = await expectRelayError(fetchPeerCertificate(new URL("https://127.0.0.1:1/"), 2000), 1);
    expect(err.hint).toContain("firewall");
  });

  test("a pinned leaf from a private CA works when the server sends its chain", async () => {
    const dir = mkdtempSync(join(tmpdir(), "relayctl-tls-"));
    const sh = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
    try {
      const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
      sh("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test ca", "-days", "2");
      sh("req", ...ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=leaf.example.org");
      writeFileSync(join(dir, "ext.cnf"), "subjectAltName=DNS:leaf.example.org\nextendedKeyUsage=serverAuth\n");
      sh("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "1", "-extfile", "ext.cnf");
      const leaf = readFileSync(join(dir, "leaf.pem"), "utf8");
      const chain = leaf + readFileSync(join(dir, "ca.pem"), "utf8");
      const s = countingServer({ certPem: chain, keyPem: readFileSync(join(dir, "leaf.key"), "utf8") });
      try {
        expect((await fetchPeerCertificate(s.url)).chainPem.match(/BEGIN CERTIFICATE/g)?.length).toBe(2);
        const tls = await serverTlsOptions(s.url, certificatePin(chain));
        // The chain ends in its own root, so it is the whole trust list: no bundled roots loaded.
        expect(tls?.ca).toEqual([chain]);
        expect(await (await fetch(s.url, { tls } as RequestInit)).text()).toBe("hello ");
        // Without its root the chain needs the bundled roots (which do not hold this CA: refused).
        const leafOnly = await pinnedTls(certificatePin(leaf), leaf);
        expect(leafOnly.ca.length).toBeGreaterThan(100);
        expect(leafOnly.ca[0]).toBe(leaf);
        await expect(fetch(s.url, { tls: leafOnly } as RequestInit)).rejects.toThrow();
      } finally {
        s.server.stop(true);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a self-signed certificate is its own trust list; an unreadable top certificate adds the bundled roots", async () => {
    expect((await pinnedTls(pinA, certA.certPem)).ca).toEqual([certA.certPem]);
    // Cut inside the TBSCertificate: the issuer and subject cannot be read, so no shortcut is taken.
    const der = derOf(certA.certPem);
    const cut = `-----BEGIN CERTIFICATE-----\n${der.subarray(0, 40).toString("base64")}\n-----END CERTIFICATE-----\n`;
    const ca = (await pinnedTls(pinA, certA.certPem + cut)).ca;
    expect(ca.slice(0, 1)).toEqual([certA.certPem + cut]);
    expect(ca.length).toBeGreaterThan(100);
  });

  test("plain http with a pin is a usage error", async () => {
    await expectRelayError(serverTlsOptions(new URL("http://127.0.0.1:1/"), pinA), 2);
  });
});
