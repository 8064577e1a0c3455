import { connect, type Socket } from "node:net";
import { hostname } from "node:os";
import { usageError } from "../lib/errors.ts";
import { parseIp } from "../lib/ip.ts";
import { fail, pass, type CheckResult } from "./checks.ts";

/** Where to probe: a host name or address and a TCP port. */
export interface SmtpTarget {
  host: string;
  port: number;
}

/** One SMTP reply: code and its (joined) text lines. */
export interface SmtpReply {
  code: number;
  text: string;
}

/** How far the probe got and what the server said at RCPT. */
export interface SmtpProbeResult {
  local?: string;
  rcpt?: SmtpReply;
  /** Set when the dialogue broke off before RCPT: the step and why. */
  error?: string;
  transcript: string[];
}

/** A recipient in a domain no relay host is responsible for (RFC 2606). */
export const PROBE_RCPT = "relayctl-doctor@example.org";

/** Parses `--smtp HOST[:PORT]` (`[V6]:PORT` for IPv6); the port defaults to 25. */
export function parseSmtpTarget(value: string): SmtpTarget {
  const m = /^\[([0-9a-fA-F:.]+)\](?::([0-9]{1,5}))?$/.exec(value) ?? /^([A-Za-z0-9][A-Za-z0-9.-]*)(?::([0-9]{1,5}))?$/.exec(value);
  const port = m?.[2] === undefined ? 25 : Number(m[2]);
  if (!m || port < 1 || port > 65535 || (value.startsWith("[") && !parseIp(m[1]!))) {
    throw usageError(`--smtp ${value}: not HOST[:PORT]`, "use e.g. --smtp mail.example.org or --smtp [2001:db8::25]:587");
  }
  return { host: m[1]!, port };
}

/** Reads complete SMTP replies (multi-line `250-...` until `250 ...`) from a socket. */
class ReplyReader {
  private buf = "";
  private lines: string[] = [];
  private waiting: ((r: SmtpReply | Error) => void) | null = null;
  private ended: Error | null = null;

  constructor(socket: Socket, private readonly transcript: string[]) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      this.buf += chunk;
      // A server that never ends a line must not make us buffer forever.
      if (this.buf.length > 65536) return this.stop(new Error("reply line too long"));
      let nl: number;
      while ((nl = this.buf.indexOf("\n")) !== -1) {
        const line = this.buf.slice(0, nl).replace(/\r$/, "");
        this.buf = this.buf.slice(nl + 1);
        this.transcript.push(`< ${line}`);
        this.lines.push(line);
        this.deliver();
      }
    });
    socket.on("error", (e) => this.stop(e));
    socket.on("close", () => this.stop(new Error("connection closed")));
  }

  private stop(e: Error): void {
    this.ended ??= e;
    this.deliver();
  }

  private deliver(): void {
    if (!this.waiting) return;
    const end = this.lines.findIndex((l) => !/^\d{3}-/.test(l));
    if (end !== -1) {
      const got = this.lines.splice(0, end + 1);
      const code = Number(got.at(-1)!.slice(0, 3));
      const w = this.waiting;
      this.waiting = null;
      w(Number.isInteger(code) && code >= 200 ? { code, text: got.map((l) => l.slice(4)).join(" ") } : new Error(`not an SMTP reply: ${got.at(-1)}`));
    } else if (this.ended) {
      const w = this.waiting;
      this.waiting = null;
      w(this.ended);
    }
  }

  /** The next reply, or an error after timeoutMs. */
  next(timeoutMs: number): Promise<SmtpReply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        reject(new Error(`no reply within ${timeoutMs / 1000}s`));
      }, timeoutMs);
      this.waiting = (r) => {
        clearTimeout(timer);
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
      this.deliver();
    });
  }
}

/** Talks SMTP up to RCPT and quits: never DATA, so no mail is ever sent. */
export async function smtpProbe(target: SmtpTarget, opts: { timeoutMs?: number; helo?: string } = {}): Promise<SmtpProbeResult> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const transcript: string[] = [];
  const socket = connect({ host: target.host, port: target.port });
  const reader = new ReplyReader(socket, transcript);
  const result: SmtpProbeResult = { transcript };
  const send = async (cmd: string): Promise<SmtpReply> => {
    transcript.push(`> ${cmd}`);
    socket.write(`${cmd}\r\n`);
    return reader.next(timeoutMs);
  };
  let step = "connect";
  const expect = (r: SmtpReply, want: number) => {
    if (Math.floor(r.code / 100) !== want) throw new Error(`${r.code} ${r.text}`);
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connection within ${timeoutMs / 1000}s`)), timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    result.local = socket.localAddress;
    step = "greeting";
    expect(await reader.next(timeoutMs), 2);
    step = "EHLO";
    const helo = opts.helo ?? (hostname() || "localhost");
    const ehlo = await send(`EHLO ${helo}`);
    if (ehlo.code >= 500) expect(await send(`HELO ${helo}`), 2);
    else expect(ehlo, 2);
    step = "MAIL";
    // The null sender passes sender checks (domain, FQDN) that would hide the relay decision.
    expect(await send("MAIL FROM:<>"), 2);
    step = "RCPT";
    result.rcpt = await send(`RCPT TO:<${PROBE_RCPT}>`);
    step = "QUIT";
    await send("QUIT").catch(() => undefined);
  } catch (err) {
    if (!result.rcpt) result.error = `${step}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  } finally {
    socket.destroy();
  }
  return result;
}

/** Verdict on `client.smtp`: does the mail host accept relaying from this host right now. */
export function smtpVerdict(target: SmtpTarget, r: SmtpProbeResult): CheckResult {
  const where = `${target.host.includes(":") ? `[${target.host}]` : target.host}:${target.port}`;
  const from = r.local ? ` from ${r.local}` : "";
  if (!r.rcpt) {
    return fail("client.smtp", `SMTP probe of ${where} failed at ${r.error ?? "an unknown step"}`, "check the host and port, and that no firewall blocks SMTP from here");
  }
  const said = `${r.rcpt.code} ${r.rcpt.text}`;
  if (r.rcpt.code === 250 || r.rcpt.code === 251) return pass("client.smtp", `${where} accepts relaying${from} (RCPT TO:<${PROBE_RCPT}>: ${said})`);
  const hint = r.rcpt.code < 500
    ? "a temporary refusal: on the mail host run `relayctl doctor` (a missing or unreadable map makes Postfix defer)"
    : `the mail host does not list${from || " this host"}: run \`relayctl client\` (see client.lease); on the mail host, run \`relayctl doctor\``;
  return fail("client.smtp", `${where} refuses relaying${from}: ${said}`, hint);
}

/** Runs the probe and judges it. */
export async function smtpCheck(target: SmtpTarget): Promise<CheckResult> {
  return smtpVerdict(target, await smtpProbe(target));
}
