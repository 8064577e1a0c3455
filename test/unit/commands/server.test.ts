import { describe, expect, test } from "bun:test";
import { fingerprintOf, renderDyndnsEnrollment, renderEnrollment } from "../../../src/commands/server/add.ts";
import { renderEdit } from "../../../src/commands/server/edit.ts";
import { renderRevoke } from "../../../src/commands/server/revoke.ts";
import { statusProblem } from "../../../src/commands/server/status.ts";
import { ExitCode } from "../../../src/lib/errors.ts";
import type { StatusView } from "../../../src/server/admin.ts";
import type { ServerStatus } from "../../../src/server/runtime/status.ts";

const runtime = (degraded: string[]): ServerStatus => ({
  pid: 1,
  started_at: "2030-01-01T00:00:00.000Z",
  listen: "[::]:8443",
  public_url: "https://mail.example.org:8443",
  pin: `sha256:${"0".repeat(64)}`,
  pin_changed_at: null,
  cert_path: "/var/lib/relayctl/tls/cert.pem",
  cert_expires_at: "2040-01-01T00:00:00.000Z",
  lookup: { lookup: "map", target: "/m.db", path: "/m", db: "/m.db", type: "hash", entries: 0, rebuilds: 1, last_rebuild_at: null, last_rebuild_ms: null },
  degraded,
  reloaded_at: null,
});
const view = (running: boolean, status: ServerStatus | null, frozen = 0): StatusView => ({
  running,
  healthy: running && status !== null && status.degraded.length === 0 && frozen === 0,
  public_url: "https://mail.example.org:8443",
  cert: null,
  state: { kind: "sqlite", where: "/var/lib/relayctl" },
  state_error: null,
  lookup: "map",
  policy: null,
  map: { path: "/m", type: "hash", entries: frozen, frozen: { entries: frozen, since: frozen ? "2030-01-01T00:00:00.000Z" : null } },
  clients: 0,
  leases: 0,
  status,
});

describe("statusProblem: server status exits 0 only when running and healthy", () => {
  test("running and healthy: no problem", () => {
    expect(statusProblem(view(true, runtime([])))).toBeNull();
  });

  test.each([
    ["stopped", view(false, null), "server is not running", "systemctl start relayctl"],
    ["starting", view(true, null), "server holds its state but has not published its status yet", "ask again"],
    ["degraded", view(true, runtime(["map: postmap failed", "x"])), "server is degraded: map: postmap failed; x", "journalctl -u relayctl"],
    ["frozen", view(true, runtime([]), 2), "2 map entries have no live lease and still relay", "journalctl -u relayctl"],
  ])("%s: exit 1 with what is wrong and what to do", (_name, s, message, hint) => {
    const p = statusProblem(s as StatusView)!;
    expect(p.exitCode).toBe(ExitCode.FAILED);
    expect(p.message).toBe(message as string);
    expect(p.hint).toContain(hint as string);
  });
});

describe("renderEdit", () => {
  test("changes, dropped and shortened leases each on a line; the map line only when a lease went", () => {
    expect(renderEdit("office", { changes: [], dropped: [], shortened: [], mapUpdatedBy: "here" })).toBe("office: nothing changed");
    expect(
      renderEdit("office", {
        changes: ["ttl 2h -> 1m", "allow 192.0.2.0/24 -> (none)"],
        dropped: [{ ip: "192.0.2.7", why: "outside" }],
        shortened: [{ ip: "2001:db8::1", expires_at: "2030-01-01T00:01:00.000Z" }],
        mapUpdatedBy: "server",
      }),
    ).toBe(
      [
        "office: ttl 2h -> 1m, allow 192.0.2.0/24 -> (none)",
        "dropped lease 192.0.2.7: outside",
        "lease 2001:db8::1 now expires 2030-01-01T00:01:00.000Z (the new ttl from now)",
        "map updated by the running server",
      ].join("\n"),
    );
  });
});

describe("renderRevoke: the one line server revoke prints", () => {
  test("the leases that went, how many, and who updated the map", () => {
    expect(renderRevoke("nas", { removed: ["198.51.100.7", "2001:db8::1"], mapUpdatedBy: "here" })).toBe("revoked nas: 2 leases removed (198.51.100.7 2001:db8::1), token refused; map updated now");
    expect(renderRevoke("nas", { removed: ["198.51.100.7"], mapUpdatedBy: "server" })).toBe("revoked nas: 1 lease removed (198.51.100.7), token refused; map updated by the running server");
    expect(renderRevoke("nas", { removed: [], mapUpdatedBy: "here" })).toBe("revoked nas: no leases removed, token refused; map updated now");
  });
});

describe("renderEnrollment", () => {
  test("the line as given, then the token on a line of its own", () => {
    expect(renderEnrollment({ line: "relayctl client enroll https://mail.example.org:8443 --name nas --token - --pin sha256:ab", token: "0123456789abcdef.SECRET" })).toBe(
      "relayctl client enroll https://mail.example.org:8443 --name nas --token - --pin sha256:ab\ntoken: 0123456789abcdef.SECRET",
    );
  });
});

describe("renderDyndnsEnrollment: what a router's form needs", () => {
  const pin = `sha256:${"ab01".repeat(16)}`;
  const added = { token: "0123456789abcdef.SECRET", ttl: 93600, cert: { path: "/var/lib/relayctl/tls/cert.pem", pin, generated: true }, publicUrl: "https://mail.example.org:8443" };

  test("the update URL in each device's placeholders, user name, password, certificate and fingerprint", () => {
    const out = renderDyndnsEnrollment("router", added);
    for (const want of [
      "lease ttl 26h",
      "https://mail.example.org:8443/nic/update?hostname=<domain>&myip=<ipaddr>",
      "https://mail.example.org:8443/nic/update?hostname=[DOMAIN]&myip=[IP]",
      "https://mail.example.org:8443/nic/update?hostname=__HOSTNAME__&myip=__MYIP__",
      "https://mail.example.org:8443/nic/update?hostname=router&myip=%IP%",
      'ddns-server = "mail.example.org:8443"  ddns-path = "/nic/update?hostname=%h&myip=%i"',
      "server=mail.example.org:8443",
      "Username: router",
      "Password: 0123456789abcdef.SECRET",
      "Certificate: /var/lib/relayctl/tls/cert.pem",
      `SHA-256 fingerprint ${"AB:01:".repeat(15)}AB:01`,
      "self-signed",
      "tls_cert",
    ]) {
      expect(out).toContain(want);
    }
    expect(out).not.toContain("relayctl client enroll");
    expect(out).not.toContain("WARNING");
  });

  test("warns when ddclient could not use the server name (no dot); a configured certificate gets no self-signed note", () => {
    const out = renderDyndnsEnrollment("router", { ...added, publicUrl: "https://mail:8443", cert: { ...added.cert, generated: false } });
    expect(out).toContain("server=mail:8443   (WARNING: ddclient needs a name with a dot or an IP literal here)");
    expect(out).not.toContain("self-signed");
    expect(renderDyndnsEnrollment("router", { ...added, publicUrl: "https://198.51.100.1:8443" })).not.toContain("WARNING");
  });

  test("fingerprintOf: the pin's hex in colon-separated upper case", () => {
    expect(fingerprintOf("sha256:0a1b2c")).toBe("0A:1B:2C");
  });
});
