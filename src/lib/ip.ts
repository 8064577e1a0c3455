/** A parsed address: family, its bytes, and the text form Postfix uses for client_address. */
export interface Ip {
  family: 4 | 6;
  bytes: Uint8Array;
  text: string;
}

/** A parsed network: base address (host bits zero) and prefix length. */
export interface Cidr {
  family: 4 | 6;
  bytes: Uint8Array;
  prefix: number;
  text: string;
}

const DOT = 46;
const ZERO = 48;
const NINE = 57;

/** Exactly four decimal parts 0–255; no sign, space or leading zero (some resolvers read those as octal). */
function parseV4(s: string): Uint8Array | null {
  // One pass over char codes, not split + regex: the policy service parses
  // an address per RCPT, and the split version was a third of its answer.
  const out = new Uint8Array(4);
  let part = 0;
  let start = 0;
  let n = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i === s.length ? DOT : s.charCodeAt(i);
    if (c === DOT) {
      if (i === start || part === 4) return null;
      out[part++] = n;
      n = 0;
      start = i + 1;
      continue;
    }
    if (c < ZERO || c > NINE || (i > start && s.charCodeAt(start) === ZERO)) return null;
    n = n * 10 + (c - ZERO);
    if (n > 255) return null;
  }
  return part === 4 ? out : null;
}

const COLON = 58;
/** One 16-bit group per slot while an IPv6 text is read (reused: parsing is synchronous). */
const groups = new Uint16Array(8);

/** The value of a hex digit's char code, or -1. */
function hexDigit(c: number): number {
  if (c >= ZERO && c <= NINE) return c - ZERO;
  const l = c | 0x20;
  return l >= 97 && l <= 102 ? l - 87 : -1;
}

/**
 * IPv6 text to bytes: groups of 1–4 hex digits, at most one `::`, an IPv4
 * tail only as the last group. One pass over char codes: a million leases
 * are parsed when a host starts, and the split-and-regex version cost 3 µs
 * each.
 */
function parseV6(s: string): Uint8Array | null {
  const len = s.length;
  if (len < 2 || len > 45) return null;
  let n = 0;
  let gap = -1;
  let i = 0;
  if (s.charCodeAt(0) === COLON) {
    if (s.charCodeAt(1) !== COLON) return null;
    gap = 0;
    i = 2;
  }
  while (i < len) {
    const start = i;
    let v = 0;
    for (let h: number; i < len && (h = hexDigit(s.charCodeAt(i))) >= 0; i++) {
      if (i - start === 4) return null;
      v = v * 16 + h;
    }
    if (i < len && s.charCodeAt(i) === DOT) {
      const v4 = n <= 6 ? parseV4(s.slice(start)) : null;
      if (!v4) return null;
      groups[n++] = (v4[0]! << 8) | v4[1]!;
      groups[n++] = (v4[2]! << 8) | v4[3]!;
      break;
    }
    if (i === start || n === 8) return null;
    groups[n++] = v;
    if (i === len) break;
    if (s.charCodeAt(i) !== COLON || ++i === len) return null;
    if (s.charCodeAt(i) === COLON) {
      if (gap !== -1) return null;
      gap = n;
      i++;
    }
  }
  if (gap === -1 ? n !== 8 : n > 7) return null;
  const out = new Uint8Array(16);
  const tail = gap === -1 ? n : gap;
  for (let k = 0; k < n; k++) {
    const at = k < tail ? k : 8 - n + k;
    out[at * 2] = groups[k]! >> 8;
    out[at * 2 + 1] = groups[k]! & 0xff;
  }
  return out;
}

function isV4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/**
 * Where glibc puts "::": the first longest run of two or more zero groups,
 * as base * 16 + length (a length of 8 needs the fourth bit), or -1 when
 * there is none.
 */
function zeroRun(b: Uint8Array): number {
  let base = -1;
  let best = 0;
  for (let i = 0, run = 0; i < 8; i++) {
    run = b[i * 2] === 0 && b[i * 2 + 1] === 0 ? run + 1 : 0;
    if (run > best) {
      best = run;
      base = i - run + 1;
    }
  }
  return best < 2 ? -1 : base * 16 + best;
}

