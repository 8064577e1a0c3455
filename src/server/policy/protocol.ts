/**
 * Postfix's policy delegation protocol (SMTPD_POLICY_README): `name=value`
 * lines ended by an empty line; the answer is `action=...` and an empty
 * line; connections are reused. The loop here owns the framing only; a
 * Handler decides and never sees a socket.
 */

/** Largest request accepted; Postfix's own attributes stay far below it. */
export const MAX_REQUEST_BYTES = 16 * 1024;
/** Most attributes in one request (Postfix 3.x sends about 30). */
export const MAX_ATTRIBUTES = 100;

/** Decides one request: its attributes in, the action (without `action=`) out. */
export type Handler = (attrs: ReadonlyMap<string, string>) => string;

/** Why a connection was closed without an answer. */
export class ProtocolError extends Error {}

/**
 * Splits a byte stream into requests. feed() returns the requests completed
 * by the bytes given; a malformed or oversized one throws ProtocolError, after
 * which the caller logs and closes the connection without answering, as the
 * protocol asks.
 */
export class RequestReader {
  private pending = "";
  private attrs = new Map<string, string>();
  private size = 0;
  private readonly decoder = new TextDecoder("utf-8", { fatal: false });

  /** Consumes bytes; returns every request they complete, in order. */
  feed(chunk: Uint8Array): Map<string, string>[] {
    this.size += chunk.byteLength;
    if (this.size > MAX_REQUEST_BYTES) throw new ProtocolError(`request over ${MAX_REQUEST_BYTES} bytes`);
    this.pending += this.decoder.decode(chunk, { stream: true });
    const done: Map<string, string>[] = [];
    for (let nl = this.pending.indexOf("\n"); nl !== -1; nl = this.pending.indexOf("\n")) {
      const line = this.pending.slice(0, nl).replace(/\r$/, "");
      this.pending = this.pending.slice(nl + 1);
      if (line === "") {
        if (this.attrs.size === 0) throw new ProtocolError("empty request");
        done.push(this.attrs);
        this.attrs = new Map();
        // The next request's budget starts with the bytes already buffered for it.
        this.size = Buffer.byteLength(this.pending);
        continue;
      }
      const eq = line.indexOf("=");
      if (eq <= 0) throw new ProtocolError(`line without name=value: ${JSON.stringify(line.slice(0, 60))}`);
      if (this.attrs.size >= MAX_ATTRIBUTES) throw new ProtocolError(`more than ${MAX_ATTRIBUTES} attributes`);
      this.attrs.set(line.slice(0, eq), line.slice(eq + 1));
    }
    return done;
  }
}

/** Formats an action as the protocol's answer. */
export function answer(action: string): string {
  return `action=${action}\n\n`;
}
