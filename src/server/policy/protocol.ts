/**
 * Postfix's policy delegation protocol (SMTPD_POLICY_README): `name=value`
 * lines ended by an empty line; the answer is `action=...` and an empty
 * line; connections are reused. The loop here owns the framing only; a
 * Handler decides and never sees a socket.
 */

/** Largest request accepted, in bytes; Postfix's own attributes stay far below it. */
export const MAX_REQUEST_BYTES = 16 * 1024;
/** Most attributes in one request (Postfix 3.x sends about 30). */
export const MAX_ATTRIBUTES = 100;

/** A request's attributes, by name; a name given twice has its last value, as a Map built line by line would. */
export interface Attributes {
  get(name: string): string | undefined;
}

/** Decides one request: its attributes in, the action (without `action=`) out. */
export type Handler = (attrs: Attributes) => string;

/** Why a connection was closed without an answer. */
export class ProtocolError extends Error {}

const BLANK_LINE = Buffer.from("\n\n");
const CR = 13;
const LF = 10;

/**
 * Splits a byte stream into requests. feed() returns the requests completed
 * by the bytes given; at the first malformed or oversized one it stops and
 * sets `error`, after which the caller answers the requests before it, logs,
 * and closes the connection without answering, as the protocol asks.
 */
export class RequestReader {
  /** The start of a request whose blank line has not come yet. */
  private pending: Buffer | null = null;
  /** Why the stream cannot go on, once a request was malformed. */
  error: Error | null = null;

  /** Consumes bytes; returns every well-formed request they complete, in order. */
  feed(chunk: Uint8Array): Attributes[] {
    const done: Attributes[] = [];
    if (this.error) return done;
    let buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    // Postfix ends lines with \n; a CRLF peer (someone speaking HTTP here) is read the same way, and refused.
    if (buf.includes(CR)) buf = Buffer.from(buf.toString("latin1").replace(/\r\n/g, "\n"), "latin1");
    if (this.pending) {
      // A \r that ended the previous chunk and this chunk's \n are one CRLF.
      const head = buf[0] === LF && this.pending[this.pending.length - 1] === CR ? this.pending.subarray(0, -1) : this.pending;
      buf = Buffer.concat([head, buf]);
      this.pending = null;
    }
    try {
      // Framed on bytes, each request decoded once into a flat string: line
      // checks on slices of one long string cost twice as much.
      let start = 0;
      for (let end = buf.indexOf(BLANK_LINE, start); end !== -1; end = buf.indexOf(BLANK_LINE, start)) {
        if (end - start > MAX_REQUEST_BYTES) throw new ProtocolError(`request over ${MAX_REQUEST_BYTES} bytes`);
        done.push(parseRequest(buf.toString("utf8", start, end)));
        start = end + 2;
      }
      // A request still incomplete may not grow without bound, nor start with garbage.
      if (buf.length - start > MAX_REQUEST_BYTES) throw new ProtocolError(`request over ${MAX_REQUEST_BYTES} bytes`);
      if (start < buf.length) {
        const nl = buf.indexOf(LF, start);
        if (nl !== -1) parseRequest(buf.toString("utf8", start, nl));
        // A copy: the socket may reuse the chunk's memory after this call.
        this.pending = Buffer.from(buf.subarray(start));
      }
    } catch (err) {
      this.error = err as ProtocolError;
    }
    return done;
  }
}

/**
 * Checks one request's `name=value` lines (without the blank line that ended
 * it) and returns them unsplit: the handler reads two of Postfix's ~30
 * attributes, and splitting all of them into a Map cost ten times the
 * decision itself.
 */
function parseRequest(block: string): Attributes {
  let lines = 0;
  for (let at = 0; at <= block.length; lines++) {
    if (lines === MAX_ATTRIBUTES) throw new ProtocolError(`more than ${MAX_ATTRIBUTES} attributes`);
    let nl = block.indexOf("\n", at);
    if (nl === -1) nl = block.length;
    if (nl === at) throw new ProtocolError("empty request");
    const eq = block.indexOf("=", at);
    if (eq <= at || eq > nl) throw new ProtocolError(`line without name=value: ${JSON.stringify(block.slice(at, nl).slice(0, 60))}`);
    at = nl + 1;
  }
  return new Lines(block);
}

/** Attributes read on demand from a request's checked lines. */
class Lines implements Attributes {
  constructor(private readonly block: string) {}

  get(name: string): string | undefined {
    const key = `\n${name}=`;
    let at = this.block.indexOf(key);
    if (at === -1) {
      if (!this.block.startsWith(key.slice(1))) return undefined;
      at = 0;
    } else {
      for (let next = this.block.indexOf(key, at + 1); next !== -1; next = this.block.indexOf(key, next + 1)) at = next;
      at++;
    }
    const from = at + key.length - 1;
    const nl = this.block.indexOf("\n", from);
    return this.block.slice(from, nl === -1 ? this.block.length : nl);
  }
}

const encoded = new Map<string, Buffer>();

/** The protocol's answer to an action, as the bytes to write. */
export function answer(action: string): Buffer {
  let bytes = encoded.get(action);
  if (bytes === undefined) {
    bytes = Buffer.from(`action=${action}\n\n`);
    // Handlers give a handful of actions (OK, DUNNO): encode each once, and let no handler grow this.
    if (encoded.size < 16) encoded.set(action, bytes);
  }
  return bytes;
}
