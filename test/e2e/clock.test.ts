/**
 * A stepped system clock must neither expire every lease nor keep them
 * forever. libfaketime moves the server's wall clock (and only it) while it
 * runs; relaying is checked with swaks after each jump.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { e2eRequired, requireE2E } from "./harness.ts";
import { onHost, stage, type Stage } from "./relayctl.ts";

setDefaultTimeout(60_000);
const FAKETIME = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"].find((p) => existsSync(p));
const enabled = requireE2E();
if (enabled && !FAKETIME && e2eRequired()) throw new Error("libfaketime missing: as root, test/prereqs.sh installs it");

describe.skipIf(!enabled || !FAKETIME)("wall clock jumps", () => {
  let s: Stage;
  let third: string[];
  const clockFile = (): string => join(s.tmp.path, "faketime");

  beforeAll(async () => {
    s = await stage({
      prefix: "rck",
      start: false,
      prepare: async (st) => {
        st.writeConfig({ ttl: "20m" });
        const file = join(st.tmp.path, "faketime");
        writeFileSync(file, "+0\n");
        await st.start({
          LD_PRELOAD: FAKETIME!,
          FAKETIME_TIMESTAMP_FILE: file,
          FAKETIME_NO_CACHE: "1",
          // Timers run on the monotonic clock, which a real clock step leaves alone too.
          FAKETIME_DONT_FAKE_MONOTONIC: "1",
        });
      },
      ready: async (st) => {
        for (const [host, name, extra] of [[st.h1, "long", []], [st.h2, "short", ["--ttl", "10s"]], [st.h2, "third", ["--allow", "198.18.0.0/24"]]] as const) {
          await st.enroll(host, name, [...extra]);
          if (name !== "third") expect((await onHost(host, ["client", "--config", st.cfg(name)])).code).toBe(0);
        }
      },
    });
    third = ["client", "--config", s.cfg("third"), "--ip", "198.18.0.9"];
  }, 180_000);

  afterAll(() => s?.cleanup());

  test("a jump forward by two days does not expire live leases", async () => {
    expect(await s.relays(s.h1)).toBe(true);
    writeFileSync(clockFile(), "+2d\n");
    // A new grant rebuilds the map from "live" leases: judged by the stepped
    // wall clock, every other lease would be gone from it.
    expect((await onHost(s.h2, third)).code).toBe(0);
    expect(await s.relays(s.h1)).toBe(true);
    expect(await s.relays(s.h2)).toBe(true);
  });

  test("a jump back by two days does not keep a lease past its ttl", async () => {
    writeFileSync(clockFile(), "-2d\n");
    // "short" was granted with a 10 s ttl before both jumps.
    await Bun.sleep(11_000);
    expect(await s.relays(s.h2)).toBe(false);
    expect(await s.relays(s.h1)).toBe(true);
  }, 30_000);
});
