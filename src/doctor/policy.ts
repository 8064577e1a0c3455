import { dirname } from "node:path";
import type { ServerConfig } from "../lib/config.ts";
import { policySocketName } from "../server/lookups/policy.ts";
import { fail, pass, warn, type CheckResult } from "./checks.ts";
import { postconfFix } from "./hook.ts";
import { parseTableRef, splitPostfixList, type PostfixView } from "./postfix.ts";

/** The smtpd_relay_restrictions doctor recommends for the policy lookup. */
export function recommendedRelayRestrictions(config: ServerConfig, queueDirectory?: string): string {
  return `permit_mynetworks, permit_sasl_authenticated, permit_auth_destination, check_policy_service { unix:${policySocketName(config, queueDirectory)}, timeout=5s }, reject_unauth_destination`;
}

/** Where check_policy_service stands in smtpd_relay_restrictions, as doctor sees it. */
export interface PolicyHookFacts {
  list: string[];
  /** Index of the check_policy_service naming relayctl's socket, or -1. */
  at: number;
  /** The endpoint it names (`unix:relayctl/policy`, `inet:127.0.0.1:9999`, ...). */
  endpoint: string | null;
  /** Restriction lists or mynetworks that still reference relayctl's map. */
  leftoverMap: string[];
  /** The socket as this Postfix names it. */
  name: string;
  queueDirectory?: string;
}

/** Finds relayctl's check_policy_service in the relay restrictions, and any leftover map hook. */
export function policyHookFacts(view: Pick<PostfixView, "values">, config: ServerConfig): PolicyHookFacts {
  const list = splitPostfixList(view.values.smtpd_relay_restrictions);
  const queueDirectory = view.values.queue_directory || undefined;
  const name = policySocketName(config, queueDirectory);
  let at = -1;
  let endpoint: string | null = null;
  list.forEach((t, i) => {
    if (t !== "check_policy_service" || at !== -1) return;
    // `{ unix:relayctl/policy, timeout=5s }` arrives as one token without its braces.
    const ep = (list[i + 1] ?? "").split(/[\s,]+/)[0] ?? "";
    if (ep === `unix:${name}` || ep === `unix:${config.policySocket}` || ep.startsWith("inet:") || /relayctl/.test(ep)) {
      at = i;
      endpoint = ep;
    }
  });
  const mapped = (t: string): boolean => parseTableRef(t)?.path === config.map;
  const leftoverMap: string[] = [];
  if (splitPostfixList(view.values.mynetworks).some(mapped)) leftoverMap.push("mynetworks");
  for (const l of ["smtpd_relay_restrictions", "smtpd_recipient_restrictions"] as const) {
    if (splitPostfixList(view.values[l]).some(mapped)) leftoverMap.push(l);
  }
  return { list, at, endpoint, leftoverMap, name, queueDirectory };
}

/**
 * Verdicts on the policy hook: present, on a unix socket, after
 * permit_auth_destination (mail to local domains never waits on relayctl)
 * and before reject_unauth_destination (else it is never asked); and no
 * leftover map hook, which nobody updates any more.
 */
export function policyHookChecks(configDir: string, config: ServerConfig, f: PolicyHookFacts): CheckResult[] {
  const fix = postconfFix(configDir, "smtpd_relay_restrictions", recommendedRelayRestrictions(config, f.queueDirectory));
  const out: CheckResult[] = [];
  const pad = f.list.indexOf("permit_auth_destination");
  const unauth = f.list.findIndex((t) => t === "reject_unauth_destination" || t === "defer_unauth_destination");
  if (f.at === -1) out.push(fail("policy.hook", "smtpd_relay_restrictions has no check_policy_service for relayctl: leased clients are refused", fix));
  else if (f.endpoint?.startsWith("inet:")) {
    out.push(fail("policy.hook", `check_policy_service uses ${f.endpoint}: any local user could bind that port while relayctl is down and answer OK (an open relay)`, fix));
  } else if (f.endpoint !== `unix:${f.name}` && f.endpoint !== `unix:${config.policySocket}`) {
    out.push(fail("policy.hook", `check_policy_service names ${f.endpoint}, but relayctl listens on ${config.policySocket}`, fix));
  } else if (unauth !== -1 && unauth < f.at) {
    out.push(fail("policy.hook", "check_policy_service comes after reject_unauth_destination, so it is never asked: leased clients are refused", fix));
  } else if (unauth === -1) {
    out.push(fail("policy.hook", "smtpd_relay_restrictions has no reject_unauth_destination after check_policy_service: Postfix may be an open relay", fix));
  } else if (pad === -1 || pad > f.at) {
    out.push(fail("policy.hook", "check_policy_service comes before permit_auth_destination: mail to your own domains waits on relayctl and is deferred while it is down", fix));
  } else out.push(pass("policy.hook", `smtpd_relay_restrictions asks ${f.endpoint} after permit_auth_destination and before reject_unauth_destination`));
  if (f.leftoverMap.length) {
    out.push(fail("policy.leftover_map", `${f.leftoverMap.join(" and ")} still reference${f.leftoverMap.length === 1 ? "s" : ""} ${config.map}, which lookup = "policy" no longer updates: its entries would relay forever`,
      `remove ${config.map} from ${f.leftoverMap.join(" and ")} (postconf -e ...), then: postfix reload`));
  }
  return out;
}

