import { describe, expect, test } from "bun:test";
import { renderEdit } from "../../../src/commands/server.ts";

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
