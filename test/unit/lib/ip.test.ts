import { describe, expect, test } from "bun:test";
import { isIPv6 } from "node:net";
import { cidrContains, formatV6, parseCidr, parseIp, sourceKey, specialAddressKind, type Ip } from "../../../src/lib/ip.ts";

function ip(s: string): Ip {
  const r = parseIp(s);
  if (!r) throw new Error(`test setup: ${s} should parse`);
  return r;
}

function v6bytes(words: number[]): Uint8Array {
  const b = new Uint8Array(16);
  words.forEach((w, i) => {
    b[i * 2] = w >> 8;
    b[i * 2 + 1] = w & 0xff;
  });
  return b;
}

// Expected outputs produced by glibc: python3 -c "import socket; print(socket.inet_ntop(
// socket.AF_INET6, socket.inet_pton(socket.AF_INET6, INPUT)))". This is the form
// Postfix puts in client_address, so the map must use exactly these strings.
const GLIBC_NTOP: Array<[string, string]> = [
  ["::", "::"],
  ["::1", "::1"],
  ["1::", "1::"],
  ["1:0:0:0:0:0:0:1", "1::1"],
  ["1:0:1:0:0:1:0:0", "1:0:1::1:0:0"], // equal runs of 2: leftmost wins
  ["1:0:0:1:0:0:1:1", "1::1:0:0:1:1"], // tie again, leftmost
  ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
  ["2001:DB8::A", "2001:db8::a"], // lowercase
  ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // a single zero group is not compressed
  ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"], // leading zeros dropped
  ["fe80::", "fe80::"],
  ["::1.2.3.4", "::1.2.3.4"], // IPv4-compatible keeps dotted form
  ["::0.0.0.2", "::2"],
  ["::2", "::2"],
  ["::ffff:0:1.2.3.4", "::ffff:0:102:304"],
  ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
  ["::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"],
  ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
  ["0:0:0:0:0:0:0:0", "::"],
  ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ["ff02::1", "ff02::1"],
  ["2001:db8:0:0:0:0:2:1", "2001:db8::2:1"],
  ["2001:db8::1:0:0:1", "2001:db8::1:0:0:1"],
  ["0:0:1::", "0:0:1::"], // longest run (5 at the end) beats the earlier run of 2
  ["0:1:0:0:0:1:0:0", "0:1::1:0:0"], // longest run first, not leftmost
  ["::fffe:1.2.3.4", "::fffe:102:304"],
  ["::1:0:0:0", "::1:0:0:0"],
  ["1:0:0:2:0:0:3:4", "1::2:0:0:3:4"],
  ["0:0:0:0:0:1:0:0", "::1:0:0"],
  ["64:ff9b::192.0.2.33", "64:ff9b::c000:221"],
  ["::0.1.0.0", "::0.1.0.0"],
];

// glibc prints IPv4-mapped addresses as ::ffff:a.b.c.d; Postfix reports such a
// client as plain a.b.c.d, which is what parseIp must return.
const MAPPED: Array<[string, string]> = [
  ["::ffff:1.2.3.4", "1.2.3.4"],
  ["0:0:0:0:0:ffff:102:304", "1.2.3.4"],
  ["::FFFF:C000:0221", "192.0.2.33"],
  ["::ffff:ffff:ffff", "255.255.255.255"],
  ["::ffff:0.0.0.0", "0.0.0.0"],
];

describe("parseIp: IPv6 text is glibc inet_ntop's", () => {
  for (const [input, expected] of GLIBC_NTOP) {
    test(`${input} -> ${expected}`, () => {
      const r = ip(input);
      expect(r.family).toBe(6);
      expect(r.text).toBe(expected);
      expect(r.bytes.length).toBe(16);
      // The output parses back to the same address and is a fixed point.
      expect(ip(r.text).text).toBe(expected);
      expect(Array.from(ip(r.text).bytes)).toEqual(Array.from(r.bytes));
    });
  }

  for (const [input, expected] of MAPPED) {
    test(`IPv4-mapped ${input} -> ${expected}`, () => {
      const r = ip(input);
      expect(r.family).toBe(4);
      expect(r.text).toBe(expected);
      expect(Array.from(r.bytes)).toEqual(expected.split(".").map(Number));
    });
  }

  test("bytes are parsed in network order", () => {
    expect(Array.from(ip("2001:db8::ff00:42:8329").bytes)).toEqual([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0xff, 0x00, 0x00, 0x42, 0x83, 0x29]);
    expect(Array.from(ip("::1.2.3.4").bytes.slice(12))).toEqual([1, 2, 3, 4]);
  });
});

