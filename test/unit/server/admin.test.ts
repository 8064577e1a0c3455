import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { ExitCode } from "../../../src/lib/errors.ts";
import { parseCidr } from "../../../src/lib/ip.ts";
import { certificatePin } from "../../../src/lib/tls.ts";
import { addClient, editClient, listClients, publicUrlProblem, revokeClient, rotateToken, serverStatus } from "../../../src/server/admin.ts";
import { StateLock } from "../../../src/server/lock.ts";
import { openCore, openLookup } from "../../../src/server/core.ts";
import { StateStore } from "../../../src/server/state.ts";
import { authenticate } from "../../../src/server/tokens.ts";
import { fakePostmap, relayError, removeTempDirs, silenceLogger, tempDir, writeServerConfig } from "../helpers.ts";

beforeAll(silenceLogger);
afterAll(removeTempDirs);

// The token never appears in the line: it is read from stdin (--token -).
const ENROLL_LINE = /^relayctl client enroll https:\/\/127\.0\.0\.1:8443 --name ([a-z0-9._-]+) --token - --pin (sha256:[0-9a-f]{64})$/;
const TOKEN = /^[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/;

function setup(extra?: string): { dir: string; configPath: string; stateDir: string; mapPath: string } {
  const dir = tempDir("relayctl-admin-");
  const configPath = writeServerConfig(dir, { postmap: fakePostmap(join(dir)).path, extra });
  return { dir, configPath, stateDir: join(dir, "state"), mapPath: join(dir, "postfix", "clients") };
}

function withStore<T>(stateDir: string, fn: (s: StateStore) => T): T {
  const s = new StateStore(stateDir);
  try {
    return fn(s);
  } finally {
    s.close();
  }
}

describe("addClient", () => {
  test("--dyndns without --ttl stores a 26h ttl; with --ttl that one; without --dyndns the server default", async () => {
    const s = setup();
    const d = await addClient({ configPath: s.configPath, name: "router", dyndns: true });
    const t = await addClient({ configPath: s.configPath, name: "nas", dyndns: true, ttl: 3 * 86400 });
    const plain = await addClient({ configPath: s.configPath, name: "office" });
    expect([d.ttl, t.ttl, plain.ttl]).toEqual([26 * 3600, 3 * 86400, null]);
    expect(withStore(s.stateDir, (st) => ["router", "nas", "office"].map((n) => st.getClient(n)!.ttl))).toEqual([93600, 259200, null]);
    expect(d.cert).toEqual({ path: join(s.stateDir, "tls", "cert.pem"), pin: d.pin, generated: true });
    expect(d.pin).toBe(certificatePin(readFileSync(d.cert.path, "utf8")));
  });

  test("gives the enrollment line (token on stdin, never in it), a working token and the certificate's pin", async () => {
    const s = setup();
    const r = await addClient({ configPath: s.configPath, name: "office" });
    const m = ENROLL_LINE.exec(r.line);
    expect(m).not.toBeNull();
    expect(m![1]).toBe("office");
    expect(r.token).toMatch(TOKEN);
    expect(r.line).not.toContain(r.token);
    expect(m![2]).toBe(r.pin);
    expect(r.urlProblem).toBeNull();
    expect(r.pin).toBe(certificatePin(readFileSync(join(s.stateDir, "tls", "cert.pem"), "utf8")));
    withStore(s.stateDir, (store) => {
      expect(authenticate(store, { token: r.token })?.name).toBe("office");
      expect(store.auditLog({ client: "office" })[0]).toMatchObject({ event: "add", detail: null });
    });
    // The certificate is made once: a second client gets the same pin.
    const r2 = await addClient({ configPath: s.configPath, name: "home" });
    expect(r2.pin).toBe(r.pin);
    expect(r2.token).not.toBe(r.token);
  });

  test("a duplicate name is a usage error (exit 2) and keeps the first token valid", async () => {
    const s = setup();
    const first = await addClient({ configPath: s.configPath, name: "office" });
    const err = await relayError(() => addClient({ configPath: s.configPath, name: "office" }));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toBe("client office already exists");
    withStore(s.stateDir, (store) => {
      expect(authenticate(store, { token: first.token })?.name).toBe("office");
      expect(store.listClients()).toHaveLength(1);
    });
  });

  test("bad names, allow entries and ttls are usage errors and create nothing", async () => {
    const s = setup();
    for (const name of ["", "Office", "-x", "a b", "x".repeat(64), "../etc"]) {
      expect((await relayError(() => addClient({ configPath: s.configPath, name }))).exitCode).toBe(ExitCode.USAGE);
    }
    for (const allow of [["10.0.0.1/8"], ["192.0.2.0/33"], ["example.org"], ["192.0.2.0/24", "010.0.0.0/8"], [""]]) {
      const err = await relayError(() => addClient({ configPath: s.configPath, name: "ok", allow }));
      expect(err.exitCode).toBe(ExitCode.USAGE);
      expect(err.message).toStartWith("--allow ");
    }
    expect((await relayError(() => addClient({ configPath: s.configPath, name: "ok", ttl: 5 }))).exitCode).toBe(ExitCode.USAGE);
    const huge = await relayError(() => addClient({ configPath: s.configPath, name: "ok", ttl: 401 * 86400 }));
    expect(huge.exitCode).toBe(ExitCode.USAGE);
    expect(huge.message).toBe("--ttl: 401d is above the maximum of 400d");
    withStore(s.stateDir, (store) => expect(store.listClients()).toEqual([]));
  });

  test("allow entries are stored normalised and audited", async () => {
    const s = setup();
    await addClient({ configPath: s.configPath, name: "router", allow: ["2001:DB8::/32", "192.0.2.7"], ttl: 90 });
    const [c] = await listClients({ configPath: s.configPath });
    expect(c).toMatchObject({ name: "router", ttl: 90, allow: ["2001:db8::/32", "192.0.2.7/32"], leases: [] });
    withStore(s.stateDir, (store) => expect(store.auditLog({ client: "router" })[0]!.detail).toBe("allow 2001:db8::/32 192.0.2.7/32"));
  });
});

describe("publicUrlProblem", () => {
  test("a host name without a dot is named with the fix; names with a dot and IP literals pass", () => {
    const at = (publicUrl: string) => publicUrlProblem({ publicUrl, path: "/etc/relayctl/server.toml" });
    expect(at("https://mail:8443")).toBe(
      'https://mail:8443 names "mail", a host name without a dot (public_url, or this host\'s name when it is unset): clients on other hosts cannot resolve it: set public_url = "https://mail.example.org:8443" (this host\'s name in DNS) in /etc/relayctl/server.toml',
    );
    expect(at("https://localhost")).toContain('public_url = "https://localhost.example.org:443"');
    for (const ok of ["https://mail.example.org:8443", "https://198.51.100.7:8443", "https://[2001:db8::1]:8443"]) expect(at(ok)).toBeNull();
  });

  test("server add and rotate carry it when public_url has no dot", async () => {
    const dir = tempDir("relayctl-admin-");
    const configPath = writeServerConfig(dir, { postmap: fakePostmap(dir).path, extra: "" });
    writeFileSync(configPath, readFileSync(configPath, "utf8").replace(/^public_url = .*$/m, 'public_url = "https://relayhost:8443"'));
    expect((await addClient({ configPath, name: "office" })).urlProblem).toStartWith('https://relayhost:8443 names "relayhost"');
    expect((await rotateToken({ configPath, name: "office" })).urlProblem).toContain(configPath);
  });
});

describe("rotateToken", () => {
  test("gives what --dyndns prints: the client's own ttl, the certificate and the public URL", async () => {
    const s = setup();
    const added = await addClient({ configPath: s.configPath, name: "router", dyndns: true });
    const r = await rotateToken({ configPath: s.configPath, name: "router" });
    expect({ ttl: r.ttl, cert: r.cert, publicUrl: r.publicUrl }).toEqual({ ttl: 26 * 3600, cert: added.cert, publicUrl: "https://127.0.0.1:8443" });
    await addClient({ configPath: s.configPath, name: "office" });
    expect((await rotateToken({ configPath: s.configPath, name: "office" })).ttl).toBeNull();
  });

  test("the new token works, the old one is refused, the lease stays and the rotation is audited", async () => {
    const s = setup();
    const first = await addClient({ configPath: s.configPath, name: "office" });
    const core = await openCore(loadServerConfig(s.configPath));
    try {
      await core.leases.renew((await core.store.getClient("office"))!, parseCidr("198.51.100.7")!, "t");
    } finally {
      await core.store.close();
    }
    const r = await rotateToken({ configPath: s.configPath, name: "office" });
    expect(r.token).not.toBe(first.token);
    expect(r.pin).toBe(first.pin);
    expect(ENROLL_LINE.exec(r.line)?.[1]).toBe("office");
    expect(r.line).not.toContain(r.token);
    withStore(s.stateDir, (store) => {
      expect(authenticate(store, { token: r.token })?.name).toBe("office");
      expect(authenticate(store, { token: first.token })).toBeNull();
      expect(store.leasesOf("office").map((l) => l.ip)).toEqual(["198.51.100.7"]);
      expect(store.auditLog({ client: "office" })[0]!.event).toBe("rotate");
    });
    const err = await relayError(() => rotateToken({ configPath: s.configPath, name: "nobody" }));
    expect(err.exitCode).toBe(ExitCode.USAGE);
  });
});

describe("listClients", () => {
  test("clients sorted by name with the effective ttl and their leases", async () => {
    const s = setup('ttl = "30m"');
    await addClient({ configPath: s.configPath, name: "zeta" });
    await addClient({ configPath: s.configPath, name: "alpha", ttl: 600 });
    const core = await openCore(loadServerConfig(s.configPath), { now: () => Date.UTC(2030, 0, 1) });
    try {
      const zeta = (await core.store.getClient("zeta"))!;
      await core.leases.renew(zeta, parseCidr("198.51.100.7")!, "t");
      await core.leases.renew(zeta, parseCidr("198.51.100.7")!, "t");
    } finally {
      await core.store.close();
    }
    const list = await listClients({ configPath: s.configPath });
    expect(list.map((c) => [c.name, c.ttl])).toEqual([
      ["alpha", 600],
      ["zeta", 1800],
    ]);
    expect(list[0]!.leases).toEqual([]);
    expect(list[1]!.leases).toEqual([{ ip: "198.51.100.7", family: 4, renewed_at: "2030-01-01T00:00:00.000Z", expires_at: "2030-01-01T00:30:00.000Z", renewals: 1 }]);
    expect(new Date(list[0]!.created_at).toISOString()).toBe(list[0]!.created_at);
  });

  test("no clients: an empty list", async () => {
    expect(await listClients({ configPath: setup().configPath })).toEqual([]);
  });
});

describe("revokeClient", () => {
  async function withLease(s: ReturnType<typeof setup>): Promise<void> {
    await addClient({ configPath: s.configPath, name: "office" });
    await addClient({ configPath: s.configPath, name: "home" });
    const core = await openCore(loadServerConfig(s.configPath));
    try {
      await core.leases.renew((await core.store.getClient("office"))!, parseCidr("198.51.100.7")!, "t");
      await core.leases.renew((await core.store.getClient("home"))!, parseCidr("203.0.113.5")!, "t");
      const lookup = await openLookup(core);
      await lookup.publish();
      await lookup.close();
    } finally {
      await core.store.close();
    }
    expect(readFileSync(s.mapPath, "utf8")).toContain("198.51.100.7 OK");
  }

  test("with no server running, the map is rebuilt here", async () => {
    const s = setup();
    await withLease(s);
    const r = await revokeClient({ configPath: s.configPath, name: "office" });
    expect(r).toEqual({ removed: ["198.51.100.7"], mapUpdatedBy: "here" });
    const text = readFileSync(s.mapPath, "utf8");
    expect(text).not.toContain("198.51.100.7");
    expect(text).toContain("203.0.113.5 OK");
    expect(readFileSync(s.mapPath + ".db", "utf8")).toBe(text);
    withStore(s.stateDir, (store) => expect(store.getClient("office")).toBeNull());
    // The lock was released again.
    expect(StateLock.isHeld(s.stateDir)).toBe(false);
  });

  test("with a server holding the lock, state changes and the map is left to the server", async () => {
    const s = setup();
    await withLease(s);
    const before = readFileSync(s.mapPath, "utf8");
    const lock = StateLock.acquire(s.stateDir);
    try {
      const r = await revokeClient({ configPath: s.configPath, name: "office" });
      expect(r).toEqual({ removed: ["198.51.100.7"], mapUpdatedBy: "server" });
      expect(readFileSync(s.mapPath, "utf8")).toBe(before);
      withStore(s.stateDir, (store) => expect(store.getClient("office")).toBeNull());
      const err = await relayError(() => revokeClient({ configPath: s.configPath, name: "office" }));
      expect(err.exitCode).toBe(ExitCode.USAGE);
    } finally {
      lock.release();
    }
  });

  test("an unknown or invalid name is a usage error and leaves the lock free", async () => {
    const s = setup();
    await withLease(s);
    const err = await relayError(() => revokeClient({ configPath: s.configPath, name: "nobody" }));
    expect(err.exitCode).toBe(ExitCode.USAGE);
    expect(err.message).toBe("no client named nobody");
    expect((await relayError(() => revokeClient({ configPath: s.configPath, name: "Bad Name" }))).exitCode).toBe(ExitCode.USAGE);
    expect(StateLock.isHeld(s.stateDir)).toBe(false);
    expect(readFileSync(s.mapPath, "utf8")).toContain("198.51.100.7 OK");
  });

  test("a postmap that fails makes revoke fail, but the client is gone", async () => {
    const dir = tempDir("relayctl-admin-");
    const pm = fakePostmap(dir);
    const configPath = writeServerConfig(dir, { postmap: pm.path });
    await addClient({ configPath, name: "office" });
    pm.fail("postmap: fatal: broken");
    await expect(revokeClient({ configPath, name: "office" })).rejects.toThrow("broken");
    expect(await listClients({ configPath })).toEqual([]);
    expect(StateLock.isHeld(join(dir, "state"))).toBe(false);
  });
});

describe("editClient", () => {
  /** A client with allow list `allow` and a live lease on `ip`, already in the map. */
  async function leased(allow: string[], ip = "198.51.100.7", extra?: string) {
    const s = setup(extra);
    const { token } = await addClient({ configPath: s.configPath, name: "office", allow });
    const core = await openCore(loadServerConfig(s.configPath));
    const lookup = await openLookup(core);
    try {
      await core.leases.renew((await core.store.getClient("office"))!, parseCidr(ip)!, "t");
      await lookup.publish();
    } finally {
      await lookup.close();
      await core.store.close();
    }
    expect(readFileSync(s.mapPath, "utf8")).toContain(`${ip} OK`);
    return { ...s, token };
  }
  const leasesOf = (stateDir: string) => withStore(stateDir, (store) => store.leasesOf("office"));
  const lastAudit = (stateDir: string) => withStore(stateDir, (store) => store.auditLog({ client: "office", limit: 1 })[0]);

  test("a new allow list that leaves the lease out drops it and rebuilds the map here; the token keeps working", async () => {
    const s = await leased(["198.51.100.0/24"]);
    const r = await editClient({ configPath: s.configPath, name: "office", allow: ["203.0.113.0/24"] });
    expect(r).toEqual({
      changes: ["allow 198.51.100.0/24 -> 203.0.113.0/24"],
      dropped: [{ ip: "198.51.100.7", why: "198.51.100.7 is outside the allow list of client office" }],
      shortened: [],
      mapUpdatedBy: "here",
    });
    expect(readFileSync(s.mapPath, "utf8")).not.toContain("198.51.100.7");
    expect(leasesOf(s.stateDir)).toEqual([]);
    expect((await listClients({ configPath: s.configPath }))[0]!.allow).toEqual(["203.0.113.0/24"]);
    withStore(s.stateDir, (store) => expect(authenticate(store, { token: s.token })?.name).toBe("office"));
    expect(lastAudit(s.stateDir)).toMatchObject({ event: "edit", ip: "198.51.100.7", detail: "allow 198.51.100.0/24 -> 203.0.113.0/24; dropped 198.51.100.7: 198.51.100.7 is outside the allow list of client office" });
    expect(StateLock.isHeld(s.stateDir)).toBe(false);
  });

  test("a lease still inside the new list stays, and so does the map", async () => {
    const s = await leased(["198.51.100.0/24"]);
    const r = await editClient({ configPath: s.configPath, name: "office", allow: ["198.51.100.0/25", "2001:db8::/32"] });
    expect(r.dropped).toEqual([]);
    expect(leasesOf(s.stateDir).map((l) => l.ip)).toEqual(["198.51.100.7"]);
    expect(readFileSync(s.mapPath, "utf8")).toContain("198.51.100.7 OK");
  });

  test("a wide list does not keep a special address that only a narrow entry admitted", async () => {
    const s = await leased(["127.0.0.0/8"], "127.0.0.5");
    const r = await editClient({ configPath: s.configPath, name: "office", allow: ["0.0.0.0/0"] });
    expect(r.dropped).toEqual([{ ip: "127.0.0.5", why: "127.0.0.5 is a loopback address and cannot be leased" }]);
  });

  test("--clear-allow keeps an ordinary lease (only a renewal can tell where the client connects from)", async () => {
    const s = await leased(["198.51.100.0/24"]);
    const r = await editClient({ configPath: s.configPath, name: "office", clearAllow: true });
    expect(r.changes).toEqual(["allow 198.51.100.0/24 -> (none)"]);
    expect(r.dropped).toEqual([]);
    expect((await listClients({ configPath: s.configPath }))[0]!.allow).toEqual([]);
  });

  test("with a server holding the lock, state changes and the map is left to the server", async () => {
    const s = await leased(["198.51.100.0/24"]);
    const before = readFileSync(s.mapPath, "utf8");
    const lock = StateLock.acquire(s.stateDir);
    try {
      const r = await editClient({ configPath: s.configPath, name: "office", allow: ["192.0.2.0/24"] });
      expect(r.mapUpdatedBy).toBe("server");
      expect(r.dropped.map((d) => d.ip)).toEqual(["198.51.100.7"]);
      expect(readFileSync(s.mapPath, "utf8")).toBe(before);
      expect(leasesOf(s.stateDir)).toEqual([]);
    } finally {
      lock.release();
    }
  });

  test("a shorter ttl cuts the current lease to end a ttl from now; a longer one leaves it", async () => {
    const s = await leased([], "198.51.100.7", 'ttl = "1h"');
    const longer = await editClient({ configPath: s.configPath, name: "office", ttl: 2 * 3600 });
    expect(longer.changes).toEqual(["ttl default (1h) -> 2h"]);
    expect(longer.shortened).toEqual([]);
    const t0 = Date.now();
    const shorter = await editClient({ configPath: s.configPath, name: "office", ttl: 60 });
    expect(shorter.changes).toEqual(["ttl 2h -> 1m"]);
    expect(shorter.shortened.map((x) => x.ip)).toEqual(["198.51.100.7"]);
    const [lease] = leasesOf(s.stateDir);
    expect(lease!.expires_at).toBeGreaterThanOrEqual(t0 + 60_000);
    expect(lease!.expires_at).toBeLessThanOrEqual(Date.now() + 60_000);
    expect(new Date(lease!.expires_at).toISOString()).toBe(shorter.shortened[0]!.expires_at);
    expect((await listClients({ configPath: s.configPath }))[0]!.ttl).toBe(60);
  });

  test("the same values change nothing and write no audit entry", async () => {
    const s = await leased(["198.51.100.0/24"]);
    const before = lastAudit(s.stateDir);
    const r = await editClient({ configPath: s.configPath, name: "office", allow: ["198.51.100.0/24"] });
    expect(r.changes).toEqual([]);
    expect(lastAudit(s.stateDir)).toEqual(before);
  });

  test("bad requests are usage errors and change nothing", async () => {
    const s = await leased(["198.51.100.0/24"]);
    const cases: [Parameters<typeof editClient>[0], string][] = [
      [{ name: "office" }, "nothing to change"],
      [{ name: "office", allow: ["192.0.2.0/24"], clearAllow: true }, "--allow and --clear-allow do not go together"],
      [{ name: "nobody", ttl: 60 }, "no client named nobody"],
      [{ name: "office", allow: ["10.0.0.1/8"] }, "--allow 10.0.0.1/8: not an address or CIDR network with zero host bits"],
      [{ name: "office", ttl: 401 * 86400 }, "--ttl: 401d is above the maximum of 400d"],
      [{ name: "Bad Name", ttl: 60 }, "name: \"Bad Name\" is not a valid client name"],
    ];
    for (const [o, message] of cases) {
      const err = await relayError(() => editClient({ configPath: s.configPath, ...o }));
      expect({ message: err.message, code: err.exitCode }).toEqual({ message, code: ExitCode.USAGE });
    }
    expect((await listClients({ configPath: s.configPath }))[0]).toMatchObject({ allow: ["198.51.100.0/24"], ttl: 1200 });
    expect(lastAudit(s.stateDir)!.event).not.toBe("edit");
    expect(StateLock.isHeld(s.stateDir)).toBe(false);
  });
});

describe("serverStatus", () => {
  test("what Postfix reads comes from the lookup's row, under its own key: the map's entries, or the policy socket", async () => {
    const dir = tempDir();
    const pm = fakePostmap(dir);
    const asMap = await serverStatus({ configPath: writeServerConfig(dir, { postmap: pm.path }) });
    expect(asMap.lookup).toBe("map");
    expect(asMap.map).toMatchObject({ path: join(dir, "postfix", "clients"), type: "hash", frozen: { entries: 0, since: null } });
    expect(asMap.policy).toBeNull();
    const other = tempDir();
    const socket = join(other, "relayctl.sock");
    const asPolicy = await serverStatus({ configPath: writeServerConfig(other, { postmap: pm.path, extra: `lookup = "policy"\npolicy_socket = "${socket}"` }) });
    expect(asPolicy.lookup).toBe("policy");
    expect(asPolicy.map).toBeNull();
    expect(asPolicy.policy).toEqual({ socket, listening: false });
  });
});
