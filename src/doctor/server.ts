import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { FetchError } from "ofetch";
import { DEFAULT_SERVER_CONFIG, loadServerConfig, MAP_TYPES, serverConfigToRun, type MapType, type ServerConfig } from "../lib/config.ts";
import { usageError } from "../lib/errors.ts";
import { apiError, createApi } from "../lib/http.ts";
import { certificateExpiry, certificatePin, keyMatchesCertificate } from "../lib/tls.ts";
import { StateLock } from "../server/lock.ts";
import { peekLeases, storeKindOf } from "../server/stores/open.ts";
import { findPostfixTool, mapDbSuffix, runTool } from "../server/postfix.ts";
import { fail, pass, shellQuote, warn, type CheckResult } from "./checks.ts";
import { accessProblem, currentUser, lookupUser, type Principal } from "./files.ts";
import { hookChecks, pgsqlTableChecks, pgsqlTableFacts } from "./hook.ts";
import { leaseAddressChecks, localAddresses, scaleCheck } from "./leases.ts";
import { MTA_CHECKS } from "./mta.ts";
import { policyHookChecks, policyHookFacts, policySocketChecks } from "./policy.ts";
import { postmapVerdict, refusedSetting, settingVerdict } from "./postmap.ts";
import { frozenEntries, installedKeys } from "../server/lookups/map.ts";
import { postfixGid } from "../server/lookups/policy.ts";
import { LOOKUPS } from "../server/lookups/index.ts";
import { defaultConfigDir, PostconfFailed, readPostfix, type PostfixView } from "./postfix.ts";
import type { HealthBody } from "../lib/wire.ts";

const TOOL_TIMEOUT_MS = 10_000;
/** Certificates closer to expiry than this draw a warning. */
const EXPIRY_WARN_DAYS = 30;
/** A documentation address (RFC 5737): never a real client, so a scratch map can hold it. */
const SCRATCH_IP = "192.0.2.1";

/** Options of the mail-host checks. */
export interface ServerDoctorOptions {
  configPath?: string;
  postfixDir?: string;
}

/** Everything later checks need once config and tools are known. */
interface Ctx {
  config: ServerConfig;
  postmap?: string;
  postconf?: string;
  view?: PostfixView;
  mapType?: MapType;
  /** Who runs the server: the owner of state_dir, else whoever runs doctor. */
  serverUser: Principal;
  /** The leases in state, read once (read-only) for every check that needs them. */
  leases?: ReturnType<typeof peekLeases>;
}

function leasesOf(ctx: Ctx): ReturnType<typeof peekLeases> {
  return (ctx.leases ??= peekLeases(ctx.config));
}

/** Runs every mail-host check: config, the MTA (Postfix tools, main.cf and the map; or Exim's or OpenSMTPD's hook and file), and the server itself. */
export async function serverChecks(o: ServerDoctorOptions): Promise<CheckResult[]> {
  if (o.configPath !== undefined && !existsSync(o.configPath)) {
    throw usageError(`--config ${o.configPath}: no such file`, "pass the server config path, or leave --config out to use the defaults");
  }
  let config: ServerConfig;
  try {
    config = loadServerConfig(o.configPath);
  } catch (err) {
    const e = err as Error & { hint?: string };
    return [fail("server.config", e.message, e.hint)];
  }
  const out: CheckResult[] = [configCheck(config.path)];
  const owner = existsSync(config.stateDir) ? lookupUser(statSync(config.stateDir).uid) : null;
  const ctx: Ctx = { config, serverUser: owner ?? currentUser() };
  const other = MTA_CHECKS[config.lookup];
  if (other) out.push(...(await other({ config, serverUser: ctx.serverUser, leases: () => leasesOf(ctx) })));
  else {
    out.push(...(await postfixChecks(ctx, o.postfixDir)));
    out.push(...(config.lookup === "policy" ? await policyChecks(ctx) : await mapChecks(ctx)));
  }
  out.push(...stateDirCheck(ctx), ...(await databaseCheck(ctx)), ...(await leaseChecks(ctx)), ...tlsChecks(ctx), ...(await listenChecks(ctx)));
  return out;
}

