import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { chownSync, existsSync, lstatSync, mkdirSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { join } from "node:path";
import { parseCidr } from "../../../src/lib/ip.ts";
import { LiveIndex } from "../../../src/server/live.ts";
import { checkSocketDirOwner, PolicyLookup, policyHandler, postfixGid } from "../../../src/server/lookups/policy.ts";
import { answer, MAX_ATTRIBUTES, MAX_REQUEST_BYTES, ProtocolError, RequestReader } from "../../../src/server/policy/protocol.ts";
import { FakeClock, relayError, removeTempDirs, silenceLogger, tempDir } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
/** A request as Postfix 3.7 sends it (abridged), for a client address. */
const request = (addr: string, extra = ""): string =>
  `request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=${addr}\nclient_name=unknown\nhelo_name=h\nsender=a@example.org\nrecipient=b@example.net\n${extra}\n`;

describe("RequestReader framing", () => {
  test("one request, fed byte by byte, completes exactly at its blank line", () => {
    const r = new RequestReader();
    const bytes = enc(request("192.0.2.7"));
    for (let i = 0; i < bytes.length - 1; i++) expect(r.feed(bytes.subarray(i, i + 1))).toEqual([]);
    const [attrs] = r.feed(bytes.subarray(bytes.length - 1));
    expect(attrs!.get("client_address")).toBe("192.0.2.7");
    expect(attrs!.get("request")).toBe("smtpd_access_policy");
  });

  test("several requests in one chunk, and one split across chunks, come out in order", () => {
    const r = new RequestReader();
    const text = request("192.0.2.1") + request("192.0.2.2") + request("2001:db8::3");
    const cut = text.length - 20;
    const first = r.feed(enc(text.slice(0, cut)));
    expect(first.map((a) => a.get("client_address"))).toEqual(["192.0.2.1", "192.0.2.2"]);
    expect(r.feed(enc(text.slice(cut))).map((a) => a.get("client_address"))).toEqual(["2001:db8::3"]);
  });

  test("a multibyte character split across chunks is decoded whole; values keep '=' signs", () => {
    const r = new RequestReader();
    const bytes = enc(request("192.0.2.1", "sender=ü=x@example.org\n"));
    const at = bytes.indexOf(0xc3) + 1;
    expect(r.feed(bytes.subarray(0, at))).toEqual([]);
    expect(r.feed(bytes.subarray(at))[0]!.get("sender")).toBe("ü=x@example.org");
  });

  test("an attribute is found only by its whole name; a name given twice has its last value", () => {
    const [attrs] = new RequestReader().feed(enc("client_address=192.0.2.1\nrequest=smtpd_access_policy\nx_client_address=192.0.2.9\nclient_address=192.0.2.2\nempty=\n\n"));
    expect(attrs!.get("client_address")).toBe("192.0.2.2");
    expect(attrs!.get("request")).toBe("smtpd_access_policy");
    expect(attrs!.get("address")).toBeUndefined();
    expect(attrs!.get("client")).toBeUndefined();
    expect(attrs!.get("empty")).toBe("");
    const [first] = new RequestReader().feed(enc("request=smtpd_access_policy\nx=1\n\n"));
    expect(first!.get("request")).toBe("smtpd_access_policy");
    expect(first!.get("x")).toBe("1");
  });

  test("CRLF line ends are read as LF, also when a CRLF is split across chunks", () => {
    const r = new RequestReader();
    const text = request("192.0.2.7").replaceAll("\n", "\r\n");
    expect(r.feed(enc(text.slice(0, -1)))).toEqual([]);
    const [attrs] = r.feed(enc(text.slice(-1)));
    expect(attrs!.get("client_address")).toBe("192.0.2.7");
    expect(r.error).toBeNull();
  });

  /** The protocol error a stream ends in, after the requests before it. */
  const failure = (text: string): { requests: number; error: string | undefined } => {
    const r = new RequestReader();
    const requests = r.feed(enc(text)).length;
    return { requests, error: r.error?.message };
  };

  test("garbage, an empty request, too many attributes and an oversized request end the stream", () => {
    expect(failure("hello\n\n").error).toContain("line without name=value");
    expect(failure("=novalue\n\n").error).toContain("line without name=value");
    expect(failure("\n\n").error).toBe("empty request");
    // Garbage is refused at its first line, without waiting for a blank line that may never come.
    expect(failure("GET / HTTP/1.1\r\nHost: x\r\n").error).toContain("line without name=value");
    const many = Array.from({ length: MAX_ATTRIBUTES + 1 }, (_, i) => `a${i}=1`).join("\n") + "\n\n";
    expect(failure(many).error).toBe(`more than ${MAX_ATTRIBUTES} attributes`);
    // The requests before a bad one still count; nothing after it is read.
    expect(failure(request("192.0.2.1") + "junk\n\n" + request("192.0.2.2"))).toEqual({ requests: 1, error: 'line without name=value: "junk"' });
    // An endless request without a blank line is cut off before it grows past the limit.
    const r = new RequestReader();
    for (let i = 0; i < 100 && !r.error; i++) r.feed(enc(`x${i}=${"y".repeat(1000)}\n`));
    expect(r.error?.message).toBe(`request over ${MAX_REQUEST_BYTES} bytes`);
    expect(r.error).toBeInstanceOf(ProtocolError);
  });

  test("the answer is action=... and a blank line", () => {
    expect(answer("OK").toString()).toBe("action=OK\n\n");
    expect(answer("DUNNO").toString()).toBe("action=DUNNO\n\n");
  });
});

describe("policyHandler", () => {
  const clock = new FakeClock();
  const index = new LiveIndex();
  index.put({ client: "a", family: 4, ip: "192.0.2.10", expires_at: clock.now() + 60_000 });
  index.put({ client: "b", family: 6, ip: "2001:db8:1:2::/64", expires_at: clock.now() + 60_000 });
  const handle = policyHandler(index, clock);
  const ask = (addr: string): string => handle(new RequestReader().feed(enc(request(addr)))[0]!);

  test("OK only for an address in a live lease, DUNNO for everything else, never another action", () => {
    expect(ask("192.0.2.10")).toBe("OK");
    expect(ask("2001:db8:1:2:aaaa::1")).toBe("OK");
    for (const other of ["192.0.2.11", "2001:db8:1:3::1", "unknown", "", "192.0.2.10 OK", "::ffff:192.0.2.11"]) expect(ask(other)).toBe("DUNNO");
    // An IPv4-mapped form of a leased address is that address.
    expect(ask("::ffff:192.0.2.10")).toBe("OK");
  });

  test("expiry is decided at the moment of the question", () => {
    const c = new FakeClock();
    const idx = new LiveIndex();
    idx.put({ client: "a", family: 4, ip: "192.0.2.10", expires_at: c.now() + 1000 });
    const h = policyHandler(idx, c);
    const req = new RequestReader().feed(enc(request("192.0.2.10")))[0]!;
    expect(h(req)).toBe("OK");
    c.advance(1000);
    expect(h(req)).toBe("DUNNO");
  });

  test("a request that is not an access-policy request is a protocol error", () => {
    const attrs = new RequestReader().feed(enc("request=junk\nclient_address=192.0.2.10\n\n"))[0]!;
    expect(() => handle(attrs)).toThrow(ProtocolError);
  });
});

describe("PolicyLookup over a real unix socket", () => {
  let lookup: PolicyLookup | undefined;
  afterEach(async () => {
    await lookup?.close();
    lookup = undefined;
  });

  /** Sends text on a fresh connection; resolves with everything read until the server closes or 1 s passes. */
  async function talk(path: string, chunks: string[]): Promise<{ got: string; closed: boolean }> {
    let got = "";
    let closed = false;
    let ending = false;
    const sock = await Bun.connect({
      unix: path,
      socket: {
        data(_s, d) {
          got += Buffer.from(d).toString();
        },
        close() {
          // Only a close by the server counts, not our own end() below.
          if (!ending) closed = true;
        },
      },
    });
    for (const c of chunks) {
      sock.write(c);
      await Bun.sleep(20);
    }
    for (let i = 0; i < 25 && !closed; i++) await Bun.sleep(20);
    ending = true;
    sock.end();
    return { got, closed };
  }

  function start(): string {
    const dir = tempDir("relayctl-policy-");
    const path = join(dir, "relayctl", "policy");
    const clock = new FakeClock();
    const index = new LiveIndex();
    index.put({ client: "a", family: 4, ip: parseCidr("192.0.2.10")!.text.split("/")[0]!, expires_at: clock.now() + 60_000 });
    lookup = new PolicyLookup(path, policyHandler(index, clock), () => index.liveCount(clock.now()));
    lookup.listen();
    return path;
  }

  test("answers several requests on one reused connection; socket 0660 in a 2750 directory", async () => {
    const path = start();
    expect(lstatSync(path).mode & 0o777).toBe(0o660);
    expect(lstatSync(join(path, "..")).mode & 0o7777).toBe(0o2750);
    const r = await talk(path, [request("192.0.2.10"), request("192.0.2.99") + request("192.0.2.10")]);
    expect(r).toEqual({ got: "action=OK\n\naction=DUNNO\n\naction=OK\n\n", closed: false });
    expect(lookup!.answers).toMatchObject({ OK: 2, DUNNO: 1, closed: 0 });
  });

  test("garbage is closed without an answer; answers already due are sent first", async () => {
    const path = start();
    const garbage = await talk(path, ["GET / HTTP/1.1\r\n\r\n"]);
    expect(garbage).toEqual({ got: "", closed: true });
    const mixed = await talk(path, [request("192.0.2.10") + "junk\n\n"]);
    expect(mixed).toEqual({ got: "action=OK\n\n", closed: true });
    const huge = await talk(path, ["a=" + "x".repeat(MAX_REQUEST_BYTES + 10)]);
    expect(huge).toEqual({ got: "", closed: true });
    expect(lookup!.answers.closed).toBe(3);
  });

  test("a client that pipelines without reading its answers is closed, not sent answers cut short", async () => {
    const path = start();
    const sock = createConnection(path);
    // Paused: nothing is read, so the answers fill the socket buffer.
    sock.pause();
    let closed = false;
    sock.on("close", () => (closed = true));
    sock.on("error", () => {});
    sock.write(request("192.0.2.99").repeat(50_000));
    for (let i = 0; i < 100 && !closed; i++) await Bun.sleep(20);
    sock.destroy();
    expect(closed).toBe(true);
    expect(lookup!.answers.closed).toBe(1);
    expect(lookup!.answers.DUNNO).toBeLessThan(50_000);
  });

  test("a removed socket is bound again by check(); close() removes it", async () => {
    const path = start();
    Bun.spawnSync(["rm", path]);
    await lookup!.check();
    expect(lstatSync(path).isSocket()).toBe(true);
    expect((await talk(path, [request("192.0.2.10")])).got).toBe("action=OK\n\n");
    await lookup!.close();
    lookup = undefined;
    expect(() => lstatSync(path)).toThrow();
  });
});

describe("the policy socket directory's owner", () => {
  /** A passwd and group file with root, postfix (uid 102, gid 107) and relayctl (uid 990). */
  function accounts(): { passwd: string; group: string } {
    const dir = tempDir("relayctl-accounts-");
    const passwd = join(dir, "passwd");
    const group = join(dir, "group");
    writeFileSync(passwd, "root:x:0:0:root:/root:/bin/bash\npostfix:x:102:107::/var/spool/postfix:/usr/sbin/nologin\nrelayctl:x:990:990::/var/lib/relayctl:/usr/sbin/nologin\n");
    writeFileSync(group, "root:x:0:\npostfix:x:107:\nrelayctl:x:990:\n");
    return { passwd, group };
  }

  test("root or the server's own user may own it; any other user is refused (exit 2) with the owner and the fix", async () => {
    const { passwd, group } = accounts();
    expect(postfixGid(group)).toBe(107);
    expect(() => checkSocketDirOwner("/var/spool/postfix/relayctl", 0, 990, passwd)).not.toThrow();
    expect(() => checkSocketDirOwner("/var/spool/postfix/relayctl", 990, 990, passwd)).not.toThrow();
    expect(() => checkSocketDirOwner("/run/relayctl", 0, 0, passwd)).not.toThrow();
    const err = await relayError(() => checkSocketDirOwner("/var/spool/postfix/private", 102, 990, passwd));
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe("the policy socket directory /var/spool/postfix/private belongs to postfix (uid 102), not to root or relayctl (the user relayctl runs as), so that user could replace the socket and answer for relayctl");
    expect(err.hint).toBe("set policy_socket to a path in a directory of relayctl's own (the default /var/spool/postfix/relayctl/policy), or, if nothing but relayctl uses /var/spool/postfix/private: chown relayctl:postfix /var/spool/postfix/private && chmod 2750 /var/spool/postfix/private");
    // Root is no exception for the owner: a root server still refuses a directory postfix owns.
    expect((await relayError(() => checkSocketDirOwner("/var/spool/postfix/private", 102, 0, passwd))).message).toContain("belongs to postfix (uid 102), not to root (the user relayctl runs as), so");
    // A uid without a name is named by number.
    expect((await relayError(() => checkSocketDirOwner("/srv/p", 4242, 990, passwd))).message).toContain("/srv/p belongs to uid 4242, not to root or relayctl (");
  });

  // Needs root to hand the directory to another user; as anyone else it fails here rather than passing unseen.
  test("listen() refuses a directory another user owns and binds nothing there", async () => {
    if (process.getuid?.() !== 0) throw new Error("this test must run as root: it chowns a directory to uid 65534");
    const dir = join(tempDir("relayctl-policy-owner-"), "relayctl");
    mkdirSync(dir, { mode: 0o750 });
    chownSync(dir, 65534, 65534);
    const path = join(dir, "policy");
    const clock = new FakeClock();
    const lookup = new PolicyLookup(path, policyHandler(new LiveIndex(), clock), () => 0);
    const err = await relayError(() => lookup.listen());
    expect(err.exitCode).toBe(2);
    expect(err.message).toStartWith(`the policy socket directory ${dir} belongs to `);
    expect(err.message).toContain("(uid 65534), not to root");
    expect(existsSync(path)).toBe(false);
    // The same directory once it is the server's own (root's, here) is accepted.
    chownSync(dir, 0, 0);
    lookup.listen();
    expect(lstatSync(path).isSocket()).toBe(true);
    await lookup.close();
  });
});
