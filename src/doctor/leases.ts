import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { cidrContains, leaseText, parseCidr, parseIp, type Cidr } from "../lib/ip.ts";
import type { LeaseRow } from "../server/state.ts";
import { fail, pass, shellQuote, warn, type CheckResult } from "./checks.ts";

/**
 * Live leases from which doctor advises the policy lookup over a file one:
 * at 100,000 a map rebuild already takes ~80 ms per change, and at
 * 1,000,000 postmap under renewal load hit its 10 s timeout (issue 21).
 */
export const FILE_LOOKUP_MAX_LEASES = 100_000;

/** Verdict on `server.scale`: a lookup that rewrites its whole file on each change, holding more live leases than that suits. */
export function scaleCheck(lookup: string, rewritesWhole: string | null, live: number, configPath: string): CheckResult[] {
  if (rewritesWhole === null || live <= FILE_LOOKUP_MAX_LEASES) return [];
  return [
    warn(
      "server.scale",
      `${live.toLocaleString("en-US")} live leases with lookup = "${lookup}": ${rewritesWhole}, so every grant, move and release waits for a file of ${live.toLocaleString("en-US")} lines (more than ${FILE_LOOKUP_MAX_LEASES.toLocaleString("en-US")} is past what a file lookup suits)`,
      lookup === "map"
        ? `set lookup = "policy" in ${configPath} and restart relayctl, then run relayctl doctor for the main.cf line that hooks it into Postfix; it answers from memory, whatever the count`
        : "keep the lease count below that, or relay through Postfix with the policy lookup",
    ),
  ];
}

/** From this many clients on one leased address on, doctor asks whether a proxy or NAT hides them. */
export const SHARED_CLIENTS = 2;

/** An address of the mail host itself, or the router it sends through: where forwarded connections appear to come from. */
export interface LocalAddress {
  address: string;
  /** The interface holding it, or the one the default route leaves by. */
  dev: string;
  kind: "interface" | "gateway";
}

/** What the lease-address verdicts look at. */
export interface LeaseAddressFacts {
  now: number;
  leases: Pick<LeaseRow, "client" | "ip" | "expires_at">[];
  local: LocalAddress[];
  /** The server config, for the revoke commands a fix prints. */
  configPath: string;
  defaultConfig: boolean;
}

/** The default IPv4 and IPv6 gateways in /proc/net/route and /proc/net/ipv6_route text. */
export function defaultGateways(route4: string, route6: string): LocalAddress[] {
  const out: LocalAddress[] = [];
  for (const line of route4.split("\n").slice(1)) {
    // Iface Destination Gateway ...: addresses in hex, least significant byte first.
    const [dev, dest, gw] = line.trim().split(/\s+/);
    if (!dev || dest !== "00000000" || !gw || !/^[0-9A-Fa-f]{8}$/.test(gw) || gw === "00000000") continue;
    const ip = parseIp((gw.match(/../g) ?? []).reverse().map((h) => parseInt(h, 16)).join("."));
    if (ip) out.push({ address: ip.text, dev, kind: "gateway" });
  }
  for (const line of route6.split("\n")) {
    // dest destlen src srclen nexthop metric refcnt use flags iface
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || !/^0{32}$/.test(f[0]!) || f[1] !== "00" || !/^[0-9a-f]{32}$/i.test(f[4]!) || /^0{32}$/.test(f[4]!)) continue;
    const ip = parseIp(f[4]!.match(/.{4}/g)!.join(":"));
    if (ip) out.push({ address: ip.text, dev: f[9]!, kind: "gateway" });
  }
  return out;
}

/** Every address of this host's interfaces (loopback, bridges, veths) and its default gateways. */
export function localAddresses(): LocalAddress[] {
  const out: LocalAddress[] = [];
  for (const [dev, addrs] of Object.entries(networkInterfaces())) {
    for (const a of addrs ?? []) out.push({ address: a.address, dev, kind: "interface" });
  }
  const read = (p: string) => {
    try {
      return readFileSync(p, "utf8");
    } catch {
      return "";
    }
  };
  return [...out, ...defaultGateways(read("/proc/net/route"), read("/proc/net/ipv6_route"))];
}

