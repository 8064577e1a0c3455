// A TOML config file read with errors that name file:line: key, the checks
// both configs share, and the client's own config (client.toml). Apart from
// config.ts (server.toml), which loads node:os and every server key's rules:
// each cron run of `relayctl client` loads this module, and those cost it ~0.6 ms.
import { existsSync, readFileSync } from "node:fs";
import { parseDuration, type DurationSetting } from "./duration.ts";
import { ExitCode, RelayError, usageError } from "./errors.ts";

export const DEFAULT_CLIENT_CONFIG = "/etc/relayctl/client.toml";
const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** What `relayctl client enroll` writes and `relayctl client` reads. */
export interface ClientConfig {
  path: string;
  server: string;
  name: string;
  token: string;
  pin?: string;
  /** The pinned server's certificate chain, saved at enrollment so a run needs one TLS handshake, not two. */
  serverCert?: string;
}

/** Checks a client name against `[a-z0-9][a-z0-9._-]{0,62}`. */
export function validateName(name: unknown, where = "name"): string {
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw usageError(`${where}: "${String(name)}" is not a valid client name`, "use 1-63 characters: a-z 0-9 . _ - starting with a letter or digit");
  }
  return name;
}

/** Finds the line a key is set on, so errors can point at it. */
function lineOf(text: string, key: string): number | undefined {
  const name = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  // `key = ...`, or the first `[[key]]` of an array of tables.
  const re = new RegExp(`^\\s*(?:${name}\\s*=|\\[\\[\\s*${name}\\s*\\]\\])`);
  const idx = text.split("\n").findIndex((l) => re.test(l));
  return idx === -1 ? undefined : idx + 1;
}

/** Reads and parses a TOML file; a missing default file yields `{}` (built-in defaults). */
export function readToml(path: string, required: boolean): { data: Record<string, unknown>; text: string } {
  if (!existsSync(path)) {
    if (required) throw usageError(`config file ${path} not found`, "pass --config PATH or create it");
    return { data: {}, text: "" };
  }
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw usageError(`cannot read ${path}: ${(err as Error).message}`, "check the file's owner and mode");
  }
  try {
    return { data: Bun.TOML.parse(text) as Record<string, unknown>, text };
  } catch (err) {
    throw tomlSyntaxError(path, text, (err as Error).message);
  }
}

/** What to do about a TOML syntax error on `line`, by Bun's message: for a bare value, the line quoted. */
function tomlFix(message: string, line: string): string {
  const bare = /^\s*([A-Za-z0-9_-]+)\s*=\s*([^\s"'{#][^#]*?)\s*(?:#.*)?$/.exec(line);
  if (bare && /Strings must be quoted|Expected a value|Unexpected character after a value/.test(message)) return `quote the value: ${bare[1]} = ${JSON.stringify(bare[2])}`;
  if (/Unterminated string|newlines must be escaped/.test(message)) return 'close the string with a " on the same line';
  if (/Unterminated array|in an array/.test(message)) return 'write a list as ["a", "b"], items separated by commas';
  if (/Missing value/.test(message)) return "give the value on the same line as the key, or remove the line";
  if (/redefine/.test(message)) return "set each key once: remove the repeated line";
  return 'each line is key = value: strings in double quotes, lists as ["a", "b"], # starts a comment';
}

/**
 * A TOML syntax error as `file:line: key: what: fix`. Bun's parser names no
 * position, so the line is the first one after which the file so far fails
 * the same way (lines before it parse, or fail only for want of what follows).
 */
export function tomlSyntaxError(path: string, text: string, message: string): RelayError {
  const what = message.replace(/^TOML Parse error: /, "");
  const lines = text.split("\n");
  let n = 1;
  for (; n <= lines.length; n++) {
    try {
      Bun.TOML.parse(lines.slice(0, n).join("\n") + "\n");
    } catch (err) {
      if ((err as Error).message === message) break;
    }
  }
  if (n > lines.length) return usageError(`${path}: invalid TOML: ${what}`, tomlFix(message, ""));
  const key = /^\s*([A-Za-z0-9_-]+)\s*=/.exec(lines[n - 1]!)?.[1];
  return usageError(`${path}:${n}${key ? `: ${key}` : ""}: invalid TOML: ${what}`, tomlFix(message, lines[n - 1]!));
}

/** Typed access to TOML keys that names file, key and line in every error. */
export class Keys {
  constructor(
    private readonly path: string,
    private readonly text: string,
    private readonly data: Record<string, unknown>,
    allowed: readonly string[],
  ) {
    for (const key of Object.keys(data)) {
      if (!allowed.includes(key)) throw this.error(key, `unknown key "${key}"`, `known keys: ${allowed.join(", ")}`);
    }
  }

  where(key: string): string {
    const line = lineOf(this.text, key);
    return `${this.path}${line ? `:${line}` : ""}: ${key}`;
  }

  error(key: string, message: string, hint?: string): RelayError {
    return usageError(`${this.where(key)}: ${message}`, hint);
  }

  str(key: string): string | undefined {
    const v = this.data[key];
    if (v === undefined) return undefined;
    if (typeof v !== "string" || v === "") throw this.error(key, "must be a non-empty string");
    return v;
  }

  /** A duration within its bounds in DURATION_LIMITS, where the key names its row. */
  duration(key: DurationSetting): number | undefined {
    const v = this.data[key];
    if (v === undefined) return undefined;
    if (typeof v !== "string" && typeof v !== "number") throw this.error(key, "must be a duration like \"20m\"");
    return parseDuration(v, key, this.where(key));
  }

  int(key: string): number | undefined {
    const v = this.data[key];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw this.error(key, "must be a whole number, 0 or more");
    return v;
  }

  bool(key: string): boolean | undefined {
    const v = this.data[key];
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") throw this.error(key, "must be true or false");
    return v;
  }

  /** true, false, or the one word allowed besides them (such as "auto"). */
  boolOr<W extends string>(key: string, word: W, hint?: string): boolean | W | undefined {
    const v = this.data[key];
    if (v === undefined || v === word || typeof v === "boolean") return v as boolean | W | undefined;
    throw this.error(key, `must be true, false or "${word}"`, hint);
  }

  /** A list of tables (`key = [{ ... }]` or `[[key]]` sections); each table's own keys are the caller's to check. */
  tables(key: string): Record<string, unknown>[] {
    const v = this.data[key];
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== "object" || x === null || Array.isArray(x))) throw this.error(key, "must be a list of tables", `write e.g. ${key} = [{ format = "lines", path = "/etc/opendkim/relayctl-hosts" }]`);
    return v as Record<string, unknown>[];
  }

  list(key: string): string[] {
    const v = this.data[key];
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) throw this.error(key, "must be a list of strings");
    return v as string[];
  }
}

