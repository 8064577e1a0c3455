import { dirname } from "node:path";
import { cidrContains, parseCidr, parseIp, type Cidr } from "../lib/ip.ts";
import { EXACT_REGEXP, exactTable, PGSQL_QUERY } from "../server/stores/tools.ts";
import { fail, pass, shellQuote, warn, type CheckResult } from "./checks.ts";
import { mainCfLines, parseTableRef, splitPostfixList, type PostfixView } from "./postfix.ts";

/** Restrictions that refuse relaying to clients nothing has permitted yet. */
const UNAUTH = new Set(["reject_unauth_destination", "defer_unauth_destination"]);
const LISTS = ["smtpd_relay_restrictions", "smtpd_recipient_restrictions"] as const;
type ListName = (typeof LISTS)[number];

/** Inputs of the verdicts: what Postfix says and where relayctl writes its map. */
export interface HookInput {
  view: Pick<PostfixView, "configDir" | "values" | "explicit" | "mainCf">;
  mapType: string;
  mapPath: string;
}

/** Where the relayctl map is hooked into Postfix, as doctor sees it. */
export interface HookFacts {
  ref: string;
  inMynetworks: boolean;
  /** Lists holding `check_client_access MAP`. */
  accessLists: ListName[];
  /** References to the map path with another table type (`btree:` where relayctl writes hash). */
  wrongType: { where: string; token: string }[];
}

/** The exact `postconf -c DIR -e 'name = value'` line a fix prints. */
export function postconfFix(configDir: string, name: string, value: string): string {
  return `postconf -c ${shellQuote(configDir)} -e ${shellQuote(`${name} = ${value}`.trimEnd())}`;
}

/** The unexpanded main.cf value when set there (keeps $names in fixes), else the effective one. */
function rawValue(view: HookInput["view"], name: string): string {
  return view.explicit.get(name) ?? view.values[name as keyof typeof view.values] ?? "";
}

function listOf(view: HookInput["view"], name: ListName): string[] {
  return splitPostfixList(view.values[name]);
}

/** Positions in a restriction list where a leased client is permitted. */
function hookPositions(list: string[], ref: string, mynetworks: boolean): number[] {
  const at: number[] = [];
  list.forEach((t, i) => {
    if (t === "permit_mynetworks" && mynetworks) at.push(i);
    if (t === "check_client_access" && sameRef(list[i + 1], ref)) at.push(i);
  });
  return at;
}

function sameRef(token: string | undefined, ref: string): boolean {
  const t = token ? parseTableRef(token) : null;
  return t !== null && `${t.type}:${t.path}` === ref;
}

/** Finds how the map is referenced in mynetworks and the relay restriction lists. */
export function hookFacts(i: HookInput): HookFacts {
  const ref = `${i.mapType}:${i.mapPath}`;
  const nets = splitPostfixList(i.view.values.mynetworks);
  const wrongType: HookFacts["wrongType"] = [];
  const noteWrong = (where: string, token: string | undefined) => {
    const t = token ? parseTableRef(token) : null;
    if (t && t.path === i.mapPath && t.type !== i.mapType) wrongType.push({ where, token: token! });
  };
  nets.forEach((t) => noteWrong("mynetworks", t));
  const accessLists = LISTS.filter((name) => {
    const list = listOf(i.view, name);
    list.forEach((t, k) => t === "check_client_access" && noteWrong(name, list[k + 1]));
    return list.some((t, k) => t === "check_client_access" && sameRef(list[k + 1], ref));
  });
  return { ref, inMynetworks: nets.some((t) => sameRef(t, ref)), accessLists, wrongType };
}

function where(view: HookInput["view"], name: string): string {
  const at = mainCfLines(view.mainCf, name);
  const file = `${view.configDir}/main.cf`;
  if (at.set) return ` (${file}:${at.set} sets ${name})`;
  if (at.commented) return ` (${file}:${at.commented} has ${name} commented out, so the default applies)`;
  return ` (${name} is not set in ${file}, so the default applies)`;
}

