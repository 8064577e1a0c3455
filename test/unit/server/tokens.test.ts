import { afterAll, afterEach, beforeEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { StateStore } from "../../../src/server/state.ts";
import { authenticate, basic, bearer, newToken } from "../../../src/server/tokens.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";
import { NO_ALLOW } from "../../../src/server/allow.ts";

afterAll(removeTempDirs);

let store: StateStore;
beforeEach(() => {
  store = new StateStore(tempDir("relayctl-tokens-"));
});
afterEach(() => store.close());

/** A bare token as a door would extract it; null stays null. */
const cred = (token: string | null) => (token === null ? null : { token });

function enroll(name: string): string {
  const t = newToken();
  store.insertClient({ name, token_id: t.tokenId, token_hash: t.hash, ttl: null, allow: NO_ALLOW, created_at: 0, ipv6_prefix: null });
  return t.token;
}

describe("newToken", () => {
  test("ID.SECRET with a 16-hex id and a 43-char base64url secret; only the hash is kept", () => {
    const t = newToken();
    expect(t.token).toMatch(/^[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
    expect(t.token.startsWith(`${t.tokenId}.`)).toBe(true);
    const secret = t.token.split(".")[1]!;
    expect(Buffer.from(t.hash).equals(createHash("sha256").update(secret).digest())).toBe(true);
    expect(Buffer.from(t.hash).toString("hex")).not.toContain(Buffer.from(secret).toString("hex"));
  });

  test("tokens are unique", () => {
    const seen = new Set(Array.from({ length: 200 }, () => newToken().token));
    expect(seen.size).toBe(200);
  });
});

describe("authenticate", () => {
  test("the right token finds its client", () => {
    const tok = enroll("office");
    enroll("other");
    expect(authenticate(store, cred(tok))?.name).toBe("office");
  });

  test("a wrong secret with a valid id is refused", () => {
    const tok = enroll("office");
    const [id, secret] = tok.split(".") as [string, string];
    const flipped = secret.slice(0, -1) + (secret.endsWith("A") ? "B" : "A");
    expect(authenticate(store, cred(`${id}.${flipped}`))).toBeNull();
  });

  test("another client's secret under this id is refused", () => {
    const a = enroll("a");
    const b = enroll("b");
    expect(authenticate(store, cred(`${a.split(".")[0]}.${b.split(".")[1]}`))).toBeNull();
  });

  test("unknown ids, malformed tokens and no token are refused", () => {
    const tok = enroll("office");
    const [id, secret] = tok.split(".") as [string, string];
    for (const bad of [
      null,
      "",
      `ffffffffffffffff.${secret}`,
      id,
      secret,
      `${id}.`,
      `${id}.${secret}x`,
      `${id}.${secret.slice(1)}`,
      `${id.toUpperCase()}.${secret}`,
      ` ${tok}`,
      `${tok} `,
      `${tok}\n`,
      `${id}:${secret}`,
      `Bearer ${tok}`,
    ]) {
      expect(authenticate(store, cred(bad))).toBeNull();
    }
  });

  test("a revoked (deleted) client's token is refused", () => {
    const tok = enroll("office");
    expect(authenticate(store, cred(tok))).not.toBeNull();
    store.deleteClient("office");
    expect(authenticate(store, cred(tok))).toBeNull();
  });

  test("a user name, when sent, must be the token's own client", () => {
    const tok = enroll("office");
    enroll("other");
    expect(authenticate(store, { token: tok, name: "office" })?.name).toBe("office");
    expect(authenticate(store, { token: tok, name: "other" })).toBeNull();
    expect(authenticate(store, { token: tok, name: "" })).toBeNull();
  });
});

describe("bearer", () => {
  test("extracts the token", () => {
    expect(bearer("Bearer abc.def")).toEqual({ token: "abc.def" });
    expect(bearer("Bearer 0123456789abcdef.x-_y")).toEqual({ token: "0123456789abcdef.x-_y" });
  });

  test("the scheme is case-insensitive (RFC 9110)", () => {
    expect(bearer("bearer abc")).toEqual({ token: "abc" });
    expect(bearer("BEARER abc")).toEqual({ token: "abc" });
  });

  test("anything else is no token", () => {
    for (const bad of [null, "", "Bearer", "Bearer ", "Bearer  abc", "Basic dXNlcjpwYXNz", "Bearer abc def", "Bearer abc\n", "Token abc", "abc", " Bearer abc", "Bearerabc"]) {
      expect(bearer(bad)).toBeNull();
    }
  });
});

describe("basic", () => {
  const b64 = (s: string): string => Buffer.from(s, "utf8").toString("base64");

  test("extracts name and token; the scheme is case-insensitive", () => {
    expect(basic(`Basic ${b64("office:abc.def")}`)).toEqual({ name: "office", token: "abc.def" });
    expect(basic(`basic ${b64("office:a:b")}`)).toEqual({ name: "office", token: "a:b" });
  });

  test("anything else is no credential", () => {
    for (const bad of [null, "", "Basic", `Basic ${b64(":abc")}`, `Basic ${b64("nocolon")}`, `Bearer ${b64("office:abc")}`, `Basic ${b64("office:abc")} x`, "Basic !!!!"]) {
      expect(basic(bad)).toBeNull();
    }
  });

  test("a Basic credential authenticates only under its client's name", () => {
    const tok = enroll("office");
    expect(authenticate(store, basic(`Basic ${b64(`office:${tok}`)}`))?.name).toBe("office");
    expect(authenticate(store, basic(`Basic ${b64(`home:${tok}`)}`))).toBeNull();
  });
});
