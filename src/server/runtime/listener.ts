import type { ServerConfig } from "../../lib/config.ts";
import { ExitCode, RelayError } from "../../lib/errors.ts";
import { log } from "../../lib/logging.ts";
import { certificatePin, type ServerCertificate } from "../../lib/tls.ts";
import { MAX_BODY } from "../doors/api.ts";
import { dispatcher, type Route } from "../doors/routes.ts";

/**
 * Refuses an address another process already listens on. The listener sets
 * SO_REUSEPORT so a SIGHUP can bind the new certificate beside the old
 * listener, but the kernel then lets any process of the same user join the
 * port the same way (a second server with another state_dir) and hands it
 * half the connections. A plain bind without the option fails while anyone
 * holds the port; anything else it meets is left to the real bind to report.
 */
export function refuseHeldPort(host: string, port: number): void {
  if (port === 0) return;
  try {
    Bun.listen({ hostname: host, port, exclusive: true, socket: { data() {} } }).stop(true);
  } catch (err) {
    if ((err as { code?: string }).code !== "EADDRINUSE") return;
    throw new RelayError(`cannot listen on ${hostPort(host, port)}: another process already listens on port ${port}`, {
      exitCode: ExitCode.USAGE,
      hint: "stop it (ss -ltnp shows which), or give this server another listen in server.toml",
    });
  }
}

/** host:port, with an IPv6 host in brackets. */
export function hostPort(host: string, port: number | undefined): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/**
 * The HTTPS listener: binds the routes with the certificate, and on reload
 * binds a new certificate beside the old listener before closing it, so the
 * port is never free for another process to take.
 */
export class Listener {
  /** When the certificate's pin last changed (a reload), for status. */
  pinChangedAt: string | null = null;
  private server: ReturnType<typeof Bun.serve> | undefined;
  private pinNow: string;

  constructor(
    private readonly listen: ServerConfig["listen"],
    private certNow: ServerCertificate,
    private readonly table: Record<string, Route>,
  ) {
    this.pinNow = certificatePin(certNow.certPem);
  }

  /** The bound port (the configured one, or the kernel's pick for port 0). */
  get port(): number | undefined {
    return this.server?.port;
  }

  get cert(): ServerCertificate {
    return this.certNow;
  }

  get pin(): string {
    return this.pinNow;
  }

  /** Checks no one else holds the port (again just before binding: check and bind microseconds apart), then binds. */
  start(): void {
    refuseHeldPort(this.listen.host, this.listen.port);
    this.server = this.bind(this.certNow);
  }

  private bind(cert: ServerCertificate): ReturnType<typeof Bun.serve> {
    try {
      return Bun.serve({
        hostname: this.listen.host,
        port: this.listen.port,
        reusePort: true,
        tls: { cert: cert.certPem, key: cert.keyPem },
        maxRequestBodySize: MAX_BODY * 4,
        routes: this.table,
        fetch: dispatcher({}),
        error: (err) => {
          log.error(`request failed: ${err.message}`);
          return new Response('{"error":"internal","message":"internal server error"}\n', { status: 500 });
        },
      });
    } catch (err) {
      throw new RelayError(`cannot listen on ${this.listen.host}:${this.listen.port}: ${(err as Error).message}`, {
        exitCode: ExitCode.USAGE,
        hint: "another process holds the port, or the address is not on this host; change listen in server.toml",
      });
    }
  }

  /**
   * A changed certificate is bound beside the old listener, which finishes
   * its open requests and closes. False when it cannot be bound: the old
   * listener and certificate stay, and the caller keeps its configuration.
   */
  reload(next: ServerCertificate): boolean {
    if (next.certPem === this.certNow.certPem) return true;
    let bound: ReturnType<typeof Bun.serve>;
    try {
      bound = this.bind(next);
    } catch (err) {
      log.error(`reload: cannot listen with the new certificate, keeping the old listener: ${(err as Error).message}`);
      return false;
    }
    void this.server?.stop();
    this.server = bound;
    this.certNow = next;
    const nextPin = certificatePin(next.certPem);
    if (nextPin !== this.pinNow) {
      log.warn(`reload: certificate changed, pin is now ${nextPin}; clients enrolled with --pin must re-enroll`);
      this.pinNow = nextPin;
      this.pinChangedAt = new Date().toISOString();
    } else log.info("reload: certificate renewed, pin unchanged");
    return true;
  }

  /** Stops accepting; resolves when open requests are answered. */
  async stop(): Promise<void> {
    await this.server?.stop();
    this.server = undefined;
  }
}
