import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import type { ServerConfig } from "../../lib/config.ts";
import { usageError } from "../../lib/errors.ts";
import { parseIp } from "../../lib/ip.ts";
import { log } from "../../lib/logging.ts";
import type { Clock } from "../../lib/clock.ts";
import type { LiveView } from "../live.ts";
import { answer, ProtocolError, RequestReader, type Handler } from "../policy/protocol.ts";
import type { Lookup, LookupContext, LookupStatus, LookupType } from "./types.ts";

/**
 * The relay decision: OK when client_address lies in a live lease, DUNNO
 * otherwise, so Postfix goes on to reject_unauth_destination. No other
 * action is ever given: this service can only open the relay for leases.
 */
export function policyHandler(index: LiveView, clock: Clock): Handler {
  return (attrs) => {
    if (attrs.get("request") !== "smtpd_access_policy") throw new ProtocolError(`not a policy request: request=${attrs.get("request") ?? "(none)"}`);
    const ip = parseIp(attrs.get("client_address") ?? "");
    return ip && index.covers(ip, clock.now()) ? "OK" : "DUNNO";
  };
}

/** The first row of a colon-separated account file (/etc/passwd, /etc/group) whose field `field` is `value`; null when none or unreadable. */
function accountRow(file: string, field: number, value: string): string[] | null {
  try {
    for (const line of readFileSync(file, "utf8").split("\n")) {
      const row = line.split(":");
      if (row.length >= 3 && row[field] === value) return row;
    }
  } catch {
    // No such file: no such account.
  }
  return null;
}

/** The gid of the group Postfix's smtpd runs as, or null when there is none (a test host). */
export function postfixGid(groupFile = "/etc/group"): number | null {
  const gid = accountRow(groupFile, 0, "postfix")?.[2];
  return gid && /^\d+$/.test(gid) ? Number(gid) : null;
}

/** The name of a uid in the passwd file, or null when it has none. */
function nameOf(uid: number, passwdFile: string): string | null {
  return accountRow(passwdFile, 2, String(uid))?.[0] || null;
}

/**
 * Refuses a socket directory that belongs to another user than root or the
 * server's own: its owner could swap the socket for one that answers OK for
 * everyone. Nothing else may decide who relays, so the server does not start.
 */
export function checkSocketDirOwner(dir: string, owner: number, self: number, passwdFile = "/etc/passwd"): void {
  if (owner === 0 || owner === self) return;
  const ownerName = nameOf(owner, passwdFile);
  const selfName = nameOf(self, passwdFile) ?? String(self);
  throw usageError(
    `the policy socket directory ${dir} belongs to ${ownerName ? `${ownerName} (uid ${owner})` : `uid ${owner}`}, not to ${self === 0 ? "root" : `root or ${selfName}`} (the user relayctl runs as), so that user could replace the socket and answer for relayctl`,
    `set policy_socket to a path in a directory of relayctl's own (the default /var/spool/postfix/relayctl/policy), or, if nothing but relayctl uses ${dir}: chown ${selfName}:postfix ${dir} && chmod 2750 ${dir}`,
  );
}

type Conn = { reader: RequestReader };

/**
 * The policy-delegation lookup: a unix socket inside Postfix's queue
 * directory (smtpd runs chrooted there on Debian), in a directory owned by
 * the service user (or root), group postfix, mode 2750, socket 0660. Never
 * TCP: any local user could bind a port while relayctl is down and answer OK.
 */
export class PolicyLookup implements Lookup {
  readonly type = policyLookupType;
  private listener: ReturnType<typeof Bun.listen<Conn>> | null = null;
  private ino: number | null = null;
  private failure: string | null = null;
  answers = { OK: 0, DUNNO: 0, closed: 0 };

  constructor(
    readonly socketPath: string,
    private readonly handler: Handler,
    private readonly entries: () => number,
  ) {}

