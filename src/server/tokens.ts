import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { ClientRow, StateStore } from "./state.ts";
import type { Store } from "./stores/index.ts";

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

/**
 * A credential as a front door extracted it: the token, and for doors that
 * also send a user name (HTTP Basic, dyndns2) the client name it must match.
 */
export interface Credential {
  token: string;
  name?: string;
}

/**
 * Finds the client a credential belongs to, comparing hashes in constant
 * time; null if none. One token store, whatever door the credential came
 * through (deSEC's several extractors over one store).
 */
export function authenticate(store: StateStore, credential: Credential | null): ClientRow | null {
  const m = credential ? TOKEN_RE.exec(credential.token) : null;
  return check(m, m ? store.getClientByTokenId(m[1]!) : null, credential);
}

/** authenticate() over any store: one read by token id, then the same constant-time check. */
export async function authenticateIn(store: Store, credential: Credential | null): Promise<ClientRow | null> {
  const m = credential ? TOKEN_RE.exec(credential.token) : null;
  return check(m, m ? await store.getClientByTokenId(m[1]!) : null, credential);
}

function check(m: RegExpExecArray | null, client: ClientRow | null, credential: Credential | null): ClientRow | null {
  const presented = hashSecret(m ? m[2]! : "");
  const expected = client ? Buffer.from(client.token_hash) : DUMMY_HASH;
  const ok = timingSafeEqual(presented, expected);
  // A user name, when one is sent, must be the token's own client.
  const nameOk = credential?.name === undefined || credential.name === client?.name;
  return ok && nameOk && client ? client : null;
}

/** Extracts the token from an `Authorization: Bearer ...` header value (scheme in any case). */
export function bearer(header: string | null): Credential | null {
  const m = header ? /^Bearer ([^\s]+)$/i.exec(header) : null; // the scheme is case-insensitive (RFC 9110)
  return m ? { token: m[1]! } : null;
}

/** Extracts name and token from an `Authorization: Basic ...` header value. */
export function basic(header: string | null): Credential | null {
  const m = header ? /^Basic ([A-Za-z0-9+/=]{1,400})$/i.exec(header) : null;
  if (!m) return null;
  const text = Buffer.from(m[1]!, "base64").toString("utf8");
  const colon = text.indexOf(":");
  return colon > 0 ? { name: text.slice(0, colon), token: text.slice(colon + 1) } : null;
}