/**
 * Verdict on `server.config` for a config that loads: the file must exist, since
 * `relayctl server` refuses to start on built-in defaults (serverConfigToRun says
 * why, in the words doctor repeats). The other checks still run, on those defaults.
 */
export function configCheck(path: string): CheckResult {
  try {
    serverConfigToRun(path);
  } catch (err) {
    const e = err as Error & { hint?: string };
    return fail("server.config", `${e.message}; the checks below use the built-in defaults`, e.hint);
  }
  return pass("server.config", `${path} is valid`);
}

/** Verdict on `server.database`: with shared state, the database answers and holds relayctl's schema. */
async function databaseCheck(ctx: Ctx): Promise<CheckResult[]> {
  if (!storeKindOf(ctx.config).shared) return [];
  const { rows, error } = await leasesOf(ctx);
  if (error) {
    return [fail("server.database", `the shared database cannot be read: ${error}`, "check that PostgreSQL runs and the database line in server.toml; the server creates the schema when it first starts")];
  }
  return [pass("server.database", `the shared database answers; ${rows.filter((l) => l.expires_at > Date.now()).length} live leases`)];
}

/** main.cf's text, or "" when it cannot be read (the verdicts then name no line). */
function readMainCf(configDir: string): string {
  try {
    return readFileSync(join(configDir, "main.cf"), "utf8");
  } catch {
    return "";
  }
}

/** Facts for the lease-address verdicts: the live leases against this host's own addresses. */
async function leaseChecks(ctx: Ctx): Promise<CheckResult[]> {
  const { rows, error } = await leasesOf(ctx);
  // An unreadable database is server.database's failure; there is nothing to judge here.
  if (error) return [];
  const now = Date.now();
  return [
    ...scaleCheck(ctx.config.lookup, LOOKUPS[ctx.config.lookup].rewritesWhole, rows.filter((l) => l.expires_at > now).length, ctx.config.path),
    ...leaseAddressChecks({ now, leases: rows, local: localAddresses(), configPath: ctx.config.path, defaultConfig: ctx.config.path === DEFAULT_SERVER_CONFIG }),
  ];
}

function configHint(ctx: Ctx, setting: string): string {
  return `set ${setting} in ${ctx.config.path}`;
}

async function postfixChecks(ctx: Ctx, postfixDir?: string): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  const { config } = ctx;
  ctx.postmap = findPostfixTool("postmap", config.postmap);
  // The server has no postconf setting; next to a configured postmap is where it would be.
  ctx.postconf = findPostfixTool("postconf") ?? (config.postmap ? findPostfixTool("postconf", join(dirname(config.postmap), "postconf")) : undefined);
  const configDir = postfixDir ?? (await defaultConfigDir(ctx.postconf));

  if (ctx.postmap) {
    const r = await runTool([ctx.postmap, "-c", configDir, "-q", "relayctl-doctor", "static:ok"], TOOL_TIMEOUT_MS).catch((e: Error) => ({ code: -1, stdout: "", stderr: e.message, timedOut: false }));
    out.push(postmapVerdict({ ...r, path: ctx.postmap, configDir, mainCf: readMainCf(configDir) }));
  } else if (config.postmap) {
    const elsewhere = findPostfixTool("postmap");
    out.push(fail("postfix.postmap", `postmap = "${config.postmap}" in ${config.path} is not an executable file`,
      elsewhere ? `${configHint(ctx, `postmap = "${elsewhere}"`)} (or remove the key: relayctl finds it in PATH)` : "install Postfix (apt-get install postfix), or fix the postmap key"));
  } else {
    out.push(fail("postfix.postmap", "postmap not found in PATH, /usr/sbin, /usr/local/sbin or /sbin", `install Postfix (apt-get install postfix), or ${configHint(ctx, 'postmap = "/path/to/postmap"')}`));
  }

  if (!ctx.postconf) {
    out.push(fail("postfix.postconf", "postconf not found in PATH, /usr/sbin, /usr/local/sbin or /sbin: cannot read main.cf", "install Postfix (apt-get install postfix)"));
    return out;
  }
  if (!existsSync(join(configDir, "main.cf"))) {
    out.push(fail("postfix.postconf", `no main.cf in ${configDir}`, "pass Postfix's config_directory with --postfix-dir DIR"));
    return out;
  }
  try {
    ctx.view = await readPostfix(ctx.postconf, configDir);
  } catch (err) {
    const e = err as Error & { hint?: string };
    const mainCf = readMainCf(configDir);
    const refused = err instanceof PostconfFailed ? refusedSetting(err.stderr, mainCf) : null;
    out.push(refused ? settingVerdict("postfix.postconf", "doctor cannot check main.cf", configDir, mainCf, refused) : fail("postfix.postconf", e.message, e.hint));
    return out;
  }
  const view = ctx.view;
  out.push(pass("postfix.postconf", `${ctx.postconf} reads ${configDir}/main.cf`));
  out.push(versionCheck(view.values.mail_version));

  const dbType = view.values.default_database_type;
  const fallback = (MAP_TYPES as readonly string[]).includes(dbType) ? (dbType as MapType) : "hash";
  ctx.mapType = config.mapType ?? fallback;
  out.push(mapTypeCheck(ctx, view, dbType));
  if (config.lookup === "policy") out.push(...policyHookChecks(view.configDir, config, policyHookFacts(view, config)));
  else if (view.mapTypes.includes(ctx.mapType)) out.push(...hookChecks({ view, mapType: ctx.mapType, mapPath: config.map }));
  out.push(...pgsqlTableChecks(view, pgsqlTableFacts(view, readableText)));
  return out;
}

