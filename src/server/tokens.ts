import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { ClientRow, StateStore } from "./state.ts";

const TOKEN_RE = /^([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;
// Compared against when the token id is unknown, so a miss costs as much as a hit.
const DUMMY_HASH = createHash("sha256").update("relayctl-no-such-token").digest();

function hashSecret(secret: string): Buffer {
  return createHash("sha256").update(secret).digest();
}

/** A new token `ID.SECRET`: the id finds the client, only a hash of the secret is stored. */
export function newToken(): { token: string; tokenId: string; hash: Buffer } {
  const tokenId = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return { token: `${tokenId}.${secret}`, tokenId, hash: hashSecret(secret) };
}

/** Finds the client a bearer token belongs to, comparing hashes in constant time; null if none. */
export function authenticate(store: StateStore, token: string | null): ClientRow | null {
  const m = token ? TOKEN_RE.exec(token) : null;
  const client = m ? store.getClientByTokenId(m[1]!) : null;
  const presented = hashSecret(m ? m[2]! : "");
  const expected = client ? Buffer.from(client.token_hash) : DUMMY_HASH;
  const ok = timingSafeEqual(presented, expected);
  return ok && client ? client : null;
}

/** Extracts the token from an `Authorization: Bearer ...` header value (scheme in any case). */
export function bearer(header: string | null): string | null {
  const m = header ? /^Bearer ([^\s]+)$/i.exec(header) : null; // the scheme is case-insensitive (RFC 9110)
  return m ? m[1]! : null;
}
