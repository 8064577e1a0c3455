import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import type { ServerConfig } from "../../lib/config.ts";
import { usageError } from "../../lib/errors.ts";
import { parseIp } from "../../lib/ip.ts";
import { log } from "../../lib/logging.ts";
import type { Clock } from "../leases.ts";
import type { LiveIndex } from "../live.ts";
import { answer, ProtocolError, RequestReader, type Handler } from "../policy/protocol.ts";
import type { Lookup, LookupContext, LookupStatus, LookupType } from "./index.ts";

/**
 * The relay decision: OK when client_address lies in a live lease, DUNNO
 * otherwise, so Postfix goes on to reject_unauth_destination. No other
 * action is ever given: this service can only open the relay for leases.
 */
export function policyHandler(index: LiveIndex, clock: Clock): Handler {
  return (attrs) => {
    if (attrs.get("request") !== "smtpd_access_policy") throw new ProtocolError(`not a policy request: request=${attrs.get("request") ?? "(none)"}`);
    const ip = parseIp(attrs.get("client_address") ?? "");
    return ip && index.covers(ip, clock.now()) ? "OK" : "DUNNO";
  };
}

/** The gid of the group Postfix's smtpd runs as, or null when there is none (a test host). */
export function postfixGid(groupFile = "/etc/group"): number | null {
  try {
    for (const line of readFileSync(groupFile, "utf8").split("\n")) {
      const [name, , gid] = line.split(":");
      if (name === "postfix" && gid && /^\d+$/.test(gid)) return Number(gid);
    }
  } catch {
    // No group file: no postfix group.
  }
  return null;
}

type Conn = { reader: RequestReader };

/**
 * The policy-delegation lookup: a unix socket inside Postfix's queue
 * directory (smtpd runs chrooted there on Debian), in a directory owned by
 * the service user, group postfix, mode 2750, socket 0660. Never TCP: any
 * local user could bind a port while relayctl is down and answer OK.
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

/** The main.cf line for the policy lookup: after permit_auth_destination, so local mail never waits on relayctl. */
export function policyHook(config: ServerConfig): string {
  return `postconf -e 'smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, permit_auth_destination, check_policy_service { unix:${policySocketName(config)}, timeout=5s }, reject_unauth_destination' && postfix reload`;
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
  postmap: false,
  outlivesServer: false,
  hook: (config) => policyHook(config),
  refuses: () => null,
  async open(ctx: LookupContext): Promise<Lookup> {
    const lookup = new PolicyLookup(ctx.config.policySocket, policyHandler(ctx.index, ctx.clock), () => ctx.index.liveCount(ctx.clock.now()));
    lookup.listen();
    return lookup;
  },
};
