import { afterAll, afterEach, beforeEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { StateStore } from "../../../src/server/state.ts";
import { authenticate, bearer, newToken } from "../../../src/server/tokens.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

let store: StateStore;
beforeEach(() => {
  store = new StateStore(tempDir("relayctl-tokens-"));
});
afterEach(() => store.close());

function enroll(name: string): string {
  const t = newToken();
  store.insertClient({ name, token_id: t.tokenId, token_hash: t.hash, ttl: null, allow: "[]", created_at: 0 });
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
    expect(authenticate(store, tok)?.name).toBe("office");
  });

  test("a wrong secret with a valid id is refused", () => {
    const tok = enroll("office");
    const [id, secret] = tok.split(".") as [string, string];
    const flipped = secret.slice(0, -1) + (secret.endsWith("A") ? "B" : "A");
    expect(authenticate(store, `${id}.${flipped}`)).toBeNull();
  });

  test("another client's secret under this id is refused", () => {
    const a = enroll("a");
    const b = enroll("b");
    expect(authenticate(store, `${a.split(".")[0]}.${b.split(".")[1]}`)).toBeNull();
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
      expect(authenticate(store, bad)).toBeNull();
    }
  });

  test("a revoked (deleted) client's token is refused", () => {
    const tok = enroll("office");
    expect(authenticate(store, tok)).not.toBeNull();
    store.deleteClient("office");
    expect(authenticate(store, tok)).toBeNull();
  });
});

describe("bearer", () => {
  test("extracts the token", () => {
    expect(bearer("Bearer abc.def")).toBe("abc.def");
    expect(bearer("Bearer 0123456789abcdef.x-_y")).toBe("0123456789abcdef.x-_y");
  });

  test("the scheme is case-insensitive (RFC 9110)", () => {
    expect(bearer("bearer abc")).toBe("abc");
    expect(bearer("BEARER abc")).toBe("abc");
  });

  test("anything else is no token", () => {
    for (const bad of [null, "", "Bearer", "Bearer ", "Bearer  abc", "Basic dXNlcjpwYXNz", "Bearer abc def", "Bearer abc\n", "Token abc", "abc", " Bearer abc", "Bearerabc"]) {
      expect(bearer(bad)).toBeNull();
    }
  });
});