/** A file's text, or null when it is missing or this user may not read it. */
function readableText(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/** Asks the policy socket about a documentation address, as smtpd would; the action, or why not. */
async function probePolicy(path: string): Promise<{ action: string } | { error: string }> {
  let got = "";
  try {
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ error: "no answer within 5 s" }), 5_000);
      Bun.connect({
        unix: path,
        socket: {
          open(sock) {
            sock.write(`request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=${SCRATCH_IP}\nclient_name=unknown\nrecipient=relayctl-doctor@example.org\n\n`);
          },
          data(sock, chunk) {
            got += Buffer.from(chunk).toString();
            const m = /^action=([^\n]*)\n\n/.exec(got);
            if (m) {
              clearTimeout(timer);
              // Before end(): closing runs the close handler at once, which would settle first.
              resolve({ action: m[1]! });
              sock.end();
            }
          },
          close() {
            clearTimeout(timer);
            resolve({ error: got ? `unexpected answer ${JSON.stringify(got.slice(0, 60))}` : "closed without an answer" });
          },
          error(_sock, err) {
            clearTimeout(timer);
            resolve({ error: err.message });
          },
        },
      }).catch((err: Error) => {
        clearTimeout(timer);
        resolve({ error: err.message });
      });
    });
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/** Facts about the policy socket and Postfix's view of it, then the verdicts. */
async function policyChecks(ctx: Ctx): Promise<CheckResult[]> {
  const { config } = ctx;
  const st = (p: string) => {
    try {
      return lstatSync(p);
    } catch {
      return null;
    }
  };
  const sock = st(config.policySocket);
  const dir = st(dirname(config.policySocket));
  let chroot = false;
  if (ctx.postconf && ctx.view) {
    const r = await runTool([ctx.postconf, "-c", ctx.view.configDir, "-M"], TOOL_TIMEOUT_MS).catch(() => null);
    chroot = (r?.stdout ?? "").split("\n").some((l) => {
      const f = l.trim().split(/\s+/);
      return f[7] === "smtpd" && f[4] === "y";
    });
  }
  return policySocketChecks({
    path: config.policySocket,
    socket: sock ? { isSocket: sock.isSocket(), mode: sock.mode, gid: sock.gid } : null,
    dir: dir ? { mode: dir.mode, uid: dir.uid, gid: dir.gid } : null,
    postfixGid: postfixGid(),
    serviceUid: ctx.serverUser.uid,
    queueDirectory: ctx.view?.values.queue_directory || "/var/spool/postfix",
    chroot,
    probe: sock?.isSocket() ? await probePolicy(config.policySocket) : null,
  });
}

