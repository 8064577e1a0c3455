/**
 * The JSON shapes that cross the wire between `relayctl client` and the
 * server's /v1/lease and /healthz, in one place so both ends change
 * together. Every JSON answer the server sends is one of WireBody.
 */

/** A lease as GET /v1/lease and `server list --json` show it. */
export interface LeaseView {
  ip: string;
  family: number;
  renewed_at: string;
  expires_at: string;
}

/** The answer to POST /v1/lease. */
export interface LeaseAnswerBody {
  client: string;
  ip: string;
  expires_at: string;
  ttl: number;
  event?: string;
}

/** The answer to GET /v1/lease: the address the server sees and the current leases. */
export interface LeaseStatusBody {
  client: string;
  ip: string;
  ttl: number;
  leases: LeaseView[];
}

/** The answer to DELETE /v1/lease. */
export interface ReleaseBody {
  client: string;
  released: string[];
}

/** Every error answer: a code for programs, a sentence for people. */
export interface ErrorBody {
  error: string;
  message: string;
}

/** The answer to GET /healthz: ok, or degraded with why. */
export type HealthBody = { status: "ok" } | { status: "degraded"; reasons: string[] };

/** Every JSON answer the server sends. */
export type WireBody = LeaseAnswerBody | LeaseStatusBody | ReleaseBody | ErrorBody | HealthBody;