/** Verdict on `postfix.hook`: is the map referenced, with the right type, where Postfix looks. */
export function hookCheck(i: HookInput, f: HookFacts): CheckResult {
  const { view } = i;
  const dir = view.configDir;
  if (f.inMynetworks || f.accessLists.length) {
    const how = [f.inMynetworks ? `mynetworks includes ${f.ref}` : "", ...f.accessLists.map((l) => `${l} has check_client_access ${f.ref}`)].filter(Boolean).join("; ");
    if (!f.inMynetworks) return pass("postfix.hook", how);
    const raw = splitPostfixList(rawValue(view, "mynetworks"));
    // When the map came in through a $name, only the expanded list shows what to drop.
    const others = (raw.some((t) => sameRef(t, f.ref)) ? raw : splitPostfixList(view.values.mynetworks)).filter((t) => !sameRef(t, f.ref));
    const relay = listOf(view, "smtpd_relay_restrictions").filter((t) => t !== "permit_mynetworks");
    return pass(
      "postfix.hook",
      how,
      [
        "mynetworks also exempts leased clients from smtpd connection limits and postscreen; to grant relaying only, use instead:",
        postconfFix(dir, "mynetworks", others.join(" ")),
        postconfFix(dir, "smtpd_relay_restrictions", [`check_client_access ${f.ref}`, ...(relay.length ? relay : ["reject_unauth_destination"])].join(", ")),
      ].join("\n"),
    );
  }
  if (f.wrongType.length) {
    const w = f.wrongType[0]!;
    const raw = rawValue(view, w.where);
    // Replace in the main.cf text when the token is there literally; otherwise it came from a $name.
    const fixed = raw.includes(w.token) ? raw.split(w.token).join(f.ref) : view.values[w.where as keyof typeof view.values].split(w.token).join(f.ref);
    return fail(
      "postfix.hook",
      `${w.where} references ${w.token}, but relayctl writes a ${i.mapType} map${where(view, w.where)}`,
      [postconfFix(dir, w.where, fixed), `or set map_type = "${parseTableRef(w.token)!.type}" in the relayctl server config`].join("\n"),
    );
  }
  const nets = rawValue(view, "mynetworks");
  const relay = listOf(view, "smtpd_relay_restrictions");
  return fail(
    "postfix.hook",
    `neither mynetworks nor smtpd_relay_restrictions references ${f.ref}${where(view, "mynetworks")}`,
    [
      postconfFix(dir, "mynetworks", `${nets} ${f.ref}`.trim()),
      "or, without exempting leased clients from connection limits and postscreen:",
      postconfFix(dir, "smtpd_relay_restrictions", [`check_client_access ${f.ref}`, ...(relay.length ? relay : ["reject_unauth_destination"])].join(", ")),
    ].join("\n"),
  );
}

/**
 * Verdict on `postfix.relay_restrictions`. Postfix runs smtpd_relay_restrictions and then
 * smtpd_recipient_restrictions; each that rejects unauthorised relaying must permit a leased
 * client before it gets there.
 */
export function relayRestrictionsCheck(i: HookInput, f: HookFacts): CheckResult | null {
  if (!f.inMynetworks && !f.accessLists.length) return null;
  const dir = i.view.configDir;
  const hookToken = f.inMynetworks ? "permit_mynetworks" : `check_client_access ${f.ref}`;
  const broken: { name: ListName; list: string[]; at: number }[] = [];
  let guarded = 0;
  for (const name of LISTS) {
    const list = listOf(i.view, name);
    const at = list.findIndex((t) => UNAUTH.has(t));
    if (at === -1) continue;
    guarded++;
    if (!hookPositions(list, f.ref, f.inMynetworks).some((p) => p < at)) broken.push({ name, list, at });
  }
  if (guarded === 0) {
    return fail(
      "postfix.relay_restrictions",
      "neither smtpd_relay_restrictions nor smtpd_recipient_restrictions has reject_unauth_destination: Postfix refuses mail (or is an open relay)",
      postconfFix(dir, "smtpd_relay_restrictions", `${hookToken}, permit_sasl_authenticated, reject_unauth_destination`),
    );
  }
  if (broken.length) {
    const missing = f.inMynetworks ? "permit_mynetworks" : `check_client_access ${f.ref}`;
    return fail(
      "postfix.relay_restrictions",
      broken.map((x) => `${x.name} has no ${missing} before ${x.list[x.at]}`).join("; ") + ", so leased clients are refused",
      broken.map((x) => postconfFix(dir, x.name, [...x.list.slice(0, x.at), hookToken, ...x.list.slice(x.at)].join(", "))).join("\n"),
    );
  }
  const used = LISTS.filter((n) => listOf(i.view, n).some((t) => UNAUTH.has(t)));
  return pass("postfix.relay_restrictions", `${used.join(" and ")} permit${used.length === 1 ? "s" : ""} leased clients (${f.inMynetworks ? "permit_mynetworks" : "check_client_access"}) before refusing relaying`);
}