/** Verdict on `map.frozen`: entries in the installed map that no live lease backs still relay. */
async function frozenCheck(ctx: Ctx, type: MapType): Promise<CheckResult> {
  const m = { path: ctx.config.map, type, postmap: ctx.postmap! };
  const keys = await installedKeys(m);
  if (!keys) return warn("map.frozen", `postmap -s ${type}:${m.path} cannot read the map`, "see map.files and map.lookup");
  // Read after the map's keys, not from the shared read: a lease granted in between must not look frozen.
  const { rows, error } = await peekLeases(ctx.config);
  if (error) return warn("map.frozen", `cannot compare the map with the leases: ${error}`, "see server.database");
  const f = frozenEntries(keys, rows, Date.now(), statSync(m.path + mapDbSuffix(type)).mtimeMs);
  if (!f.entries) return pass("map.frozen", `every entry of the map (${keys.length}) has a live lease`);
  return fail("map.frozen", `${f.entries} map entries have no live lease and still relay (since ${f.since}): the server is not keeping the map current`,
    `systemctl start relayctl, or run: relayctl server sweep${ctx.config.path === DEFAULT_SERVER_CONFIG ? "" : ` --config ${shellQuote(ctx.config.path)}`} (install the relayctl-sweep.timer so it runs every minute)`);
}

/** Verdict on `postfix.version`: smtpd_relay_restrictions needs Postfix 2.10 or later. */
export function versionCheck(version: string): CheckResult {
  const [major = 0, minor = 0] = version.split(".").map(Number);
  if (!version) return warn("postfix.version", "postconf did not report mail_version");
  if (major < 2 || (major === 2 && minor < 10)) {
    return warn("postfix.version", `Postfix ${version} predates smtpd_relay_restrictions (2.10)`, "upgrade Postfix; relay control then sits in smtpd_recipient_restrictions");
  }
  return pass("postfix.version", `Postfix ${version}`);
}

function mapTypeCheck(ctx: Ctx, view: PostfixView, dbType: string): CheckResult {
  const type = ctx.mapType!;
  const where = ctx.config.mapType ? `map_type = "${type}" in ${ctx.config.path}` : `map type ${type} (Postfix's default_database_type)`;
  if (!view.mapTypes.includes(type)) {
    const better = [dbType, "lmdb", "cdb", "hash", "btree"].find((t) => (MAP_TYPES as readonly string[]).includes(t) && view.mapTypes.includes(t));
    return fail("map.type", `${where}: this Postfix has no ${type} tables (postconf -m)`,
      better ? `${configHint(ctx, `map_type = "${better}"`)}, and use ${better}:${ctx.config.map} in main.cf` : `install the Postfix package for ${type} tables (e.g. apt-get install postfix-${type})`);
  }
  if (type === "hash" && dbType !== "hash") {
    return warn("map.type", `hash tables need Berkeley DB, which this Postfix no longer defaults to (default_database_type = ${dbType})`,
      `${configHint(ctx, `map_type = "${dbType}"`)}, and use ${dbType}:${ctx.config.map} in main.cf`);
  }
  return pass("map.type", `${where} is supported`);
}

async function mapChecks(ctx: Ctx): Promise<CheckResult[]> {
  const { config, mapType: type, view } = ctx;
  if (!type || !view) return [];
  const src = config.map;
  const db = src + mapDbSuffix(type);
  const dir = view.configDir;
  const build = `postmap -c ${shellQuote(dir)} ${shellQuote(`${type}:${src}`)}`;
  const missing = [src, db].filter((p) => !existsSync(p));
  if (missing.length) {
    return [fail("map.files", `${missing.join(" and ")} missing: Postfix cannot look clients up (mail from every client is deferred)`,
      `start the relayctl server, which builds the map, or create an empty one:\ninstall -d ${shellQuote(dirname(src))} && touch ${shellQuote(src)} && ${build}`)];
  }
  const out = [pass("map.files", `${src} and ${db} exist`)];
  // The server writes the source before postmap builds the database from it; a second of slack covers coarse mtimes.
  const stale = statSync(db).mtimeMs + 1000 < statSync(src).mtimeMs;
  out.push(stale ? fail("map.fresh", `${db} is older than ${src}: Postfix still uses the old entries`, build) : pass("map.fresh", `${db} is up to date with its source`));
  out.push(mapPermissionCheck(ctx, src, db));
  if (ctx.postmap) out.push(await lookupCheck(ctx, type, src), await frozenCheck(ctx, type));
  return out;
}