/** A live lease with its network parsed (never taken as text from the store). */
interface Live {
  client: string;
  net: Cidr;
}

function revokeLines(f: LeaseAddressFacts, clients: string[]): string[] {
  const config = f.defaultConfig ? "" : ` --config ${shellQuote(f.configPath)}`;
  return [...new Set(clients)].sort().map((c) => `relayctl server revoke ${shellQuote(c)}${config}`);
}

const KEEP_ADDRESSES =
  "then let Postfix see each client's own address: host networking for the Postfix container, or \"userland-proxy\": false in /etc/docker/daemon.json, or the PROXY protocol from the proxy in front (postscreen_upstream_proxy_protocol = haproxy); the relayctl server behind a proxy needs trusted_proxies (docs/operations.md, Containers)";

/**
 * Verdicts on `leases.local_address` and `leases.shared_address`. A lease on an
 * address of the mail host (docker0's 172.17.0.1, a bridge, loopback) or on its
 * default gateway fails: behind Docker's userland proxy, NAT, or a router's port
 * forward with source NAT, Postfix sees every client come from that address, so
 * the lease relays for all of them. Several clients on one address only warn:
 * hosts behind one home router share an address honestly.
 */
export function leaseAddressChecks(f: LeaseAddressFacts): CheckResult[] {
  const live: Live[] = [];
  for (const l of f.leases) {
    const net = l.expires_at > f.now ? parseCidr(l.ip) : null;
    if (net) live.push({ client: l.client, net });
  }
  const local = f.local.flatMap((a) => {
    const ip = parseIp(a.address);
    return ip ? [{ ...a, ip }] : [];
  });
  const hits = live.flatMap((l) => {
    const at = local.filter((a) => a.ip.family === l.net.family && cidrContains(l.net, a.ip));
    return at.length ? [{ l, at }] : [];
  });
  const localCheck = hits.length
    ? fail(
        "leases.local_address",
        hits.map(({ l, at }) => {
          const what = at.map((a) => (a.kind === "interface" ? `an address of this host (${a.dev})` : `this host's default gateway (via ${a.dev})`));
          return `the lease of ${l.client} on ${leaseText(l.net)} is ${[...new Set(what)].join(" and ")}`;
        }).join("; ") + ": if Postfix sees clients through Docker's userland proxy, NAT or a port forward, they all come from there, and this lease lets every one of them relay",
        ["end the lease now (add the client again once Postfix sees real client addresses):", ...revokeLines(f, hits.map((h) => h.l.client)), KEEP_ADDRESSES].join("\n"),
      )
    : pass("leases.local_address", `no live lease is on an address of this host or its default gateway (${live.length} live, ${local.length} local addresses)`);

  const byNet = new Map<string, Live[]>();
  for (const l of live) byNet.set(l.net.text, [...(byNet.get(l.net.text) ?? []), l]);
  const shared = [...byNet.values()].filter((ls) => new Set(ls.map((l) => l.client)).size >= SHARED_CLIENTS);
  const sharedCheck = shared.length
    ? warn(
        "leases.shared_address",
        shared.map((ls) => `clients ${[...new Set(ls.map((l) => l.client))].sort().join(", ")} share ${leaseText(ls[0]!.net)}`).join("; ") +
          ": right for hosts behind one router, but a proxy or NAT in front of Postfix or the relayctl server makes every client look alike, and then each lease opens the relay to all",
        ["nothing to do if these clients sit behind one router; otherwise end the leases:", ...revokeLines(f, shared.flatMap((ls) => ls.map((l) => l.client))), KEEP_ADDRESSES].join("\n"),
      )
    : pass("leases.shared_address", "no two clients share a leased address");
  return [localCheck, sharedCheck];
}