const PRIVATE_NETS = ["10.0.0.0/8", "127.0.0.0/8", "fc00::/7", "fe80::/10"].map((c) => parseCidr(c)!);

/** Parses a mynetworks entry (`1.2.3.0/24`, `[::1]/128`, `[2001:db8::]/32`) leniently about host bits. */
function parseNet(token: string): Cidr | null {
  const m = /^\[?([0-9a-fA-F:.]+)\]?(?:\/([0-9]{1,3}))?$/.exec(token);
  const ip = m ? parseIp(m[1]!) : null;
  if (!ip) return null;
  const prefix = m![2] === undefined ? ip.bytes.length * 8 : Number(m![2]);
  return { family: ip.family, bytes: ip.bytes, prefix, text: token };
}

/** True for networks so broad that admitting them is an open relay: /0, or a /8 or wider of public space. */
export function isBroadNetwork(net: Cidr): boolean {
  if (net.prefix === 0) return true;
  if (net.prefix > 8) return false;
  return !PRIVATE_NETS.some((p) => p.family === net.family && p.prefix <= net.prefix && cidrContains(p, { family: net.family, bytes: net.bytes, text: net.text }));
}

/** Verdict on `postfix.mynetworks_broad`: very broad networks in mynetworks make an open relay. */
export function broadNetworksCheck(i: HookInput): CheckResult {
  const broad = splitPostfixList(i.view.values.mynetworks).filter((t) => {
    const n = parseNet(t);
    return n !== null && isBroadNetwork(n);
  });
  if (!broad.length) return pass("postfix.mynetworks_broad", "mynetworks holds no network broader than a private /8");
  const keep = splitPostfixList(rawValue(i.view, "mynetworks")).filter((t) => !broad.includes(t));
  return warn(
    "postfix.mynetworks_broad",
    `mynetworks holds ${broad.join(", ")}: Postfix relays for all of it, an open relay regardless of relayctl`,
    postconfFix(i.view.configDir, "mynetworks", keep.join(" ")),
  );
}

/** All main.cf verdicts about the hook, in report order. */
export function hookChecks(i: HookInput): CheckResult[] {
  const f = hookFacts(i);
  const relay = relayRestrictionsCheck(i, f);
  return [hookCheck(i, f), ...(relay ? [relay] : []), broadNetworksCheck(i)];
}

/** A pgsql: table file that relayctl printed, where main.cf references it. */
export interface PgsqlTableFact {
  /** The parameter that references it (mynetworks, smtpd_relay_restrictions, ...). */
  where: string;
  /** The list item as main.cf has it (the pipemap, or the bare table). */
  token: string;
  path: string;
  /** Its `query =` value, whitespace folded. */
  query: string;
  /** Behind a regexp (or pcre) stage in a pipemap, which Postfix never asks for parent networks. */
  staged: boolean;
  /** The role in its `hosts` URI, for the fix. */
  user: string | null;
}