function mapPermissionCheck(ctx: Ctx, src: string, db: string): CheckResult {
  const postfix = lookupUser(ctx.view!.values.mail_owner || "postfix");
  const problems: string[] = [];
  const fixes: string[] = [];
  if (postfix) {
    for (const p of [db, src]) {
      const why = accessProblem(p, postfix, "read");
      if (why) {
        problems.push(why);
        fixes.push(why.includes("cannot enter") ? `chmod o+x ${shellQuote(why.replace(/^.* cannot enter /, ""))}` : `chmod 644 ${shellQuote(p)}`);
      }
    }
  }
  // The server replaces the map by rename, so it needs the directory, not the files.
  const why = accessProblem(join(dirname(src), "."), ctx.serverUser, "write");
  if (why) {
    problems.push(why);
    fixes.push(`chown ${shellQuote(ctx.serverUser.name)} ${shellQuote(dirname(src))} && chmod u+rwx ${shellQuote(dirname(src))}`);
  }
  if (problems.length) return fail("map.permissions", problems.join("; "), [...new Set(fixes)].join("\n"));
  return pass("map.permissions", `${postfix?.name ?? "postfix"} can read the map; ${ctx.serverUser.name} can replace it in ${dirname(src)}`);
}

/** The address of a live lease in state_dir, read without changing anything. */
async function liveLease(ctx: Ctx): Promise<{ client: string; ip: string } | null> {
  return (await leasesOf(ctx)).rows.find((l) => l.expires_at > Date.now()) ?? null;
}

async function query(ctx: Ctx, type: string, path: string, key: string): Promise<{ found: boolean; error?: string }> {
  const r = await runTool([ctx.postmap!, "-c", ctx.view!.configDir, "-q", key, `${type}:${path}`], TOOL_TIMEOUT_MS);
  if (r.code === 0) return { found: r.stdout.trim() === "OK" };
  // postmap -q exits 1 for "not found" and prints nothing; anything on stderr is a real error.
  if (r.code === 1 && !r.stderr.trim()) return { found: false };
  return { found: false, error: r.timedOut ? "timed out" : r.stderr.trim().split("\n").at(-1) || `exit code ${r.code}` };
}

async function lookupCheck(ctx: Ctx, type: MapType, src: string): Promise<CheckResult> {
  const lease = await liveLease(ctx);
  if (lease) {
    const r = await query(ctx, type, src, lease.ip);
    if (r.found) return pass("map.lookup", `postmap -q ${lease.ip} finds the live lease of ${lease.client}`);
    return fail("map.lookup", r.error ? `postmap -q ${lease.ip} ${type}:${src} failed: ${r.error}` : `${lease.ip} (client ${lease.client}) has a live lease but is not in ${src}`,
      "the server rebuilds the map when it starts: systemctl restart relayctl, then check its log for postmap errors");
  }
  // No lease to look up: prove postmap can build and read this map type where the server works.
  const stateOk = existsSync(ctx.config.stateDir) && !accessProblem(join(ctx.config.stateDir, "."), currentUser(), "write");
  const dir = stateOk ? ctx.config.stateDir : mkdtempSync(join(tmpdir(), "relayctl-doctor-"));
  const scratch = join(dir, `.doctor-scratch-${process.pid}`);
  try {
    writeFileSync(scratch, `${SCRATCH_IP} OK\n`, { mode: 0o600 });
    const built = await runTool([ctx.postmap!, "-c", ctx.view!.configDir, `${type}:${scratch}`], TOOL_TIMEOUT_MS);
    if (built.code !== 0) return fail("map.lookup", `postmap cannot build a ${type} map: ${built.stderr.trim().split("\n").at(-1) ?? `exit code ${built.code}`}`, "fix the map type (see map.type) or the Postfix installation");
    const r = await query(ctx, type, scratch, SCRATCH_IP);
    return r.found
      ? pass("map.lookup", `postmap built and read back a scratch ${type} map (no live lease to look up)`)
      : fail("map.lookup", `postmap could not read back a scratch ${type} map: ${r.error ?? "entry not found"}`, "fix the Postfix installation");
  } finally {
    for (const f of [scratch, scratch + mapDbSuffix(type)]) rmSync(f, { force: true });
    if (!stateOk) rmSync(dir, { recursive: true, force: true });
  }
}

