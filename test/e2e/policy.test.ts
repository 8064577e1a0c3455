/**
 * lookup = "policy": a real Postfix asks relayctl over its policy-delegation
 * socket, placed after permit_auth_destination. Leases relay at once, leave
 * at the next RCPT, IPv6 leases match exactly, /64 prefix leases match their
 * /64 only, and a stopped relayctl defers relaying while local mail flows.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { lstatSync } from "node:fs";
import { requireE2E, swaks } from "./harness.ts";
import { addClient, onHost, relayctl, stage, type Stage } from "./relayctl.ts";

const enabled = requireE2E();

describe.if(enabled)("policy lookup with a real Postfix", () => {
  let s: Stage;
  beforeAll(async () => {
    s = await stage({
      prefix: "rcp",
      hook: "policy",
      prepare: async (st) => st.writeConfig({ lookup: "policy", policy_socket: st.policySocket, renewals_per_minute: 0 }),
      ready: async (st) => {
        await st.enroll(st.h1, "h1");
      },
    });
  }, 90_000);
  afterAll(async () => s?.cleanup());

  const renew = (name: string, extra: string[] = []) => onHost(s.h1, ["client", "--config", s.cfg(name), ...extra]);
  const local = async (from: "h1" | "h2") => swaks({ host: from === "h1" ? s.h1 : s.h2, server: s.smtp, to: "postmaster@relayctl.test" });

  test("socket: a unix socket under the queue directory, 0660 in a 2750 directory", () => {
    const sock = lstatSync(s.policySocket);
    expect(sock.isSocket()).toBe(true);
    expect(sock.mode & 0o777).toBe(0o660);
    const dir = lstatSync(s.policySocket.replace(/\/policy$/, ""));
    expect(dir.mode & 0o7777).toBe(0o2750);
  });

  test("leased relays (250), unleased is denied (554), local mail never asks", async () => {
    expect((await renew("h1")).code).toBe(0);
    expect(await s.relays(s.h1)).toBe(true);
    const other = await swaks({ host: s.h2, server: s.smtp });
    expect(other.denied).toBe(true);
    expect(other.code).toBe(554);
    expect((await local("h2")).code).toBe(250);
  });

  test("release, revoke and expiry deny at the very next RCPT", async () => {
    expect((await renew("h1", ["--release"])).code).toBe(0);
    expect(await s.relays(s.h1)).toBe(false);
    expect((await renew("h1")).code).toBe(0);
    expect(await s.relays(s.h1)).toBe(true);

    // A short-lived client: leased, then gone after its ttl with no rebuild or reload.
    const line = await addClient(s.config, "brief", ["--ttl", "10s"]);
    expect((await onHost(s.h2, [...line, "--config", s.cfg("brief")])).code).toBe(0);
    expect((await onHost(s.h2, ["client", "--config", s.cfg("brief")])).code).toBe(0);
    expect(await s.relays(s.h2)).toBe(true);
    await Bun.sleep(10_500);
    expect(await s.relays(s.h2)).toBe(false);

    const r = await relayctl(["server", "revoke", "h1", "--config", s.config]);
    expect(r.code).toBe(0);
    // Admin commands reach the running server within its 250 ms poll.
    await Bun.sleep(600);
    expect(await s.relays(s.h1)).toBe(false);
    await s.enroll(s.h1, "h1");
    expect((await renew("h1")).code).toBe(0);
  }, 60_000);

  test("IPv6: an address lease is exact; neighbours and other /64s are denied", async () => {
    const leased = "2001:db8:5::1";
    const line = await addClient(s.config, "v6", ["--allow", "2001:db8:5::/48"]);
    expect((await onHost(s.h1, [...line, "--config", s.cfg("v6")])).code).toBe(0);
    expect((await onHost(s.h1, ["client", "--config", s.cfg("v6"), "--ip", leased])).code).toBe(0);
    expect(await s.relaysFor(leased)).toBe(true);
    // LEASED:5, LEASED:abcd:5, LEASED:0:0:5 (the keys check_client_access would widen to), another /64, another /48.
    for (const neighbour of ["2001:db8:5::1:5", "2001:db8:5::1:abcd:5", "2001:db8:5::1:0:0:5", "2001:db8:5:1::1", "2001:db8:6::1"]) {
      expect({ neighbour, relays: await s.relaysFor(neighbour) }).toEqual({ neighbour, relays: false });
    }
  }, 60_000);

  test("IPv6 /64 prefix lease: every address of the /64 relays, nothing outside it", async () => {
    const line = await addClient(s.config, "lan", ["--ipv6-prefix", "64", "--allow", "2001:db8:1:2::/64"]);
    expect((await onHost(s.h1, [...line, "--config", s.cfg("lan")])).code).toBe(0);
    expect((await onHost(s.h1, ["client", "--config", s.cfg("lan"), "--ip", "2001:db8:1:2::10"])).code).toBe(0);
    const list = JSON.parse((await relayctl(["server", "list", "--json", "--config", s.config])).stdout);
    expect(list.clients.find((c: { name: string }) => c.name === "lan").leases[0].ip).toBe("2001:db8:1:2::/64");
    for (const inside of ["2001:db8:1:2::10", "2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::5"]) expect(await s.relaysFor(inside)).toBe(true);
    for (const outside of ["2001:db8:1:3::10", "2001:db8:1::10", "2001:db8:0:2::10"]) expect(await s.relaysFor(outside)).toBe(false);
    // An allow list must hold the whole /64, not just the address.
    const narrow = await addClient(s.config, "narrow", ["--ipv6-prefix", "64", "--allow", "2001:db8:1:2::10/128"]);
    expect((await onHost(s.h1, [...narrow, "--config", s.cfg("narrow")])).code).toBe(0);
    const refused = await onHost(s.h1, ["client", "--config", s.cfg("narrow"), "--ip", "2001:db8:1:2::10"]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain("outside the allow list");
  }, 60_000);

  test("relayctl stopped: relay attempts are deferred (4xx), local mail still 250; restarted: leases relay again", async () => {
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.server!.stop()).toBe(0);
    s.server = undefined;
    const deferred = await swaks({ host: s.h1, server: s.smtp });
    expect(deferred.code).toBeGreaterThanOrEqual(400);
    expect(deferred.code).toBeLessThan(500);
    expect((await local("h1")).code).toBe(250);
    await s.start();
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.relays(s.h2)).toBe(false);
  }, 60_000);

  test("doctor: socket, modes and placement pass; status names the socket", async () => {
    const st = JSON.parse((await relayctl(["server", "status", "--json", "--config", s.config])).stdout);
    expect(st.lookup).toBe("policy");
    expect(st.policy).toEqual({ socket: s.policySocket, listening: true });
    const d = await relayctl(["doctor", "--json", "--config", s.config, "--postfix-dir", s.postfix.configDir]);
    const checks = JSON.parse(d.stdout).checks as { id: string; status: string; message: string }[];
    for (const id of ["policy.hook", "policy.socket", "policy.socket_dir", "policy.answer"]) {
      expect({ id, status: checks.find((c) => c.id === id)?.status, message: checks.find((c) => c.id === id)?.message }).toMatchObject({ id, status: "pass" });
    }
  }, 60_000);
});