/** Parses a URL setting; `example` is what the error suggests instead. */
export function parseUrlSetting(value: string, where: string, example: string): URL {
  try {
    return new URL(value);
  } catch {
    throw usageError(`${where}: "${value}" is not a URL`, `use e.g. ${example}`);
  }
}

/** Checks that a URL is an https:// URL with a host, as clients and enrollment lines need. */
export function validateHttpsUrl(value: string, where: string): string {
  const url = parseUrlSetting(value, where, "https://mail.example.org:8443");
  if (url.protocol !== "https:" || !url.hostname) throw usageError(`${where}: "${value}" must be an https:// URL`);
  return url.origin;
}

/** Loads client.toml; every key is required except pin. */
export function loadClientConfig(path?: string): ClientConfig {
  const file = path ?? DEFAULT_CLIENT_CONFIG;
  if (!existsSync(file)) {
    throw new RelayError(`no client config at ${file}`, {
      exitCode: ExitCode.USAGE,
      hint: "enroll first with the line `relayctl server add NAME` printed on the mail host",
    });
  }
  const { data, text } = readToml(file, true);
  const k = new Keys(file, text, data, ["server", "name", "token", "pin", "server_cert"]);
  const need = (key: string): string => {
    const v = k.str(key);
    if (v === undefined) throw usageError(`${file}: missing key "${key}"`, "re-run relayctl client enroll");
    return v;
  };
  return {
    path: file,
    server: validateHttpsUrl(need("server"), k.where("server")),
    name: validateName(need("name"), k.where("name")),
    token: need("token"),
    pin: k.str("pin"),
    serverCert: k.str("server_cert"),
  };
}

/** Renders client.toml; values are JSON-quoted, which is valid TOML for plain strings. */
export function renderClientConfig(c: Omit<ClientConfig, "path">): string {
  const lines = [
    "# relayctl client configuration, written by `relayctl client enroll`.",
    "# Holds a secret token: keep this file mode 0600.",
    `server = ${JSON.stringify(c.server)}`,
    `name = ${JSON.stringify(c.name)}`,
    `token = ${JSON.stringify(c.token)}`,
  ];
  if (c.pin) lines.push(`pin = ${JSON.stringify(c.pin)}`);
  if (c.serverCert) lines.push("# The server's certificate chain as enrolled (matches pin); saves a TLS handshake per run.", `server_cert = ${JSON.stringify(c.serverCert)}`);
  return lines.join("\n") + "\n";
}