/** The `query =` value and the hosts URI's role of a pgsql: table file's text (continuation lines folded). */
function pgsqlSettings(text: string): { query: string | null; user: string | null } {
  const settings = new Map<string, string>();
  let last: string | null = null;
  for (const line of text.split("\n")) {
    if (/^\s*(#|$)/.test(line)) continue;
    const m = /^([a-z_]+)\s*=\s*(.*)$/.exec(line);
    if (m) settings.set((last = m[1]!), m[2]!.trim());
    else if (last && /^\s/.test(line)) settings.set(last, `${settings.get(last)} ${line.trim()}`);
  }
  const query = settings.get("query")?.replace(/\s+/g, " ") ?? null;
  const user = /^postgres(?:ql)?:\/\/([^:@/]+)(?::[^@]*)?@/.exec(settings.get("hosts") ?? "")?.[1];
  return { query, user: user ? decodeURIComponent(user) : null };
}

/** relayctl's pgsql: tables in main.cf, and its regexp stage where it is not the first stage before one. */
export interface PgsqlFacts {
  tables: PgsqlTableFact[];
  /** The stage answers for every client address: anywhere else (mynetworks, a unionmap) it relays for everyone. */
  strayStages: { where: string; token: string; path: string }[];
}

/** True for a regexp or pcre file holding relayctl's stage (a rule whose result is `exact:$1`). */
function isExactStage(text: string | null): boolean {
  return text !== null && text.split("\n").some((l) => /^\/.*\/[a-zA-Z]*\s+exact:\$1\s*$/.test(l));
}

/**
 * Finds relayctl's pgsql: tables (their query names relayctl's objects) and
 * regexp stage in mynetworks and the relay restriction lists, alone or inside
 * a pipemap or unionmap; `read` returns a file's text or null.
 */
export function pgsqlTableFacts(view: HookInput["view"], read: (path: string) => string | null): PgsqlFacts {
  const out: PgsqlFacts = { tables: [], strayStages: [] };
  for (const where of ["mynetworks", ...LISTS] as const) {
    for (const token of splitPostfixList(view.values[where])) {
      const group = /^(pipemap|unionmap):\{(.*)\}$/s.exec(token);
      const parts = group ? splitPostfixList(group[2]!) : [token];
      const refs = parts.map((p) => parseTableRef(p));
      // Postfix asks a pipemap for parent networks only when its first table is not a pattern table.
      const staged = group?.[1] === "pipemap" && (refs[0]?.type === "regexp" || refs[0]?.type === "pcre");
      refs.forEach((ref, i) => {
        if (ref?.type === "regexp" || ref?.type === "pcre") {
          const beforePgsql = staged && i === 0 && refs.slice(1).some((r) => r?.type === "pgsql");
          if (!beforePgsql && isExactStage(read(ref.path))) out.strayStages.push({ where, token, path: ref.path });
        }
        if (ref?.type !== "pgsql") return;
        const text = read(ref.path);
        const { query, user } = text === null ? { query: null, user: null } : pgsqlSettings(text);
        if (query && /relayctl(_inet\s*\(|\.)/.test(query)) out.tables.push({ where, token, path: ref.path, query, staged, user });
      });
    }
  }
  return out;
}

/**
 * Verdicts on `postfix.pgsql`: a relayctl pgsql: table must hold this
 * release's query (older ones let a client relay on the lease of a shorter
 * address), and bare it refuses IPv6 clients written with an inner "::".
 */
export function pgsqlTableChecks(view: HookInput["view"], facts: PgsqlFacts): CheckResult[] {
  const stray = facts.strayStages.map((f) => {
    const raw = rawValue(view, f.where);
    const items = splitPostfixList(raw.includes(f.token) ? raw : view.values[f.where as keyof typeof view.values]);
    const at = items.indexOf(f.token);
    // In a restriction list the table goes with the check_*_access before it.
    const from = at > 0 && /^check_[a-z_]+_access$/.test(items[at - 1]!) ? at - 1 : at;
    const value = [...items.slice(0, from), ...items.slice(at + 1)];
    return fail(
      "postfix.pgsql",
      `${f.where} lists ${f.path}, relayctl's regexp stage, other than as the first table of pipemap:{${f.path}, proxy:pgsql:...}: it answers for every client address, so Postfix relays for everyone (or defers everyone)`,
      `${postconfFix(view.configDir, f.where, value.join(f.where === "mynetworks" ? " " : ", "))}\nthen hook the pgsql table as ${exactTable("/etc/postfix/relayctl-pgsql.cf", f.path)} (see relayctl server postfix-pgsql)`,
    );
  });
  return [...stray, ...facts.tables.map((f) => {
    if (f.query !== PGSQL_QUERY) {
      const user = f.user ? ` --user ${shellQuote(f.user)}` : "";
      return fail(
        "postfix.pgsql",
        `${f.path} (in ${f.where}) has a query from an older relayctl: it lets a client relay on the lease of an address its own starts with (2001:db8:5::9:1 on a lease for 2001:db8:5::9), or fails once the database is upgraded`,
        `relayctl server postfix-pgsql${user} --path ${shellQuote(f.path)} > ${shellQuote(`${f.path}.new`)} && mv ${shellQuote(`${f.path}.new`)} ${shellQuote(f.path)}   # then re-add any password you put in hosts`,
      );
    }
    if (!f.staged) {
      const regexp = `${dirname(f.path)}/relayctl-exact.regexp`;
      const staged = exactTable(f.path, regexp);
      const raw = rawValue(view, f.where);
      const value = (raw.includes(f.token) ? raw : view.values[f.where as keyof typeof view.values]).split(f.token).join(staged);
      return warn(
        "postfix.pgsql",
        `${f.where} uses ${f.path} bare: IPv6 clients written with an inner "::" (2001:db8:5::9) never relay through it`,
        [`printf '%s\\n' ${shellQuote(EXACT_REGEXP)} > ${shellQuote(regexp)}`, postconfFix(view.configDir, f.where, value)].join("\n"),
      );
    }
    return pass("postfix.pgsql", `${f.where} asks ${f.path} (this release's query) behind the regexp stage`);
  })];
}
