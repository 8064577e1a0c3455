import { describe, expect, test } from "bun:test";
import { formatDuration, parseDuration } from "../../../src/lib/duration.ts";
import { ExitCode, RelayError } from "../../../src/lib/errors.ts";

describe("parseDuration", () => {
  test.each([
    ["90s", 90],
    ["20m", 1200],
    ["1h", 3600],
    ["2d", 172800],
    ["45", 45],
    ["1", 1],
    ["0090s", 90],
    ["999999999", 999999999],
  ])("%s = %d seconds", (input, seconds) => {
    expect(parseDuration(input as string)).toBe(seconds as number);
  });

  test("numbers (TOML integers) are seconds", () => {
    expect(parseDuration(1200)).toBe(1200);
    expect(parseDuration(1)).toBe(1);
  });

  const BAD_TEXT = ["0", "0s", "0m", "-5", "-5m", "1.5m", "1.5", " 20m", "20m ", "20 m", "20m\n", "m", "", "20M", "20min", "1h30m", "1e3", "+20m", "0x10", "1234567890"];
  for (const bad of BAD_TEXT) {
    test(`rejects ${JSON.stringify(bad)} with a usage error naming where`, () => {
      let err: unknown;
      try {
        parseDuration(bad, "server.toml:3: ttl");
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RelayError);
      expect((err as RelayError).exitCode).toBe(ExitCode.USAGE);
      expect((err as RelayError).message).toStartWith("server.toml:3: ttl: ");
      expect((err as RelayError).hint).toContain("20m");
    });
  }

  test.each([0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, -60])("rejects the number %p", (n) => {
    expect(() => parseDuration(n)).toThrow(RelayError);
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
    expect(parseDuration(text as string)).toBe(s as number);
  });
});
