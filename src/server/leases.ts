import type { Ip } from "../lib/ip.ts";
import type { ClientRow, LeaseRow, StateStore } from "./state.ts";

/** Wall-clock source, injectable so tests can move time. */
export interface Clock {
  now(): number;
}
export const systemClock: Clock = { now: () => Date.now() };

/**
 * Wall time that advances with the monotonic clock from the moment it is
 * made: a system clock stepped forward or back neither expires every lease
 * at once nor keeps them forever. Slewing (NTP) moves both alike.
 */
export function monotonicWallClock(wall: () => number = Date.now, mono: () => number = () => performance.now()): Clock {
  const anchorWall = wall();
  const anchorMono = mono();
  // Whole milliseconds: the STRICT INTEGER columns in state refuse fractions.
  return { now: () => Math.floor(anchorWall + (mono() - anchorMono)) };
}

export type RenewEvent = "grant" | "renew" | "replace";

/** What a renewal did, and whether the map must change because of it. */
export interface RenewResult {
  event: RenewEvent;
  lease: LeaseRow;
  replaced?: string;
  mapChanged: boolean;
}

/** Lease rules: one lease per client and family, replaced at once, expiring ttl after the last renewal. */
export class LeaseBook {
  constructor(
    private readonly store: StateStore,
    private readonly defaultTtl: () => number,
    private readonly clock: Clock = systemClock,
  ) {}

  /** The ttl in seconds that applies to a client. */
  ttlOf(client: ClientRow): number {
    return client.ttl ?? this.defaultTtl();
  }

  /** Grants, renews or replaces the client's lease for ip's family. */
  renew(client: ClientRow, ip: Ip, source: string): RenewResult {
    return this.store.tx(() => {
      const now = this.clock.now();
      const old = this.store.leasesOf(client.name).find((l) => l.family === ip.family && l.expires_at > now);
      const lease: LeaseRow = {
        client: client.name,
        family: ip.family,
        ip: ip.text,
        granted_at: old && old.ip === ip.text ? old.granted_at : now,
        renewed_at: now,
        expires_at: now + this.ttlOf(client) * 1000,
      };
      this.store.upsertLease(lease);
      const event: RenewEvent = !old ? "grant" : old.ip === ip.text ? "renew" : "replace";
      // Only a new or different address can change the map; the map writer
      // still compares content, so a shared address costs no rebuild.
      const mapChanged = event !== "renew";
      this.store.audit({ ts: now, event, client: client.name, ip: ip.text, source, detail: event === "replace" ? `was ${old!.ip}` : null });
      return { event, lease, replaced: event === "replace" ? old!.ip : undefined, mapChanged };
    });
  }

  /** Drops every lease the client holds. */
  release(client: string, source: string | null): LeaseRow[] {
    return this.store.tx(() => {
      const gone = this.store.deleteLeasesOf(client);
      const ts = this.clock.now();
      for (const l of gone) this.store.audit({ ts, event: "release", client, ip: l.ip, source, detail: null });
      return gone;
    });
  }

  /** Removes client and leases; its token is refused from then on. */
  revoke(client: string, source: string | null): LeaseRow[] | null {
    return this.store.tx(() => {
      if (!this.store.getClient(client)) return null;
      const gone = this.store.deleteLeasesOf(client);
      this.store.deleteClient(client);
      this.store.audit({ ts: this.clock.now(), event: "revoke", client, ip: gone.map((l) => l.ip).join(" ") || null, source, detail: null });
      return gone;
    });
  }

  /** Deletes leases whose expiry has passed and logs each as expired. */
  expireDue(): LeaseRow[] {
    return this.store.tx(() => {
      const now = this.clock.now();
      const gone = this.store.deleteExpired(now);
      for (const l of gone) this.store.audit({ ts: now, event: "expire", client: l.client, ip: l.ip, source: null, detail: null });
      return gone;
    });
  }

  /** The addresses the map must hold now. */
  liveAddresses(): string[] {
    return this.store.liveAddresses(this.clock.now());
  }

  /** Milliseconds until the next lease expires, or null when there is none. */
  msUntilNextExpiry(): number | null {
    const t = this.store.nextExpiry();
    return t === null ? null : Math.max(0, t - this.clock.now());
  }
}
