import { describe, expect, test } from "bun:test";
import { allowListFromFlags, allowListOf, allowText, NO_ALLOW, parseAllowList } from "../../../src/server/allow.ts";
import { parseCidr } from "../../../src/lib/ip.ts";

describe("AllowList", () => {
  test("the column text parses into networks and is kept as is for the compare-and-set", () => {
    const l = parseAllowList('["192.0.2.0/24","2001:db8::/32"]');
    expect(l.broken).toBeNull();
    expect(l.nets.map((n) => n.text)).toEqual(["192.0.2.0/24", "2001:db8::/32"]);
    expect(l.stored).toBe('["192.0.2.0/24","2001:db8::/32"]');
    expect(allowText(l)).toBe("192.0.2.0/24 2001:db8::/32");
  });

  test("flags serialise to the same column format the stores always held", () => {
    expect(allowListFromFlags(["192.0.2.7", "2001:DB8::/32"]).stored).toBe('["192.0.2.7/32","2001:db8::/32"]');
    expect(allowListOf([parseCidr("192.0.2.0/24")!]).stored).toBe('["192.0.2.0/24"]');
    expect(NO_ALLOW.stored).toBe("[]");
    expect(allowText(NO_ALLOW)).toBe("(none)");
    expect(() => allowListFromFlags(["192.0.2.1/24"])).toThrow("zero host bits");
  });

  test("anything else read back is broken, with no networks, and says why", () => {
    for (const [text, why] of [["{", "not JSON"], ['"192.0.2.0/24"', "not a list"], ['["192.0.2.0/24","x"]', 'invalid entry "x"'], ["[7]", "invalid entry 7"], ['["192.0.2.1/24"]', "invalid entry"]]) {
      const l = parseAllowList(text!);
      expect(l.nets).toEqual([]);
      expect(l.broken).toContain(why!);
      expect(l.stored).toBe(text!);
      expect(allowText(l)).toStartWith("(unreadable: ");
    }
  });
});
