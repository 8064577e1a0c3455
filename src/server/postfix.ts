import { accessSync, constants, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { RelayError, usageError } from "../lib/errors.ts";
import { MAP_TYPES, type MapType } from "../lib/config.ts";

// cron and systemd often run with a PATH that lacks the sbin directories
// where Debian and others install postmap and postconf.
const SBIN_DIRS = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Locates a Postfix tool (or another MTA's): the configured path, else PATH plus the sbin directories. */
export function findPostfixTool(name: string, configured?: string): string | undefined {
  if (configured) return isExecutable(configured) ? configured : undefined;
  const dirs = [...(process.env.PATH ?? "").split(delimiter).filter(Boolean), ...SBIN_DIRS];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** Like findPostfixTool, but a missing tool is a configuration error saying what to install (`pkg`) or set. */
export function requirePostfixTool(name: string, configured?: string, pkg = "Postfix"): string {
  const found = findPostfixTool(name, configured);
  if (found) return found;
  if (configured) throw usageError(`${name} = "${configured}" is not an executable file`, `fix the ${name} key in server.toml`);
  throw usageError(`${name} not found in PATH, /usr/sbin or /usr/local/sbin`, `install ${pkg} or set ${name} = "/path/to/${name}" in server.toml`);
}

/** Runs a tool with an argv array (never a shell) and a hard timeout; `input` goes to its stdin, `env` replaces the environment. */
export async function runTool(argv: string[], timeoutMs: number, opts: { input?: string; env?: Record<string, string> } = {}): Promise<{ code: number; stdout: string; stderr: string; timedOut: boolean }> {
  const proc = Bun.spawn(argv, { stdin: opts.input === undefined ? "ignore" : Buffer.from(opts.input), stdout: "pipe", stderr: "pipe", env: opts.env });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  const done = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  done.catch(() => undefined);
  try {
    const r = await Promise.race([done, deadline]);
    if (r !== "timeout") return { code: r[2], stdout: r[0], stderr: r[1], timedOut: false };
    // Killing the tool is enough: a child it left behind may hold the pipes
    // open for much longer, so do not wait for them to close.
    proc.kill("SIGKILL");
    const code = await proc.exited;
    return { code, stdout: "", stderr: "", timedOut: true };
  } finally {
    clearTimeout(timer);
  }
}

/** Asks postconf for Postfix's default_database_type; falls back to hash when unknown. */
export async function defaultMapType(postconf?: string): Promise<MapType> {
  if (!postconf) return "hash";
  try {
    const r = await runTool([postconf, "-h", "default_database_type"], 10_000);
    const type = r.stdout.trim();
    return r.code === 0 && (MAP_TYPES as readonly string[]).includes(type) ? (type as MapType) : "hash";
  } catch {
    return "hash";
  }
}

/** The file postmap creates next to the source for a map type. */
export function mapDbSuffix(type: MapType): string {
  switch (type) {
    case "lmdb":
      return ".lmdb";
    case "cdb":
      return ".cdb";
    default:
      return ".db";
  }
}

/** An error for a failed postmap run, carrying postmap's own words. */
export function postmapError(detail: string): RelayError {
  return new RelayError(`postmap failed: ${detail.trim().split("\n").slice(-3).join(" ") || "no output"}`, {
    hint: "the last good map is still in place; fix the cause (disk space, permissions, map type) and the server retries",
  });
}
