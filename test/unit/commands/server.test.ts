import { describe, expect, test } from "bun:test";
import { renderEdit, statusProblem } from "../../../src/commands/server.ts";
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
