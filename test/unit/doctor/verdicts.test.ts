import { describe, expect, test } from "bun:test";
import { hookChecks, isBroadNetwork, type HookInput } from "../../../src/doctor/hook.ts";
import { permissionsCheck, leaseCheck, sharedAddressCheck } from "../../../src/doctor/client.ts";
import { parseSmtpTarget, smtpVerdict } from "../../../src/doctor/smtp.ts";
import { listenVerdicts, versionCheck, type ListenFacts } from "../../../src/doctor/server.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import type { CheckResult } from "../../../src/doctor/checks.ts";

const MAP = "/etc/postfix/relayctl/clients";
const DEFAULT_RELAY = "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination";

/** A fake postconf view: `values` as postconf -x -h prints them, `explicit` as postconf -n. */
function input(values: { mynetworks?: string; relay?: string; recipient?: string }, explicit: Record<string, string> = {}, mainCf = ""): HookInput {
  return {
    view: {
      configDir: "/etc/postfix",
      values: {
        mynetworks: values.mynetworks ?? "127.0.0.0/8 [::1]/128",
        smtpd_relay_restrictions: values.relay ?? DEFAULT_RELAY,
        smtpd_recipient_restrictions: values.recipient ?? "",
        mail_version: "3.7.11",
        default_database_type: "hash",
        mail_owner: "postfix",
        queue_directory: "/var/spool/postfix",
      },
      explicit: new Map(Object.entries(explicit)),
      mainCf,
    },
    mapType: "hash",
    mapPath: MAP,
  };
}

function byId(checks: CheckResult[], id: string): CheckResult | undefined {
  return checks.find((c) => c.id === id);
}

describe("postfix.hook and postfix.relay_restrictions", () => {
  test("map in mynetworks with the default relay restrictions passes, with the mynetworks note", () => {
    const c = hookChecks(input({ mynetworks: `127.0.0.0/8, hash:${MAP}` }));
    expect(byId(c, "postfix.hook")!.status).toBe("pass");
    expect(byId(c, "postfix.hook")!.hint).toContain(`check_client_access hash:${MAP}`);
    expect(byId(c, "postfix.relay_restrictions")!.status).toBe("pass");
  });

  test("missing map fails and the fix keeps the unexpanded value", () => {
    const c = hookChecks(input({ mynetworks: "127.0.0.0/8 10.0.0.0/8" }, { mynetworks: "127.0.0.0/8 $lan" }, "mynetworks = 127.0.0.0/8 $lan\n"));
    const hook = byId(c, "postfix.hook")!;
    expect(hook.status).toBe("fail");
    expect(hook.message).toContain("/etc/postfix/main.cf:1 sets mynetworks");
    expect(hook.hint).toContain(`postconf -c /etc/postfix -e 'mynetworks = 127.0.0.0/8 $lan hash:${MAP}'`);
    expect(byId(c, "postfix.relay_restrictions")).toBeUndefined();
  });

  test("commented-out line is pointed at", () => {
    const hook = byId(hookChecks(input({}, {}, `#mynetworks = hash:${MAP}\n`)), "postfix.hook")!;
    expect(hook.status).toBe("fail");
    expect(hook.message).toContain("main.cf:1 has mynetworks commented out");
  });

  test("wrong table type fails with a replacement fix", () => {
    const hook = byId(hookChecks(input({ mynetworks: `127.0.0.0/8 btree:${MAP}` }, { mynetworks: `127.0.0.0/8 btree:${MAP}` })), "postfix.hook")!;
    expect(hook.status).toBe("fail");
    expect(hook.message).toContain(`references btree:${MAP}`);
    expect(hook.hint).toContain(`-e 'mynetworks = 127.0.0.0/8 hash:${MAP}'`);
  });

  test("mynetworks hook without permit_mynetworks before reject_unauth_destination fails", () => {
    const c = hookChecks(input({ mynetworks: `hash:${MAP}`, relay: "permit_sasl_authenticated, reject_unauth_destination" }));
    const r = byId(c, "postfix.relay_restrictions")!;
    expect(r.status).toBe("fail");
    expect(r.hint).toBe("postconf -c /etc/postfix -e 'smtpd_relay_restrictions = permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination'");
  });

  test("permit_mynetworks after reject_unauth_destination does not count", () => {
    const c = hookChecks(input({ mynetworks: `hash:${MAP}`, relay: "reject_unauth_destination, permit_mynetworks" }));
    expect(byId(c, "postfix.relay_restrictions")!.status).toBe("fail");
  });

  test("recipient restrictions that reject unguarded fail even when relay restrictions permit", () => {
    const c = hookChecks(input({ mynetworks: `hash:${MAP}`, recipient: "reject_unauth_destination" }));
    const r = byId(c, "postfix.relay_restrictions")!;
    expect(r.status).toBe("fail");
    expect(r.message).toContain("smtpd_recipient_restrictions");
  });

  test("old config: empty relay restrictions, relay control in recipient restrictions", () => {
    const c = hookChecks(input({ mynetworks: `hash:${MAP}`, relay: "", recipient: "permit_mynetworks, reject_unauth_destination" }));
    expect(byId(c, "postfix.relay_restrictions")!.status).toBe("pass");
  });

  test("check_client_access hook before reject_unauth_destination passes without the note", () => {
    const c = hookChecks(input({ mynetworks: "127.0.0.0/8", relay: `check_client_access proxy:hash:${MAP}, reject_unauth_destination` }));
    expect(byId(c, "postfix.hook")!).toMatchObject({ status: "pass" });
    expect(byId(c, "postfix.hook")!.hint).toBeUndefined();
    expect(byId(c, "postfix.relay_restrictions")!.status).toBe("pass");
  });

  test("check_client_access after reject_unauth_destination fails", () => {
    const c = hookChecks(input({ mynetworks: "127.0.0.0/8", relay: `reject_unauth_destination, check_client_access hash:${MAP}` }));
    expect(byId(c, "postfix.relay_restrictions")!.hint).toContain(`check_client_access hash:${MAP}, reject_unauth_destination, check_client_access`);
  });

  test("no reject_unauth_destination anywhere fails", () => {
    const c = hookChecks(input({ mynetworks: `hash:${MAP}`, relay: "permit_mynetworks" }));
    expect(byId(c, "postfix.relay_restrictions")!.status).toBe("fail");
  });
});

