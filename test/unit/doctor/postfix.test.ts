import { describe, expect, test } from "bun:test";
import { mainCfLines, parsePostconfN, parseTableRef, splitPostfixList } from "../../../src/doctor/postfix.ts";
import { buildReport, fail, pass, renderHuman, shellQuote, warn } from "../../../src/doctor/checks.ts";

describe("splitPostfixList", () => {
  test("commas and any whitespace separate items", () => {
    expect(splitPostfixList("127.0.0.0/8, [::1]/128\thash:/etc/postfix/x,,  cidr:/y")).toEqual(["127.0.0.0/8", "[::1]/128", "hash:/etc/postfix/x", "cidr:/y"]);
  });
  test("braces group an item and are dropped around a whole item", () => {
    expect(splitPostfixList("check_client_access { hash:/a }, inline:{ 1.2.3.4=OK, 5.6.7.8=OK }")).toEqual(["check_client_access", "hash:/a", "inline:{ 1.2.3.4=OK, 5.6.7.8=OK }"]);
  });
  test("empty value gives no items", () => {
    expect(splitPostfixList("   ")).toEqual([]);
  });
});

describe("table references and main.cf lines", () => {
  test("parseTableRef looks through proxy: and needs an absolute path", () => {
    expect(parseTableRef("proxy:lmdb:/etc/postfix/c")).toEqual({ type: "lmdb", path: "/etc/postfix/c" });
    expect(parseTableRef("hash:relative")).toBeNull();
    expect(parseTableRef("permit_mynetworks")).toBeNull();
  });
  test("parsePostconfN reads name = value lines, empty values too", () => {
    const m = parsePostconfN("mynetworks = 127.0.0.0/8 $x\nrelayhost =\n");
    expect(m.get("mynetworks")).toBe("127.0.0.0/8 $x");
    expect(m.get("relayhost")).toBe("");
  });
  test("mainCfLines tells set from commented-out and ignores continuation lines", () => {
    const text = "# mynetworks = hash:/x\nfoo = 1\n  mynetworks = 2\nmynetworks = 3\n";
    expect(mainCfLines(text, "mynetworks")).toEqual({ set: 4, commented: 1 });
    expect(mainCfLines("#mynetworks=1", "mynetworks")).toEqual({ set: undefined, commented: 1 });
  });
});

describe("report", () => {
  test("ok is false only when something failed; warnings are fine", () => {
    expect(buildReport([pass("a", "x"), warn("b", "y", "z")]).ok).toBe(true);
    expect(buildReport([pass("a", "x"), fail("b", "y")]).ok).toBe(false);
  });
  test("human output: one line per check, indented fixes, no colour unless asked", () => {
    const out = renderHuman(buildReport([pass("a.b", "fine"), fail("c", "broken", "chmod 600 /x\nor else")]), false);
    expect(out).toContain("PASS  a.b  fine");
    expect(out).toMatch(/FAIL  c +broken\n +fix: chmod 600 \/x\n +or else/);
    expect(out).not.toContain("\x1b[");
    expect(renderHuman(buildReport([fail("c", "broken")]), true)).toContain("\x1b[31mFAIL");
  });
  test("shellQuote quotes only what needs it", () => {
    expect(shellQuote("/etc/postfix")).toBe("/etc/postfix");
    expect(shellQuote("a = b")).toBe("'a = b'");
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
  });
});
