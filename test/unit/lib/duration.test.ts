import { describe, expect, test } from "bun:test";
import { checkDuration, DURATION_LIMITS, formatDuration, parseDuration, type DurationSetting } from "../../../src/lib/duration.ts";
import { ExitCode, RelayError } from "../../../src/lib/errors.ts";

/** The RelayError fn throws; fails the test when it throws nothing. */
function usage(fn: () => unknown): RelayError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(RelayError);
    expect((err as RelayError).exitCode).toBe(ExitCode.USAGE);
    return err as RelayError;
  }
  throw new Error("expected a usage error");
}

describe("parseDuration", () => {
  test.each([
    ["90s", 90],
    ["20m", 1200],
    ["1h", 3600],
    ["2d", 172800],
    ["45", 45],
    ["1", 1],
    ["0090s", 90],
    ["315360000", 315360000],
  ])("%s = %d seconds", (input, seconds) => {
    expect(parseDuration(input as string, "audit_retention")).toBe(seconds as number);
  });

  test("numbers (TOML integers) are seconds", () => {
    expect(parseDuration(1200, "ttl")).toBe(1200);
    expect(parseDuration(1, "postmap_timeout")).toBe(1);
  });

  const BAD_TEXT = ["0", "0s", "0m", "-5", "-5m", "1.5m", "1.5", " 20m", "20m ", "20 m", "20m\n", "m", "", "20M", "20min", "1h30m", "1e3", "+20m", "0x10", "1234567890"];
  for (const bad of BAD_TEXT) {
    test(`rejects ${JSON.stringify(bad)} with a usage error naming where`, () => {
      const err = usage(() => parseDuration(bad, "ttl", "server.toml:3: ttl"));
      expect(err.message).toStartWith("server.toml:3: ttl: ");
      expect(err.hint).toContain("20m");
    });
  }

  test.each([0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, -60])("rejects the number %p", (n) => {
    expect(() => parseDuration(n, "ttl")).toThrow(RelayError);
  });
});

describe("DURATION_LIMITS", () => {
  const settings = Object.keys(DURATION_LIMITS) as DurationSetting[];

  test.each(settings)("%s: both bounds accepted, one second beyond each refused with exit 2", (setting) => {
    const { min, max } = DURATION_LIMITS[setting];
    expect(parseDuration(formatDuration(min), setting)).toBe(min);
    expect(parseDuration(formatDuration(max), setting)).toBe(max);
    if (min > 1) expect(usage(() => parseDuration(min - 1, setting, "--flag")).message).toBe(`--flag: ${formatDuration(min - 1)} is below the minimum of ${formatDuration(min)}`);
    const err = usage(() => parseDuration(max + 1, setting, "--flag"));
    expect(err.message).toBe(`--flag: ${formatDuration(max + 1)} is above the maximum of ${formatDuration(max)}`);
    expect(err.hint).toStartWith(`use ${formatDuration(max)} or less (`);
  });

  test.each(settings)("%s: the maximum stays inside what a timer and a date can hold", (setting) => {
    const { min, max } = DURATION_LIMITS[setting];
    expect(min).toBeGreaterThan(0);
    expect(max).toBeGreaterThan(min);
    // Every duration ends up as milliseconds added to now, in timers (postmap, watch) or dates (expiry).
    expect(() => new Date(Date.now() + max * 1000).toISOString()).not.toThrow();
  });

  test("the documented ceilings: ttl 400d, postmap_timeout 5m, audit_retention 3650d", () => {
    expect(formatDuration(DURATION_LIMITS.ttl.max)).toBe("400d");
    expect(formatDuration(DURATION_LIMITS.ttl.min)).toBe("10s");
    expect(formatDuration(DURATION_LIMITS.postmap_timeout.max)).toBe("5m");
    expect(formatDuration(DURATION_LIMITS.audit_retention.max)).toBe("3650d");
    // A timer longer than 2^31 ms fires after 1 ms; postmap_timeout is the one setting used as a timer on the server.
    expect(DURATION_LIMITS.postmap_timeout.max * 1000).toBeLessThan(2 ** 31);
    expect(DURATION_LIMITS.interval.max * 1000).toBeLessThan(2 ** 31);
  });

  test("the absurd values of the issue are refused", () => {
    expect(usage(() => parseDuration("99999999d", "ttl", "--ttl")).message).toBe("--ttl: 99999999d is above the maximum of 400d");
    expect(usage(() => parseDuration("25d", "postmap_timeout", "server.toml:4: postmap_timeout")).message).toBe("server.toml:4: postmap_timeout: 25d is above the maximum of 5m");
  });

  test("checkDuration bounds seconds that did not come from text", () => {
    expect(checkDuration(600, "ttl", "--ttl")).toBe(600);
    expect(usage(() => checkDuration(5, "ttl", "--ttl")).message).toBe("--ttl: 5s is below the minimum of 10s");
  });
});

describe("formatDuration", () => {
  test.each([
    [1200, "20m"],
    [90, "90s"],
    [3600, "1h"],
    [5400, "90m"],
    [86400, "1d"],
    [90000, "25h"],
    [59, "59s"],
    [61, "61s"],
  ])("%d -> %s", (s, text) => {
    expect(formatDuration(s as number)).toBe(text as string);
    expect(parseDuration(text as string, "ttl")).toBe(s as number);
  });
});
