import { defineCommand } from "citty";
import { formatDuration } from "../../lib/duration.ts";
import { log } from "../../lib/logging.ts";
import { addClient, type Added } from "../../server/admin.ts";
import { common, repeatedFlag } from "../shared.ts";
import { clientSettings, expectFlag, ipv6PrefixFlag } from "./flags.ts";

/** `server add`: prints the enrollment line on stdout, or with --dyndns what a router's form needs. */
export async function runServerAdd(opts: { config?: string; name: string; ttl?: string; allow?: string[]; ipv6Prefix?: string; dyndns?: boolean; expect?: string }): Promise<string> {
  const added = await addClient({ ...clientSettings(opts), dyndns: opts.dyndns });
  return printAdded(opts.name, added, opts.dyndns);
}

/**
 * The enrollment line, then the token on a line of its own: the line reads
 * the token from stdin (`--token -`), which asks for it on a terminal, so
 * neither shell history nor `ps` on the client host ever holds it.
 */
export function renderEnrollment(a: Pick<Added, "line" | "token">): string {
  return `${a.line}\ntoken: ${a.token}`;
}

/** Prints what `server add` or `rotate` made (the enrollment, or with --dyndns the router form), warning first when the URL is unusable elsewhere. */
export function printAdded(name: string, added: Added, dyndns?: boolean): string {
  if (added.urlProblem) log.warn(added.urlProblem);
  const out = dyndns ? renderDyndnsEnrollment(name, added) : renderEnrollment(added);
  console.log(out);
  return out;
}

/** The pin's hex as the colon-separated upper-case SHA-256 fingerprint browsers, openssl and device UIs show. */
export function fingerprintOf(pin: string): string {
  return pin.replace(/^sha256:/, "").toUpperCase().match(/../g)!.join(":");
}

/**
 * What a router, NAS or dyndns2 daemon needs, for `server add --dyndns`:
 * the update URL in each common placeholder dialect, the credentials, the
 * certificate to trust and how long a lease lasts without an update.
 */
export function renderDyndnsEnrollment(name: string, a: Pick<Added, "token" | "ttl" | "cert" | "publicUrl">): string {
  const base = new URL("/nic/update", a.publicUrl);
  const url = `${base.origin}${base.pathname}`;
  const host = base.host;
  // ddclient 3.10 sends the update, credentials included, to members.dyndns.org when server= has no dot.
  const ddclientOk = host.includes(".") || host.startsWith("[");
  const lines = [
    `dyndns2 client ${name}: lease ttl ${a.ttl === null ? "server default" : formatDuration(a.ttl)}; the device must send an update at least that often (see "Routers and NAS boxes" in the docs)`,
    "",
    "Update URL (the device's own placeholders):",
    `  any / curl         ${url}?hostname=${name}&myip=IP   (myip may be left out: the connecting address)`,
    `  FRITZ!Box          ${url}?hostname=<domain>&myip=<ipaddr>`,
    `  OpenWrt            ${url}?hostname=[DOMAIN]&myip=[IP]`,
    `  Synology           ${url}?hostname=__HOSTNAME__&myip=__MYIP__`,
    `  pfSense/OPNsense   ${url}?hostname=${name}&myip=%IP%`,
    `  inadyn/UniFi       ddns-server = "${host}"  ddns-path = "/nic/update?hostname=%h&myip=%i"`,
    `  ddclient           protocol=dyndns2  ssl=yes  server=${host}${ddclientOk ? "" : "   (WARNING: ddclient needs a name with a dot or an IP literal here)"}`,
    `Username: ${name}`,
    `Password: ${a.token}`,
    `Certificate: ${a.cert.path}`,
    `  SHA-256 fingerprint ${fingerprintOf(a.cert.pin)}`,
    a.cert.generated
      ? "Trust: this certificate is self-signed by relayctl. ddclient (ssl_ca_file=) and inadyn (ca-trust-file=) can trust the file above; most routers and NAS boxes accept only a publicly trusted certificate: set tls_cert and tls_key in server.toml to the mail host's public certificate (the one Postfix uses), public_url to its name, and reload."
      : "Trust: the configured tls_cert; a device accepts it if it chains to a CA in the device's own trust store.",
  ];
  return lines.join("\n");
}

/** `relayctl server add`. */
export const addCommand = defineCommand({
  meta: { name: "add", description: "Create a client and print its enrollment line" },
  args: {
    ...common,
    name: { type: "positional", required: true, description: "client name: [a-z0-9][a-z0-9._-]{0,62}" },
    ttl: { type: "string", description: "lease lifetime for this client (90s, 20m, 1h, at most 400d); default: server ttl" },
    allow: { type: "string", description: "CIDR the client may lease or name (repeatable)" },
    "ipv6-prefix": ipv6PrefixFlag,
    expect: expectFlag,
    dyndns: { type: "boolean", description: "a router or NAS (dyndns2, /nic/update): print what its form needs instead of the enroll line; ttl defaults to 26h" },
  },
  run: ({ args, rawArgs }) => {
    const allow = repeatedFlag(rawArgs, "allow");
    return runServerAdd({ config: args.config, name: args.name, ttl: args.ttl, allow, ipv6Prefix: args["ipv6-prefix"], dyndns: args.dyndns, expect: args.expect }).then(() => undefined);
  },
});