/** True when glibc prints these bytes with a dotted IPv4 tail: IPv4-compatible (six zero groups first) or -mapped (five, then ffff). */
function dottedTail(b: Uint8Array, run: number): boolean {
  return run === 0 * 16 + 6 || (run === 0 * 16 + 5 && b[10] === 0xff && b[11] === 0xff);
}

/** Formats IPv6 bytes as glibc's inet_ntop does, which is what Postfix puts in client_address. */
export function formatV6(b: Uint8Array): string {
  const run = zeroRun(b);
  const base = run === -1 ? -1 : run >> 4;
  const end = run === -1 ? -1 : base + (run & 15);
  const dotted = dottedTail(b, run);
  let out = "";
  for (let i = 0; i < 8; i++) {
    if (i === base) {
      out += "::";
      i = end - 1;
      continue;
    }
    const sep = i === 0 || i === end ? "" : ":";
    if (i === 6 && dotted) return `${out}${sep}${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
    out += `${sep}${((b[i * 2]! << 8) | b[i * 2 + 1]!).toString(16)}`;
  }
  return out;
}

/**
 * True when s is exactly formatV6(b), found without building that text:
 * addresses read back from the database are almost always written so, and
 * keeping the string already there saved a second copy of each of a
 * million addresses (and the time to build it) when a host starts.
 */
function isFormatV6(s: string, b: Uint8Array): boolean {
  const run = zeroRun(b);
  if (dottedTail(b, run)) return false; // rare: formatV6 decides
  const base = run === -1 ? -1 : run >> 4;
  const end = run === -1 ? -1 : base + (run & 15);
  let pos = 0;
  for (let i = 0; i < 8; i++) {
    if (i === base) {
      if (s.charCodeAt(pos++) !== COLON || s.charCodeAt(pos++) !== COLON) return false;
      i = end - 1;
      continue;
    }
    if (i !== 0 && i !== end && s.charCodeAt(pos++) !== COLON) return false;
    const v = (b[i * 2]! << 8) | b[i * 2 + 1]!;
    // Lowercase hex without leading zeros.
    for (let shift = v >= 0x1000 ? 12 : v >= 0x100 ? 8 : v >= 0x10 ? 4 : 0; shift >= 0; shift -= 4) {
      const d = (v >> shift) & 15;
      if (s.charCodeAt(pos++) !== (d < 10 ? ZERO + d : 87 + d)) return false;
    }
  }
  return pos === s.length;
}

/**
 * Parses one IPv4 or IPv6 literal strictly: no whitespace, zone ids, CIDR,
 * brackets or leading zeros. IPv4-mapped IPv6 becomes plain IPv4, as Postfix
 * reports it. Returns null when the text is not exactly one address.
 */
export function parseIp(input: string): Ip | null {
  if (typeof input !== "string" || input.length === 0 || input.length > 45) return null;
  if (input.includes(":")) {
    const b = parseV6(input);
    if (!b) return null;
    if (isV4Mapped(b)) {
      const v4 = b.slice(12);
      return { family: 4, bytes: v4, text: Array.from(v4).join(".") };
    }
    return { family: 6, bytes: b, text: isFormatV6(input, b) ? input : formatV6(b) };
  }
  const b = parseV4(input);
  // Strict parsing leaves one spelling per address: the input is its canonical text.
  return b ? { family: 4, bytes: b, text: input } : null;
}

/** Parses `ADDR/LEN` (or a bare address, meaning one host); host bits must be zero. */
export function parseCidr(input: string): Cidr | null {
  const slash = input.indexOf("/");
  const ip = parseIp(slash === -1 ? input : input.slice(0, slash));
  if (!ip) return null;
  const max = ip.family === 4 ? 32 : 128;
  let prefix = max;
  if (slash !== -1) {
    const len = input.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(len) || Number(len) > max) return null;
    prefix = Number(len);
  }
  for (let bit = prefix; bit < max; bit++) {
    if (ip.bytes[bit >> 3]! & (0x80 >> (bit & 7))) return null;
  }
  return { family: ip.family, bytes: ip.bytes, prefix, text: `${ip.text}/${prefix}` };
}

/** True when the address lies inside the network (families must match). */
export function cidrContains(net: Cidr, ip: Ip): boolean {
  if (net.family !== ip.family) return false;
  for (let bit = 0; bit < net.prefix; bit++) {
    const mask = 0x80 >> (bit & 7);
    if ((net.bytes[bit >> 3]! & mask) !== (ip.bytes[bit >> 3]! & mask)) return false;
  }
  return true;
}

const SPECIAL: Array<[string, string]> = [
  ["0.0.0.0/8", "unspecified"],
  ["255.255.255.255/32", "broadcast"],
  ["224.0.0.0/4", "multicast"],
  ["127.0.0.0/8", "loopback"],
  ["169.254.0.0/16", "link-local"],
  ["::/128", "unspecified"],
  ["ff00::/8", "multicast"],
  ["::1/128", "loopback"],
  ["fe80::/10", "link-local"],
];
let specialParsed: (readonly [Cidr, string])[] | undefined;

// Parsed on first use, not at load: every client run loads this module, and parsing cost it ~0.5 ms.
function specialNets(): (readonly [Cidr, string])[] {
  return (specialParsed ??= SPECIAL.map(([c, why]) => [parseCidr(c)!, why] as const));
}

/** True when every address of `inner` lies inside `outer`. */
export function cidrWithin(inner: Cidr, outer: Cidr): boolean {
  return inner.prefix >= outer.prefix && cidrContains(outer, { family: inner.family, bytes: inner.bytes, text: inner.text });
}

/** The special range an address lies in (loopback, multicast, ...) and its kind, or null. */
export function specialRange(ip: Ip): { net: Cidr; kind: string } | null {
  for (const [net, kind] of specialNets()) if (cidrContains(net, ip)) return { net, kind };
  return null;
}

/** The special ranges a network overlaps (lies in, or contains), with their kinds. */
export function specialRangesTouching(net: Cidr): { net: Cidr; kind: string }[] {
  return specialNets().filter(([r]) => r.family === net.family && (cidrWithin(net, r) || cidrWithin(r, net))).map(([r, kind]) => ({ net: r, kind }));
}

/** Names why an address can never be a sensible relay client (loopback, multicast, ...), or null. */
export function specialAddressKind(ip: Ip): string | null {
  return specialRange(ip)?.kind ?? null;
}

/** The text a lease is stored and shown as: the bare address for a single host, `NET/LEN` for a prefix. */
export function leaseText(net: Cidr): string {
  return net.prefix === (net.family === 4 ? 32 : 128) ? net.text.slice(0, net.text.indexOf("/")) : net.text;
}

/** A lease's text (a bare address or `NET/LEN`) parsed strictly: its family and canonical text, or null. A bare address skips the network's text and slice. */
export function leaseTextOf(input: string): { family: 4 | 6; text: string } | null {
  if (input.includes("/")) {
    const net = parseCidr(input);
    return net && { family: net.family, text: leaseText(net) };
  }
  const ip = parseIp(input);
  return ip && { family: ip.family, text: ip.text };
}

/** The network text `ADDR/prefix` that ip falls in, for a prefix-length lookup; null when families differ. */
export function maskText(ip: Ip, prefix: number): string | null {
  const max = ip.family === 4 ? 32 : 128;
  if (prefix > max) return null;
  const bytes = new Uint8Array(ip.bytes);
  for (let bit = prefix; bit < max; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return parseCidr(`${formatBytes(ip.family, bytes)}/${prefix}`)?.text ?? null;
}

/** The key failures are counted under: the address, or its /64 for IPv6 (one subscriber's LAN). */
export function sourceKey(ip: Ip): string {
  return ip.family === 6 ? maskText(ip, 64)! : ip.text;
}

function formatBytes(family: 4 | 6, bytes: Uint8Array): string {
  if (family === 4) return Array.from(bytes).join(".");
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return words.join(":");
}