describe("formatV6", () => {
  test("matches glibc for raw byte patterns", () => {
    expect(formatV6(v6bytes([0, 0, 0, 0, 0, 0, 0, 0]))).toBe("::");
    expect(formatV6(v6bytes([1, 0, 1, 1, 1, 1, 1, 1]))).toBe("1:0:1:1:1:1:1:1");
    expect(formatV6(v6bytes([0, 1, 1, 1, 1, 1, 1, 1]))).toBe("0:1:1:1:1:1:1:1");
    expect(formatV6(v6bytes([1, 1, 1, 1, 1, 1, 1, 0]))).toBe("1:1:1:1:1:1:1:0");
    expect(formatV6(v6bytes([0, 0, 1, 1, 1, 1, 1, 1]))).toBe("::1:1:1:1:1:1");
    expect(formatV6(v6bytes([1, 1, 1, 1, 1, 1, 0, 0]))).toBe("1:1:1:1:1:1::");
    expect(formatV6(v6bytes([0xabcd, 0, 0, 0, 0, 0, 0, 0]))).toBe("abcd::");
    // Mapped form stays dotted in formatV6 itself, as inet_ntop prints it.
    expect(formatV6(v6bytes([0, 0, 0, 0, 0, 0xffff, 0x0102, 0x0304]))).toBe("::ffff:1.2.3.4");
    expect(formatV6(v6bytes([0, 0, 0, 0, 0, 0, 0x0102, 0x0304]))).toBe("::1.2.3.4");
  });
});

describe("parseIp: IPv6 against independent parsers", () => {
  // A deterministic generator: the same inputs on every run, so a failure reproduces.
  let seed = 12_345;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1_103_515_245) + 12_345) >>> 0;
    return (seed >>> 8) % n;
  };
  /** WHATWG URL's host parser: its RFC 5952 text, or null when it refuses. */
  const urlHost = (s: string): string | null => {
    try {
      return new URL(`http://[${s}]/`).hostname.slice(1, -1);
    } catch {
      return null;
    }
  };
  const check = (s: string): void => {
    const ours = parseIp(s);
    // node:net's isIPv6 has the same rules: 1–4 hex digits a group, one "::", a dotted tail without leading zeros.
    expect([s, ours !== null]).toEqual([s, isIPv6(s)]);
    if (!ours) return;
    // The input is kept as the text only when it is exactly what formatV6 prints.
    if (ours.family === 6) expect([s, ours.text]).toEqual([s, formatV6(ours.bytes)]);
    const theirs = urlHost(s);
    expect([s, theirs === null ? null : parseIp(theirs)?.text]).toEqual([s, ours.text]);
    // Both print RFC 5952 text, except that glibc (and so Postfix) keeps IPv4 tails dotted.
    if (!ours.text.includes(".")) expect([s, ours.text]).toEqual([s, theirs ?? "(refused)"]);
  };

  test("random texts: accepted exactly when node:net accepts them, read as the URL parser reads them", () => {
    const alphabet = "0123456789abcdefABCDEF:.::0f";
    for (let k = 0; k < 150_000; k++) {
      let s = "";
      for (let i = 2 + rand(28); i > 0; i--) s += alphabet[rand(alphabet.length)];
      if (s.includes(":")) check(s);
    }
  });

  test("random addresses with zero runs, written every way: the same address and text", () => {
    for (let k = 0; k < 30_000; k++) {
      const words = Array.from({ length: 8 }, () => (rand(3) ? 0 : rand(65_536)));
      const full = words.map((w) => w.toString(16)).join(":");
      for (const s of [full, full.toUpperCase(), words.map((w) => w.toString(16).padStart(4, "0")).join(":"), urlHost(full)!]) check(s);
      const dotted = `${words.slice(0, 6).map((w) => w.toString(16)).join(":")}:${words[6]! >> 8}.${words[6]! & 255}.${words[7]! >> 8}.${words[7]! & 255}`;
      check(dotted);
    }
  });
});

