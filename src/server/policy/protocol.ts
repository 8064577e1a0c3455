/**
 * Postfix's policy delegation protocol (SMTPD_POLICY_README): `name=value`
 * lines ended by an empty line; the answer is `action=...` and an empty
 * line; connections are reused. The loop here owns the framing only; a
 * Handler decides and never sees a socket.
 */

/** Largest request accepted, in characters; Postfix's own attributes stay far below it. */
export const MAX_REQUEST_BYTES = 16 * 1024;
/** Most attributes in one request (Postfix 3.x sends about 30). */
export const MAX_ATTRIBUTES = 100;

/** Decides one request: its attributes in, the action (without `action=`) out. */
export type Handler = (attrs: ReadonlyMap<string, string>) => string;

/** Why a connection was closed without an answer. */
export class ProtocolError extends Error {}

/**
 * Splits a byte stream into requests. feed() returns the requests completed
 * by the bytes given; at the first malformed or oversized one it stops and
 * sets `error`, after which the caller answers the requests before it, logs,
 * and closes the connection without answering, as the protocol asks.
 */
export class RequestReader {
  private pending = "";
  private readonly decoder = new TextDecoder("utf-8", { fatal: false });
  /** Why the stream cannot go on, once a request was malformed. */
  error: Error | null = null;

  /** Consumes bytes; returns every well-formed request they complete, in order. */
  feed(chunk: Uint8Array): Map<string, string>[] {
    const done: Map<string, string>[] = [];
    if (this.error) return done;
    let text = this.decoder.decode(chunk, { stream: true });
    // Postfix ends lines with \n; a CRLF peer (someone speaking HTTP here) is read the same way, and refused.
    if (text.includes("\r")) text = text.replace(/\r\n/g, "\n");
    this.pending += text;
    try {
      // Whole requests are cut at the blank line and split once: per-line
      // slicing of the buffer cost more than the decision itself.
      for (let end = this.pending.indexOf("\n\n"); end !== -1; end = this.pending.indexOf("\n\n")) {
        const block = this.pending.slice(0, end);
        this.pending = this.pending.slice(end + 2);
        if (block.length > MAX_REQUEST_BYTES) throw new ProtocolError(`request over ${MAX_REQUEST_BYTES} bytes`);
        done.push(parseRequest(block));
      }
      // A request still incomplete may not grow without bound, nor start with garbage.
      if (this.pending.length > MAX_REQUEST_BYTES) throw new ProtocolError(`request over ${MAX_REQUEST_BYTES} bytes`);
      const nl = this.pending.indexOf("\n");
      if (nl !== -1) parseRequest(this.pending.slice(0, nl));
    } catch (err) {
      this.error = err as ProtocolError;
      this.pending = "";
    }
    return done;
  }
}

/** Parses one request's `name=value` lines (without the blank line that ended it). */
function parseRequest(block: string): Map<string, string> {
  const attrs = new Map<string, string>();
  const lines = block.split("\n");
  if (lines.length > MAX_ATTRIBUTES) throw new ProtocolError(`more than ${MAX_ATTRIBUTES} attributes`);
  for (let line of lines) {
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line === "") throw new ProtocolError("empty request");
    const eq = line.indexOf("=");
    if (eq <= 0) throw new ProtocolError(`line without name=value: ${JSON.stringify(line.slice(0, 60))}`);
    attrs.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return attrs;
}

/** Formats an action as the protocol's answer. */
export function answer(action: string): string {
  return `action=${action}\n\n`;
}
