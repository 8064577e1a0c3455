import { describe, expect, test } from "bun:test";
import { defaultGateways, FILE_LOOKUP_MAX_LEASES, leaseAddressChecks, scaleCheck, type LeaseAddressFacts, type LocalAddress } from "../../../src/doctor/leases.ts";
import { LOOKUPS } from "../../../src/server/lookups/index.ts";

const NOW = 1_000_000;
const LOCAL: LocalAddress[] = [
  { address: "127.0.0.1", dev: "lo", kind: "interface" },
  { address: "::1", dev: "lo", kind: "interface" },
  { address: "172.17.0.1", dev: "docker0", kind: "interface" },
  { address: "fe80::1", dev: "veth12", kind: "interface" },
  { address: "2001:db8:1::1", dev: "br-3f2a", kind: "interface" },
  { address: "192.168.1.1", dev: "eth0", kind: "gateway" },
];
const facts = (leases: [string, string, number?][], o: Partial<LeaseAddressFacts> = {}): LeaseAddressFacts => ({
  now: NOW,
  leases: leases.map(([client, ip, ttl = 60_000]) => ({ client, ip, expires_at: NOW + ttl })),
  local: LOCAL,
  configPath: "/etc/relayctl/server.toml",
  defaultConfig: true,
  ...o,
});
const byId = (f: LeaseAddressFacts) => Object.fromEntries(leaseAddressChecks(f).map((c) => [c.id, c]));

describe("leases.local_address", () => {
  test("a lease on a bridge address of this host fails, names client and interface, and prints revoke and the way out", () => {
    const c = byId(facts([["laptop", "198.51.100.7"], ["nas", "172.17.0.1"]]))["leases.local_address"]!;
    expect(c.status).toBe("fail");
    expect(c.message).toContain("the lease of nas on 172.17.0.1 is an address of this host (docker0)");
    expect(c.message).not.toContain("laptop");
    expect(c.hint).toContain("relayctl server revoke nas\n");
    expect(c.hint).toContain('"userland-proxy": false');
    expect(c.hint).toContain("trusted_proxies");
  });

  test("loopback, the default gateway and an IPv6 prefix holding a local address count too", () => {
    const c = byId(facts([["a", "127.0.0.1"], ["b", "192.168.1.1"], ["c", "2001:db8:1::/64"]], { configPath: "/srv/my server.toml", defaultConfig: false }))["leases.local_address"]!;
    expect(c.status).toBe("fail");
    expect(c.message).toContain("a on 127.0.0.1 is an address of this host (lo)");
    expect(c.message).toContain("b on 192.168.1.1 is this host's default gateway (via eth0)");
    expect(c.message).toContain("c on 2001:db8:1::/64 is an address of this host (br-3f2a)");
    expect(c.hint).toContain("relayctl server revoke a --config '/srv/my server.toml'");
  });

  test("expired leases, other addresses, and garbage read back from the store pass", () => {
    const c = byId(facts([["old", "172.17.0.1", -1], ["laptop", "198.51.100.7"], ["bad", "172.17.0.1; rm -rf /"]]))["leases.local_address"]!;
    expect(c.status).toBe("pass");
    expect(c.message).toContain("1 live");
  });
});

describe("leases.shared_address", () => {
  test(`two clients on one address warn, naming both; one client on both families does not`, () => {
    const f = facts([["a", "198.51.100.7"], ["b", "198.51.100.7"], ["c", "2001:db8::1"], ["c", "203.0.113.5"]]);
    const c = byId(f)["leases.shared_address"]!;
    expect(c.status).toBe("warn");
    expect(c.message).toStartWith("clients a, b share 198.51.100.7");
    expect(c.hint).toContain("relayctl server revoke a\nrelayctl server revoke b");
    expect(byId(facts([["a", "198.51.100.7"], ["b", "198.51.100.8"], ["b", "2001:db8::1"]]))["leases.shared_address"]!.status).toBe("pass");
  });

  test("an expired lease does not share", () => {
    expect(byId(facts([["a", "198.51.100.7"], ["b", "198.51.100.7", -5]]))["leases.shared_address"]!.status).toBe("pass");
  });
});

describe("defaultGateways", () => {
  test("reads the default routes of /proc/net/route and /proc/net/ipv6_route, nothing else", () => {
    const route4 = [
      "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
      "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
      "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0",
    ].join("\n");
    const route6 = [
      "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0",
      "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0",
    ].join("\n");
    expect(defaultGateways(route4, route6)).toEqual([
      { address: "192.168.1.1", dev: "eth0", kind: "gateway" },
      { address: "fe80::1", dev: "eth0", kind: "gateway" },
    ]);
    expect(defaultGateways("", "")).toEqual([]);
  });
});

describe("server.scale", () => {
  test("a file lookup past FILE_LOOKUP_MAX_LEASES live leases warns with the figures and the way out; policy never does", () => {
    for (const [name, type] of Object.entries(LOOKUPS)) {
      expect(scaleCheck(name, type.rewritesWhole, FILE_LOOKUP_MAX_LEASES, "/etc/relayctl/server.toml")).toEqual([]);
      const over = scaleCheck(name, type.rewritesWhole, 1_000_000, "/etc/relayctl/server.toml");
      if (name === "policy") {
        expect(over).toEqual([]);
        continue;
      }
      expect(over).toHaveLength(1);
      expect(over[0]!.status).toBe("warn");
      expect(over[0]!.message).toContain(`1,000,000 live leases with lookup = "${name}": each change re`);
      expect(over[0]!.hint).toMatch(/policy/);
    }
    expect(scaleCheck("map", LOOKUPS.map.rewritesWhole, 100_001, "/srv/relay.toml")[0]!.hint).toStartWith('set lookup = "policy" in /srv/relay.toml and restart relayctl');
  });
});