describe("parseIp: IPv4", () => {
  test.each([
    ["0.0.0.0", [0, 0, 0, 0]],
    ["1.2.3.4", [1, 2, 3, 4]],
    ["255.255.255.255", [255, 255, 255, 255]],
    ["192.0.2.10", [192, 0, 2, 10]],
    ["10.0.0.100", [10, 0, 0, 100]],
  ])("%s", (input, bytes) => {
    const r = ip(input as string);
    expect(r.family).toBe(4);
    expect(r.text).toBe(input as string);
    expect(Array.from(r.bytes)).toEqual(bytes as number[]);
  });
});

describe("parseIp rejects anything but exactly one address", () => {
  const BAD = [
    "",
    "010.1.1.1", // leading zero: octal to some resolvers
    "1.2.3.04",
    "00.1.1.1",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1.2.3.4\n",
    "1.2.3.4\t",
    "1.2. 3.4",
    "::1 ",
    " ::1",
    "::1\n",
    "\n::1",
    ":: 1",
    "fe80::1%eth0",
    "fe80::1%1",
    "::1/128",
    "1.2.3.4/32",
    "[::1]",
    "[1.2.3.4]",
    ":::",
    ":",
    "::::",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:",
    ":1:2:3:4:5:6:7:8",
    "1::2::3",
    ":1::",
    "1::2:",
    "00001::",
    "12345::",
    "g::1",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "1.2.3.-1",
    "1.2.3.4.",
    ".1.2.3.4",
    "0x1.1.1.1",
    "1e2.1.1.1",
    "+1.1.1.1",
    "1.2.3.4::",
    "::1.2.3.4:5",
    "1:2:3:4:5:6:7:1.2.3.4",
    "::ffff:01.2.3.4",
    "::ffff:256.2.3.4",
    "::ffff:1.2.3",
    "localhost",
    "1.2.3.4,5.6.7.8",
    "١.٢.٣.٤", // non-ASCII digits
    "1:2:3:4:5:6:7:8".padEnd(46, "0"),
  ];
  for (const bad of BAD) {
    test(JSON.stringify(bad), () => {
      expect(parseIp(bad)).toBeNull();
    });
  }

  test("non-strings are refused, not thrown on", () => {
    expect(parseIp(undefined as unknown as string)).toBeNull();
    expect(parseIp(1234 as unknown as string)).toBeNull();
  });
});

describe("parseCidr", () => {
  test("bare addresses are single hosts", () => {
    expect(parseCidr("192.0.2.7")).toMatchObject({ family: 4, prefix: 32, text: "192.0.2.7/32" });
    expect(parseCidr("2001:db8::1")).toMatchObject({ family: 6, prefix: 128, text: "2001:db8::1/128" });
  });

  test("networks are normalised", () => {
    expect(parseCidr("198.51.100.0/24")?.text).toBe("198.51.100.0/24");
    expect(parseCidr("2001:DB8:0:0::/32")?.text).toBe("2001:db8::/32");
    expect(parseCidr("0.0.0.0/0")?.text).toBe("0.0.0.0/0");
    expect(parseCidr("::/0")?.text).toBe("::/0");
  });

  test("host bits must be zero", () => {
    expect(parseCidr("198.51.100.1/24")).toBeNull();
    expect(parseCidr("198.51.100.128/25")?.prefix).toBe(25);
    expect(parseCidr("198.51.100.128/24")).toBeNull();
    expect(parseCidr("198.51.100.129/25")).toBeNull();
    expect(parseCidr("11.0.0.0/7")).toBeNull(); // the lowest bit of the first byte is a host bit
    expect(parseCidr("10.0.0.0/7")?.text).toBe("10.0.0.0/7");
    expect(parseCidr("1.0.0.0/0")).toBeNull();
    expect(parseCidr("2001:db8::1/64")).toBeNull();
    expect(parseCidr("2001:db8::/31")).not.toBeNull(); // 0x0db8 is even
    expect(parseCidr("2001:db9::/32")?.text).toBe("2001:db9::/32");
    expect(parseCidr("2001:db9::/31")).toBeNull();
    expect(parseCidr("2001:db8::/128")?.prefix).toBe(128);
  });

  test("prefix lengths are strict decimal and within the family", () => {
    for (const bad of ["1.2.3.0/33", "::/129", "1.2.3.0/024", "1.2.3.0/", "1.2.3.0/-1", "1.2.3.0/ 24", "1.2.3.0/24 ", "1.2.3.0/24/8", "1.2.3.0/0x18", "/24", "::1/1e2"]) {
      expect(parseCidr(bad)).toBeNull();
    }
  });

  test("the address part is parsed as strictly as parseIp", () => {
    for (const bad of ["010.0.0.0/8", " 10.0.0.0/8", "[::]/0", "fe80::%eth0/64", ""]) expect(parseCidr(bad)).toBeNull();
  });
});

