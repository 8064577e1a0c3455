import { readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";

/** A user as file permissions see it. */
export interface Principal {
  name: string;
  uid: number;
  gids: number[];
}

function readLines(path: string): string[][] {
  try {
    return readFileSync(path, "utf8").split("\n").map((l) => l.split(":"));
  } catch {
    return [];
  }
}

/** Looks a user up by name or uid in /etc/passwd and /etc/group; null when unknown. */
export function lookupUser(who: string | number): Principal | null {
  const row = readLines("/etc/passwd").find((f) => f.length >= 4 && (typeof who === "number" ? Number(f[2]) === who : f[0] === who));
  if (!row) return typeof who === "number" ? { name: String(who), uid: who, gids: [] } : null;
  const name = row[0]!;
  const gid = Number(row[3]);
  const extra = readLines("/etc/group").filter((g) => g.length >= 4 && g[3]!.split(",").includes(name)).map((g) => Number(g[2]));
  return { name, uid: Number(row[2]), gids: [gid, ...extra] };
}

/** The user this process runs as. */
export function currentUser(): Principal {
  const uid = process.getuid?.() ?? 0;
  const found = lookupUser(uid);
  return { name: found?.name ?? String(uid), uid, gids: [...new Set([process.getgid?.() ?? 0, ...(process.getgroups?.() ?? []), ...(found?.gids ?? [])])] };
}

function permits(path: string, who: Principal, bit: 4 | 2 | 1): boolean {
  const st = statSync(path);
  if (who.uid === 0) return bit !== 1 || st.isDirectory() || (st.mode & 0o111) !== 0;
  const shift = st.uid === who.uid ? 6 : who.gids.includes(st.gid) ? 3 : 0;
  return ((st.mode >> shift) & bit) !== 0;
}

/**
 * Why `who` cannot read or write `path` (every parent directory must be searchable),
 * or null when it can. Computed from modes, so it works for users other than our own.
 */
export function accessProblem(path: string, who: Principal, want: "read" | "write"): string | null {
  try {
    for (let d = dirname(path); ; d = dirname(d)) {
      if (!permits(d, who, 1)) return `${who.name} cannot enter ${d}`;
      if (d === "/") break;
    }
    if (!permits(path, who, want === "read" ? 4 : 2)) return `${who.name} cannot ${want} ${path}`;
    return null;
  } catch (err) {
    return `${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
}