  /** Creates the directory and binds the socket; a stale socket from a crash is replaced. */
  listen(): void {
    const dir = dirname(this.socketPath);
    const gid = postfixGid();
    if (!existsSync(dir)) {
      try {
        mkdirSync(dir, { mode: 0o750 });
        if (gid !== null) chownSync(dir, -1, gid);
        // setgid: the socket created inside gets group postfix without root.
        chmodSync(dir, 0o2750);
      } catch (err) {
        throw usageError(`cannot create ${dir}: ${(err as Error).message}`, `create it as root: install -d -o relayctl -g postfix -m 2750 ${dir}`);
      }
    }
    const st = lstatSync(dir);
    if (!st.isDirectory()) throw usageError(`${dir} is not a directory`, `remove it; relayctl creates the policy socket directory itself`);
    if (st.mode & 0o002) throw usageError(`${dir} is writable by everyone: another user could replace the policy socket`, `chmod 2750 ${dir}`);
    checkSocketDirOwner(dir, st.uid, process.getuid?.() ?? 0);
    const old = (() => {
      try {
        return lstatSync(this.socketPath);
      } catch {
        return null;
      }
    })();
    if (old) {
      // We hold the state lock, so a socket here is a crashed server's.
      if (!old.isSocket()) throw usageError(`${this.socketPath} exists and is not a socket`, "remove it or set policy_socket to another path");
      unlinkSync(this.socketPath);
    }
    const handler = this.handler;
    const counts = this.answers;
    const drop = (socket: { end(): void }, why: string): void => {
      counts.closed++;
      log.warn(`policy: closing a connection without an answer: ${why}`);
      socket.end();
    };
    this.listener = Bun.listen<Conn>({
      unix: this.socketPath,
      socket: {
        open(socket) {
          socket.data = { reader: new RequestReader() };
        },
        data(socket, chunk) {
          const reader = socket.data.reader;
          const out: Buffer[] = [];
          try {
            for (const attrs of reader.feed(chunk)) {
              const action = handler(attrs);
              counts[action as "OK" | "DUNNO"]++;
              out.push(answer(action));
            }
          } catch (err) {
            reader.error = err as Error;
          }
          // One write for every answer this chunk completed (Postfix may pipeline).
          if (out.length) {
            const bytes = out.length === 1 ? out[0]! : Buffer.concat(out);
            // Writes are unbuffered: a peer that lets its answers pile up unread would get them cut short.
            if (socket.write(bytes) < bytes.length && !reader.error) reader.error = new ProtocolError("the client does not read its answers");
          }
          if (reader.error) drop(socket, reader.error.message);
        },
        error(socket, err) {
          drop(socket, err.message);
        },
      },
    });
    chmodSync(this.socketPath, 0o660);
    if (gid !== null && process.getuid?.() === 0) chownSync(this.socketPath, -1, gid);
    this.ino = lstatSync(this.socketPath).ino;
    this.failure = null;
  }

  /** Answers come from the live index, which already holds the change: nothing to wait for. */
  async publish(): Promise<void> {
    if (!this.listener) throw new Error(this.failure ?? "policy socket is not listening");
  }

  /** Rebinds the socket when someone removed or replaced it (Postfix would defer every relay attempt). */
  async check(): Promise<void> {
    let ino: number | null = null;
    try {
      ino = lstatSync(this.socketPath).ino;
    } catch {
      // Gone: rebind below.
    }
    if (this.listener && ino === this.ino) return;
    log.warn(`policy: ${this.socketPath} was removed or replaced; listening on it again`);
    this.listener?.stop(true);
    this.listener = null;
    try {
      this.listen();
      log.info(`policy: listening on ${this.socketPath} again`);
    } catch (err) {
      this.failure = `policy socket ${this.socketPath}: ${(err as Error).message}`;
      log.error(this.failure);
    }
  }

  /** Degraded reasons: the socket could not be bound. */
  problems(): string[] {
    return this.failure ? [this.failure] : [];
  }

  /** Socket path, live entries and answers given. */
  status(): LookupStatus {
    return { lookup: "policy", target: this.socketPath, entries: this.entries(), answers: { ...this.answers } };
  }

  /** Stops listening and removes the socket, so Postfix defers relaying (451) instead of waiting. */
  async close(): Promise<void> {
    this.listener?.stop(true);
    this.listener = null;
    try {
      if (lstatSync(this.socketPath).ino === this.ino) unlinkSync(this.socketPath);
    } catch {
      // Already gone.
    }
  }
}

/** The socket as Postfix names it: relative to its queue directory when it lies inside it (smtpd may be chrooted there). */
export function policySocketName(config: ServerConfig, queueDirectory = "/var/spool/postfix"): string {
  const spool = queueDirectory.replace(/\/?$/, "/");
  return config.policySocket.startsWith(spool) ? config.policySocket.slice(spool.length) : config.policySocket;
}

/** The policy row of the lookup table. */
export const policyLookupType: LookupType = {
  name: "policy",
  prefixes: true,
  outlivesServer: false,
  rewritesWhole: null,
  refuses: () => null,
  async open(ctx: LookupContext): Promise<Lookup> {
    const lookup = new PolicyLookup(ctx.config.policySocket, policyHandler(ctx.index, ctx.clock), () => ctx.index.liveCount(ctx.clock.now()));
    lookup.listen();
    return lookup;
  },
  installed: async (config, state) => ({ policy: { socket: config.policySocket, listening: state.running && existsSync(config.policySocket) } }),
};