/** What doctor finds at the policy socket path. */
export interface PolicySocketFacts {
  path: string;
  /** lstat of the socket, or null when it is missing. */
  socket: { isSocket: boolean; mode: number; gid: number } | null;
  dir: { mode: number; uid: number; gid: number } | null;
  postfixGid: number | null;
  serviceUid: number;
  queueDirectory: string;
  /** True when master.cf runs smtpd chrooted. */
  chroot: boolean;
  /** The action a test query got, or the error. */
  probe: { action: string } | { error: string } | null;
}

/** Verdicts on the policy socket: where it lies, its modes and owners, and whether it answers. */
export function policySocketChecks(f: PolicySocketFacts): CheckResult[] {
  const dir = dirname(f.path);
  const out: CheckResult[] = [];
  const create = `install -d -o relayctl -g postfix -m 2750 ${dir}`;
  if (!f.path.startsWith(f.queueDirectory.replace(/\/?$/, "/"))) {
    out.push((f.chroot ? fail : warn)("policy.socket", `${f.path} is outside Postfix's queue directory ${f.queueDirectory}${f.chroot ? ", and smtpd runs chrooted there: it cannot reach the socket" : ""}`,
      `set policy_socket = "${f.queueDirectory}/relayctl/policy" in server.toml`));
  }
  if (!f.dir) {
    out.push(fail("policy.socket", `${dir} does not exist`, create));
    return out;
  }
  const dirProblems: string[] = [];
  if ((f.dir.mode & 0o777) !== 0o750) dirProblems.push(`mode ${(f.dir.mode & 0o7777).toString(8)}, not 2750`);
  if (f.dir.mode & 0o002) dirProblems.push("writable by everyone");
  if (f.postfixGid !== null && f.dir.gid !== f.postfixGid) dirProblems.push("group is not postfix");
  // A directory another user owns (Postfix's private/, say) is never taken over: that user
  // could replace the socket, and chowning it would break whoever uses it. Move the socket.
  const foreign = f.dir.uid !== f.serviceUid && f.dir.uid !== 0;
  if (foreign) dirProblems.push("owned by neither the service user nor root (the server refuses to start there)");
  const own = `${f.queueDirectory.replace(/\/?$/, "")}/relayctl`;
  const fixDir = foreign ? `set policy_socket = "${own}/policy" in server.toml, then: install -d -o relayctl -g postfix -m 2750 ${own}` : `chown relayctl:postfix ${dir} && chmod 2750 ${dir}`;
  out.push(dirProblems.length ? fail("policy.socket_dir", `${dir}: ${dirProblems.join(", ")}`, fixDir) : pass("policy.socket_dir", `${dir} is 2750, group postfix`));
  if (!f.socket) {
    out.push(fail("policy.socket", `${f.path} does not exist: the server is not running with lookup = "policy" (Postfix defers relay attempts with 451)`, "systemctl start relayctl"));
    return out;
  }
  if (!f.socket.isSocket) {
    out.push(fail("policy.socket", `${f.path} is not a socket`, `remove it; the server creates the socket: rm ${f.path} && systemctl restart relayctl`));
    return out;
  }
  const sockProblems: string[] = [];
  if ((f.socket.mode & 0o777) !== 0o660) sockProblems.push(`mode ${(f.socket.mode & 0o777).toString(8)}, not 660`);
  if (f.postfixGid !== null && f.socket.gid !== f.postfixGid) sockProblems.push("group is not postfix (smtpd cannot connect)");
  out.push(sockProblems.length ? fail("policy.socket", `${f.path}: ${sockProblems.join(", ")}`, `chown :postfix ${f.path} && chmod 660 ${f.path}; restarting the server recreates it right`) : pass("policy.socket", `${f.path} is a socket, 660, group postfix`));
  if (f.probe && "error" in f.probe) out.push(fail("policy.answer", `a test query to ${f.path} failed: ${f.probe.error}`, "see the server log (journalctl -u relayctl)"));
  else if (f.probe) out.push(f.probe.action === "DUNNO" ? pass("policy.answer", "a test query for a documentation address answers DUNNO") : fail("policy.answer", `a test query for an unleased documentation address answered ${f.probe.action}`, "stop the server and report this: it must only answer OK for leases"));
  return out;
}