describe("postfix.mynetworks_broad", () => {
  test("0.0.0.0/0, ::/0 and public /8s warn, private and narrow networks do not", () => {
    const broad = (c: string) => isBroadNetwork(parseCidr(c)!);
    expect(broad("0.0.0.0/0")).toBe(true);
    expect(broad("::/0")).toBe(true);
    expect(broad("8.0.0.0/8")).toBe(true);
    expect(broad("10.0.0.0/8")).toBe(false);
    expect(broad("127.0.0.0/8")).toBe(false);
    expect(broad("192.168.0.0/16")).toBe(false);
    const c = byId(hookChecks(input({ mynetworks: `127.0.0.0/8 [::]/0 hash:${MAP}` })), "postfix.mynetworks_broad")!;
    expect(c.status).toBe("warn");
    expect(c.hint).toBe(`postconf -c /etc/postfix -e 'mynetworks = 127.0.0.0/8 hash:${MAP}'`);
  });
});

describe("client verdicts", () => {
  test("permissions: 0600 and own file pass; others fail with chmod/chown", () => {
    expect(permissionsCheck("/c.toml", { mode: 0o100600, uid: 1000 }, { uid: 1000, name: "me" }).status).toBe("pass");
    const bad = permissionsCheck("/c.toml", { mode: 0o100644, uid: 0 }, { uid: 1000, name: "me" });
    expect(bad.status).toBe("fail");
    expect(bad.hint).toBe("chown me /c.toml\nchmod 600 /c.toml");
  });

  test("shared address: only CGNAT addresses warn", () => {
    const iface = (address: string, internal = false) => ({ address, internal, family: "IPv4" as const, netmask: "", mac: "", cidr: null });
    expect(sharedAddressCheck({ lo: [iface("127.0.0.1", true)], eth0: [iface("100.72.1.2")] }).status).toBe("warn");
    expect(sharedAddressCheck({ eth0: [iface("100.72.1.2"), iface("192.168.1.2")] }).status).toBe("pass");
    expect(sharedAddressCheck({ eth0: [iface("100.128.0.1")] }).status).toBe("pass");
    expect(sharedAddressCheck({}).status).toBe("pass");
  });

  test("lease: live lease for the seen address passes, otherwise warns", () => {
    const now = Date.parse("2025-01-01T00:00:00Z");
    const lease = (ip: string, exp: string) => ({ ip, family: 4, renewed_at: "2025-01-01T00:00:00Z", expires_at: exp });
    const status = (leases: ReturnType<typeof lease>[]) => ({ client: "c", ip: "198.51.100.7", ttl: 1200, leases });
    expect(leaseCheck(status([lease("198.51.100.7", "2025-01-01T00:20:00Z")]), now).message).toContain("in 20 min");
    expect(leaseCheck(status([lease("198.51.100.8", "2025-01-01T00:20:00Z")]), now).status).toBe("warn");
    expect(leaseCheck(status([lease("198.51.100.7", "2024-12-31T00:00:00Z")]), now).status).toBe("warn");
  });

  test("smtp verdicts", () => {
    const t = parseSmtpTarget("127.0.0.1:2525");
    expect(smtpVerdict(t, { rcpt: { code: 250, text: "2.1.5 Ok" }, transcript: [] }).status).toBe("pass");
    const denied = smtpVerdict(t, { local: "198.18.0.3", rcpt: { code: 554, text: "5.7.1 <x>: Relay access denied" }, transcript: [] });
    expect(denied.status).toBe("fail");
    expect(denied.message).toContain("from 198.18.0.3");
    expect(smtpVerdict(t, { error: "connect: ECONNREFUSED", transcript: [] }).message).toContain("ECONNREFUSED");
  });

  test("smtp target parsing", () => {
    expect(parseSmtpTarget("mail.example.org")).toEqual({ host: "mail.example.org", port: 25 });
    expect(parseSmtpTarget("[::1]:587")).toEqual({ host: "::1", port: 587 });
    expect(() => parseSmtpTarget("host:99999")).toThrow();
    expect(() => parseSmtpTarget("a b")).toThrow();
  });
});

