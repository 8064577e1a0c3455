import { existsSync, statSync } from "node:fs";
import { networkInterfaces, type NetworkInterfaceInfo } from "node:os";
import { DEFAULT_CLIENT_CONFIG, loadClientConfig, type ClientConfig } from "../lib/config.ts";
import { usageError } from "../lib/errors.ts";
import { apiError, createApi } from "../lib/http.ts";
import { cidrContains, parseCidr, parseIp } from "../lib/ip.ts";
import { fetchPeerCertificate, parsePin } from "../lib/tls.ts";
import type { LeaseStatus } from "../client/client.ts";
import { fail, pass, shellQuote, warn, type CheckResult } from "./checks.ts";
import { currentUser, lookupUser } from "./files.ts";

const CGNAT = parseCidr("100.64.0.0/10")!;
const LINK_LOCAL_V4 = parseCidr("169.254.0.0/16")!;

/** Options of the client-host checks; interfaces can be faked by tests. */
export interface ClientDoctorOptions {
  configPath?: string;
  interfaces?: NodeJS.Dict<NetworkInterfaceInfo[]>;
  now?: number;
}

/** Verdict on `client.permissions`: the token file must be 0600 and belong to the invoking user. */
export function permissionsCheck(path: string, st: { mode: number; uid: number }, me: { uid: number; name: string }): CheckResult {
  const problems: string[] = [];
  const fixes: string[] = [];
  if (st.uid !== me.uid) {
    problems.push(`owned by ${lookupUser(st.uid)?.name ?? st.uid}, not ${me.name}`);
    fixes.push(`chown ${shellQuote(me.name)} ${shellQuote(path)}`);
  }
  if ((st.mode & 0o777) !== 0o600) {
    problems.push(`mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}${st.mode & 0o077 ? ": others can read the token" : ""}`);
    fixes.push(`chmod 600 ${shellQuote(path)}`);
  }
  if (problems.length) return fail("client.permissions", `${path} is ${problems.join(", ")}`, fixes.join("\n"));
  return pass("client.permissions", `${path} is mode 0600, owned by ${me.name}`);
}

/** Verdict on `client.shared_address`: only carrier-grade NAT addresses mean a shared public address. */
export function sharedAddressCheck(ifaces: NodeJS.Dict<NetworkInterfaceInfo[]>): CheckResult {
  const v4 = Object.values(ifaces)
    .flatMap((l) => l ?? [])
    .filter((a) => !a.internal && a.family === "IPv4")
    .map((a) => parseIp(a.address))
    .filter((ip) => ip !== null && !cidrContains(LINK_LOCAL_V4, ip));
  const cgnat = v4.filter((ip) => cidrContains(CGNAT, ip!));
  if (v4.length > 0 && cgnat.length === v4.length) {
    return warn(
      "client.shared_address",
      `this host's IPv4 addresses (${cgnat.map((ip) => ip!.text).join(", ")}) are all in 100.64.0.0/10, carrier-grade NAT: the public address the server sees is shared with other subscribers of your ISP, and leasing it lets them all relay through the mail host`,
      "use IPv6 or a VPN/tunnel with an address of its own, or ask the ISP for a public IPv4 address",
    );
  }
  return pass("client.shared_address", "no carrier-grade NAT (100.64.0.0/10) address on this host");
}

function inWords(ms: number): string {
  const m = Math.round(ms / 60_000);
  return m < 120 ? `${m} min` : `${Math.round(m / 60)} h`;
}

/** Verdict on `client.lease`: is there a live lease for the address the server sees now. */
export function leaseCheck(status: LeaseStatus, now: number): CheckResult {
  const live = status.leases.filter((l) => Date.parse(l.expires_at) > now);
  const mine = live.find((l) => l.ip === status.ip);
  const renew = "run `relayctl client` now, and from cron every 4 minutes";
  if (mine) return pass("client.lease", `lease for ${mine.ip} expires ${mine.expires_at} (in ${inWords(Date.parse(mine.expires_at) - now)})`);
  if (live.length) return warn("client.lease", `the lease is for ${live.map((l) => l.ip).join(", ")} but the server now sees ${status.ip}`, renew);
  return warn("client.lease", "no live lease: this host cannot relay", renew);
}

/** Runs every client-host check, stopping where later ones would be meaningless. */
export async function clientChecks(o: ClientDoctorOptions): Promise<CheckResult[]> {
  const path = o.configPath ?? DEFAULT_CLIENT_CONFIG;
  if (o.configPath !== undefined && !existsSync(path)) {
    throw usageError(`--client-config ${path}: no such file`, "pass the path `relayctl client enroll` wrote");
  }
  const out: CheckResult[] = [];
  if (existsSync(path)) {
    const st = statSync(path);
    out.push(permissionsCheck(path, st, currentUser()));
  }
  let cfg: ClientConfig;
  try {
    cfg = loadClientConfig(path);
  } catch (err) {
    const e = err as Error & { hint?: string };
    return [...out, fail("client.config", e.message, e.hint)];
  }
  out.push(pass("client.config", `${path}: client ${cfg.name} of ${cfg.server}`));
  out.push(sharedAddressCheck(o.interfaces ?? networkInterfaces()));

  let peerPin: string;
  try {
    peerPin = (await fetchPeerCertificate(new URL(cfg.server))).pin;
  } catch (err) {
    const e = err as Error & { hint?: string };
    return [...out, fail("client.reachable", e.message, e.hint)];
  }
  out.push(pass("client.reachable", `${cfg.server} answers TLS`));
  if (cfg.pin) {
    const want = parsePin(cfg.pin);
    // Stop here on a mismatch: the token must not go to a server that is not the pinned one.
    if (peerPin !== want) {
      return [...out, fail("client.pin", `${cfg.server} presents ${peerPin}, but ${path} pins ${want}`, "re-enroll with the line printed by `relayctl server add` (if the server certificate was renewed), or check that you reach the right server")];
    }
    out.push(pass("client.pin", `server certificate matches the pin ${want}`));
  } else {
    out.push(pass("client.pin", "no pin configured: the server certificate is checked against the system CAs"));
  }

  let status: LeaseStatus;
  try {
    const api = await createApi({ server: cfg.server, token: cfg.token, pin: cfg.pin, retries: 0 });
    status = (await api("/v1/lease", { method: "GET" })) as LeaseStatus;
  } catch (err) {
    const e = apiError(err, cfg.server);
    return [...out, fail("client.token", e.message, e.hint)];
  }
  out.push(pass("client.token", `token accepted for client ${status.client}`));
  out.push(pass("client.address", `the server sees this host as ${status.ip}`));
  out.push(leaseCheck(status, o.now ?? Date.now()));
  return out;
}
