/** Exit codes shared by every command; documented in README.md. */
export const ExitCode = {
  OK: 0,
  /** Network, timeout, server or postmap failure: worth retrying later. */
  FAILED: 1,
  /** Bad flags or configuration: a human must fix something. */
  USAGE: 2,
  /** The other side said no: token rejected, address not allowed, pin mismatch. */
  REFUSED: 3,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** The one error type: a one-line message, a hint saying what to do, and the exit code. */
export class RelayError extends Error {
  readonly exitCode: ExitCodeValue;
  readonly hint?: string;
  constructor(message: string, opts: { exitCode?: ExitCodeValue; hint?: string; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.name = "RelayError";
    this.exitCode = opts.exitCode ?? ExitCode.FAILED;
    this.hint = opts.hint;
  }
}

/** Shorthand for a configuration or usage error (exit 2). */
export function usageError(message: string, hint?: string): RelayError {
  return new RelayError(message, { exitCode: ExitCode.USAGE, hint });
}

/** Renders an error as the single stderr line users see: message, then what to do. */
export function formatError(err: unknown): string {
  if (err instanceof RelayError) return err.hint ? `${err.message}: ${err.hint}` : err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