test("postfix.version warns before 2.10", () => {
  expect(versionCheck("3.7.11").status).toBe("pass");
  expect(versionCheck("2.9.6").status).toBe("warn");
});

describe("server.listen and server.health", () => {
  const facts = (f: Partial<ListenFacts>): ListenFacts => ({ configPath: "/etc/relayctl/server.toml", stateDir: "/var/lib/relayctl", shown: "[::]:8443", port: 8443, running: true, bind: { busy: true }, ...f });
  const statuses = (f: Partial<ListenFacts>) => listenVerdicts(facts(f)).checks.map((c) => `${c.id} ${c.status}`);

  test("a stopped server is a failure on the mail host, with the start command as fix", () => {
    const v = listenVerdicts(facts({ running: false, bind: { busy: false } }));
    expect(v.askServer).toBe(false);
    expect(v.checks.map((c) => `${c.id} ${c.status}`)).toEqual(["server.listen pass", "server.health fail"]);
    expect(v.checks[1]!.message).toBe("no relayctl server is running on /var/lib/relayctl: clients cannot renew, and relaying stops as their leases expire");
    expect(v.checks[1]!.hint).toBe("systemctl start relayctl (or: relayctl server --config /etc/relayctl/server.toml)");
  });

  test("stopped with the port taken by someone else: both fail", () => {
    expect(statuses({ running: false, bind: { busy: true } })).toEqual(["server.listen fail", "server.health fail"]);
  });

  test("running but not listening fails: clients cannot renew", () => {
    expect(statuses({ running: true, bind: { busy: false } })).toEqual(["server.listen fail"]);
  });

  test("running and listening: listen passes and the server itself is asked for its health", () => {
    const v = listenVerdicts(facts({}));
    expect(v.checks.map((c) => `${c.id} ${c.status}`)).toEqual(["server.listen pass"]);
    expect(v.askServer).toBe(true);
  });

  test("an address that cannot be bound fails listen alone", () => {
    expect(statuses({ running: false, bind: { busy: false, error: "EADDRNOTAVAIL" } })).toEqual(["server.listen fail"]);
  });
});