function stateDirCheck(ctx: Ctx): CheckResult[] {
  const dir = ctx.config.stateDir;
  if (!existsSync(dir)) {
    return [warn("server.state_dir", `${dir} does not exist yet: the server creates it on first start`, `nothing to do before the first start; to create it now: install -d -m 700 ${shellQuote(dir)}`)];
  }
  const why = accessProblem(join(dir, "."), ctx.serverUser, "write");
  if (why) return [fail("server.state_dir", why, `chown ${shellQuote(ctx.serverUser.name)} ${shellQuote(dir)} && chmod 700 ${shellQuote(dir)}`)];
  return [pass("server.state_dir", `${dir} is writable by ${ctx.serverUser.name}`)];
}

/** Where the server's certificate and key are, and whether relayctl generates them. */
function tlsPaths(config: ServerConfig): { cert: string; key: string; generated: boolean } {
  if (config.tlsCert && config.tlsKey) return { cert: config.tlsCert, key: config.tlsKey, generated: false };
  return { cert: join(config.stateDir, "tls", "cert.pem"), key: join(config.stateDir, "tls", "key.pem"), generated: true };
}

function startCommand(configPath: string): string {
  return `systemctl start relayctl (or: relayctl server --config ${shellQuote(configPath)})`;
}

function tlsChecks(ctx: Ctx): CheckResult[] {
  const start = startCommand(ctx.config.path);
  const { cert, key, generated } = tlsPaths(ctx.config);
  if (generated && !existsSync(cert)) {
    return [warn("server.tls", `no certificate yet: the server creates a self-signed one in ${dirname(cert)} on first start`, `nothing to do before the first start; ${start}`)];
  }
  const pems: string[] = [];
  for (const p of [cert, key]) {
    const why = accessProblem(p, ctx.serverUser, "read");
    // A generated pair lives in its own directory, which root may have made too (server add before the first start).
    const fix = generated
      ? `chown -R --reference=${shellQuote(ctx.config.stateDir)} ${shellQuote(dirname(cert))}`
      : `chown ${shellQuote(ctx.serverUser.name)} ${shellQuote(p)}${p === key ? ` && chmod 600 ${shellQuote(p)}` : ""}`;
    if (why) return [fail("server.tls", why, fix)];
    try {
      pems.push(readFileSync(p, "utf8"));
    } catch (err) {
      return [fail("server.tls", `cannot read ${p}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, "check the path and the file's owner and mode")];
    }
  }
  const [certPem, keyPem] = pems as [string, string];
  let pin: string;
  let expiry: Date;
  try {
    pin = certificatePin(certPem);
    expiry = certificateExpiry(certPem);
  } catch (err) {
    return [fail("server.tls", `${cert}: ${(err as Error).message}`, "configure a PEM certificate (-----BEGIN CERTIFICATE-----)")];
  }
  if (!keyMatchesCertificate(certPem, keyPem)) {
    return [fail("server.tls", `the key in ${key} does not belong to the certificate in ${cert}`, generated ? `delete ${shellQuote(cert)} to have a new pair generated (clients must then re-enroll)` : "configure the matching key and certificate pair")];
  }
  const days = Math.floor((expiry.getTime() - Date.now()) / 86_400_000);
  const renew = generated ? `delete ${shellQuote(cert)} and restart the server to generate a new one; clients must re-enroll with the new pin` : `renew ${cert} (clients enrolled with --pin must re-enroll)`;
  return [
    pass("server.tls", `${cert} and ${key} match (pin ${pin})`),
    expiry.getTime() <= Date.now()
      ? fail("server.tls_expiry", `certificate expired on ${expiry.toISOString()}`, renew)
      : days < EXPIRY_WARN_DAYS
        ? warn("server.tls_expiry", `certificate expires in ${days} days (${expiry.toISOString()})`, renew)
        : pass("server.tls_expiry", `certificate valid for ${days} more days (until ${expiry.toISOString().slice(0, 10)})`),
  ];
}

/** True when something already listens on host:port (we cannot bind it). */
function portBusy(host: string, port: number): { busy: boolean; error?: string } {
  try {
    const l = Bun.listen({ hostname: host, port, socket: { data() {} } });
    l.stop(true);
    return { busy: false };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (code === "EADDRINUSE" || /in use/i.test((err as Error).message)) return { busy: true };
    return { busy: false, error: code || (err as Error).message };
  }
}

function serverRunning(stateDir: string): boolean {
  try {
    return existsSync(stateDir) && StateLock.isHeld(stateDir);
  } catch {
    return false;
  }
}

/** What the listen verdicts look at: gathered by listenChecks, judged by listenVerdicts. */
export interface ListenFacts {
  configPath: string;
  stateDir: string;
  /** host:port as written in listen, IPv6 bracketed. */
  shown: string;
  port: number;
  /** A relayctl server holds the lock on state_dir. */
  running: boolean;
  /** Whether binding listen failed because something holds it, or for another reason. */
  bind: { busy: boolean; error?: string };
}

/**
 * Verdicts on `server.listen` and, unless a running server should be asked
 * itself, `server.health`. On the mail host a stopped server is a failure:
 * no client can renew, so relaying ends when the last lease expires.
 */
export function listenVerdicts(f: ListenFacts): { checks: CheckResult[]; askServer: boolean } {
  const start = startCommand(f.configPath);
  const stopped = fail("server.health", `no relayctl server is running on ${f.stateDir}: clients cannot renew, and relaying stops as their leases expire`, start);
  if (f.bind.error) return { checks: [fail("server.listen", `cannot listen on ${f.shown}: ${f.bind.error}`, `change listen in ${f.configPath} to an address of this host`)], askServer: false };
  if (!f.running) {
    const listen = f.bind.busy
      ? fail("server.listen", `${f.shown} is in use by another process`, `find it with: ss -ltnp 'sport = :${f.port}'; stop it or change listen in ${f.configPath}`)
      : pass("server.listen", `${f.shown} is free`);
    return { checks: [listen, stopped], askServer: false };
  }
  if (!f.bind.busy) {
    return { checks: [fail("server.listen", `a relayctl server holds ${f.stateDir} but nothing listens on ${f.shown}: clients cannot renew`, "restart it: systemctl restart relayctl")], askServer: false };
  }
  return { checks: [pass("server.listen", `${f.shown} is held by the running relayctl server`)], askServer: true };
}

async function listenChecks(ctx: Ctx): Promise<CheckResult[]> {
  const { config } = ctx;
  const { host, port } = config.listen;
  const facts: ListenFacts = {
    configPath: config.path,
    stateDir: config.stateDir,
    shown: host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`,
    port,
    running: serverRunning(config.stateDir),
    bind: portBusy(host, port),
  };
  const { checks, askServer } = listenVerdicts(facts);
  return askServer ? [...checks, await healthCheck(ctx, port)] : checks;
}

async function healthCheck(ctx: Ctx, port: number): Promise<CheckResult> {
  const host = ctx.config.listen.host;
  // A wildcard listener answers on loopback; a specific one only on its own address.
  const target = host === "::" || host === "0.0.0.0" || host === "" ? "127.0.0.1" : host.includes(":") ? `[${host}]` : host;
  const url = `https://${target}:${port}`;
  let pin: string | undefined;
  try {
    pin = certificatePin(readFileSync(tlsPaths(ctx.config).cert, "utf8"));
  } catch {
    pin = undefined;
  }
  try {
    const api = await createApi({ server: url, pin, retries: 0, timeoutMs: 5_000 });
    await api("/healthz");
    return pass("server.health", `${url}/healthz answers ok`);
  } catch (err) {
    if (err instanceof FetchError && err.response?.status === 503) {
      const body = err.data as Partial<Extract<HealthBody, { status: "degraded" }>> | undefined;
      const reasons = body?.reasons ?? [];
      // A state reason (the shared database unreadable, or this host's view of it stale) is not healed by the lookup.
      const hint = reasons.some((r) => r.startsWith("state:"))
        ? "check that this host can read the shared database (the database line in server.toml, the role's grants in several-relays.md); the server catches up by itself"
        : "see the server log (journalctl -u relayctl); it retries map rebuilds by itself";
      return fail("server.health", `the server is degraded: ${reasons.join("; ") || "no reason given"}`, hint);
    }
    const e = apiError(err, url);
    return fail("server.health", `${url}/healthz: ${e.message}`, e.hint);
  }
}