describe("cidrContains", () => {
  const net = (s: string) => parseCidr(s)!;
  test("IPv4 boundaries", () => {
    const n = net("198.51.100.0/24");
    expect(cidrContains(n, ip("198.51.100.0"))).toBe(true);
    expect(cidrContains(n, ip("198.51.100.255"))).toBe(true);
    expect(cidrContains(n, ip("198.51.101.0"))).toBe(false);
    expect(cidrContains(n, ip("198.51.99.255"))).toBe(false);
    const odd = net("10.0.0.128/25");
    expect(cidrContains(odd, ip("10.0.0.127"))).toBe(false);
    expect(cidrContains(odd, ip("10.0.0.128"))).toBe(true);
    expect(cidrContains(net("10.0.0.5"), ip("10.0.0.5"))).toBe(true);
    expect(cidrContains(net("10.0.0.5"), ip("10.0.0.4"))).toBe(false);
  });

  test("IPv6 and prefix 0", () => {
    const n = net("2001:db8::/32");
    expect(cidrContains(n, ip("2001:db8:ffff::1"))).toBe(true);
    expect(cidrContains(n, ip("2001:db9::1"))).toBe(false);
    expect(cidrContains(net("::/0"), ip("ff02::1"))).toBe(true);
    expect(cidrContains(net("0.0.0.0/0"), ip("203.0.113.9"))).toBe(true);
  });

  test("families never match each other", () => {
    expect(cidrContains(net("0.0.0.0/0"), ip("::1"))).toBe(false);
    expect(cidrContains(net("::/0"), ip("1.2.3.4"))).toBe(false);
    // A mapped address is IPv4, so an IPv4 network contains it.
    expect(cidrContains(net("1.2.3.0/24"), ip("::ffff:1.2.3.4"))).toBe(true);
  });
});

describe("specialAddressKind", () => {
  test.each([
    ["127.0.0.1", "loopback"],
    ["127.255.255.254", "loopback"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.1", "loopback"],
    ["0.0.0.0", "unspecified"],
    ["0.1.2.3", "unspecified"],
    ["::", "unspecified"],
    ["255.255.255.255", "broadcast"],
    ["224.0.0.1", "multicast"],
    ["239.255.255.255", "multicast"],
    ["ff02::1", "multicast"],
    ["169.254.1.1", "link-local"],
    ["fe80::1", "link-local"],
    ["febf:ffff::1", "link-local"],
  ])("%s is %s", (addr, kind) => {
    expect(specialAddressKind(ip(addr))).toBe(kind);
  });

  test.each(["192.0.2.1", "198.51.100.7", "10.1.2.3", "223.255.255.255", "240.0.0.1", "169.253.255.255", "128.0.0.1", "2001:db8::1", "fec0::1", "::2", "fe7f::1"])("%s is ordinary", (addr) => {
    expect(specialAddressKind(ip(addr))).toBeNull();
  });
});

describe("sourceKey", () => {
  test("IPv4 by address, IPv6 by /64", async () => {
    expect(sourceKey(ip("192.0.2.1"))).toBe("192.0.2.1");
    expect(sourceKey(ip("2001:db8:1:2:3:4:5:6"))).toBe("2001:db8:1:2::/64");
    expect(sourceKey(ip("2001:db8:1:2::99"))).toBe(sourceKey(ip("2001:db8:1:2:3:4:5:6")));
  });
});
