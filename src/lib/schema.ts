import { DURATION_LIMITS, formatDuration } from "./duration.ts";

/** Above this many clients, `client_metrics = "auto"` (the default) leaves the per-client series out: each check would read every client. */
export const CLIENT_METRICS_AUTO_MAX = 10_000;

/** One server.toml key: its default as TOML (null when unset), a one-line doc, and an example when unset. */
export interface ConfigKey {
  key: string;
  /** The default written as TOML, or null when the key is unset by default. */
  default: string | null;
  /** What the default means when it is computed (e.g. from the host name). */
  defaultNote?: string;
  doc: string;
  /** A value to show, commented out, when there is no default. */
  example?: string;
}

const bounds = (setting: keyof typeof DURATION_LIMITS): string => `${formatDuration(DURATION_LIMITS[setting].min)} to ${formatDuration(DURATION_LIMITS[setting].max)}`;

/**
 * Every server.toml key, in the order the skeleton lists them: the one
 * source the loader's key list, install.sh's skeleton (packaging/server.toml)
 * and docs/configuration.md are made from.
 */
export const SERVER_KEYS: readonly ConfigKey[] = [
  { key: "listen", default: '"[::]:8443"', doc: 'Address and port of the HTTPS lease server; "[::]:8443" is dual-stack.' },
  { key: "public_url", default: null, defaultNote: "https://HOSTNAME:PORT", doc: "URL clients use to reach this server; it is printed in enrollment lines.", example: '"https://mail.example.org:8443"' },
  { key: "state_dir", default: '"/var/lib/relayctl"', doc: "Leases, tokens, the audit log and the self-signed certificate (when tls_cert is unset)." },
  { key: "tls_cert", default: null, doc: "Certificate to serve instead of the self-signed one (set with tls_key); readable by the relayctl user.", example: '"/etc/relayctl/tls/fullchain.pem"' },
  { key: "tls_key", default: null, doc: "Key of tls_cert.", example: '"/etc/relayctl/tls/privkey.pem"' },
  { key: "lookup", default: '"map"', doc: 'How the MTA asks: "map" (a postmap table) or "policy" (the policy-delegation socket; exact IPv6 matching and prefix leases) for Postfix, "exim" (a net-iplsearch file) or "opensmtpd" (a file: table); see docs/lookups.md.' },
  { key: "policy_socket", default: '"/var/spool/postfix/relayctl/policy"', doc: "The policy socket (lookup = \"policy\"): inside Postfix's queue directory, never TCP." },
  { key: "map", default: '"/etc/postfix/relayctl/clients"', doc: "The Postfix lookup table relayctl keeps (lookup = \"map\"); its directory must be writable by relayctl." },
  { key: "map_type", default: null, defaultNote: "Postfix's default_database_type", doc: "Table type: hash, lmdb, btree or cdb.", example: '"lmdb"' },
  { key: "exim_hosts", default: '"/etc/exim4/relayctl/hosts"', doc: 'The net-iplsearch file Exim reads (lookup = "exim"), one leased address or network a line; its directory must be writable by relayctl.' },
  { key: "smtpd_table", default: '"/etc/smtpd/relayctl/clients"', doc: 'The file: table OpenSMTPD reads as <relayctl> (lookup = "opensmtpd"); its directory must be writable by relayctl.' },
  { key: "smtpctl", default: null, defaultNote: "found on PATH or in /usr/sbin", doc: 'smtpctl to run (`smtpctl update table relayctl`) after each rewrite of smtpd_table; smtpd takes it from root only, so a server running as another user sets smtpctl_socket (see docs/opensmtpd.md).', example: '"/usr/sbin/smtpctl"' },
  { key: "smtpctl_socket", default: null, defaultNote: "run smtpctl itself (root only)", doc: 'Where a server not running as root asks for that reload: relayctl-smtpctl.socket, which install.sh server installs, runs exactly `smtpctl update table relayctl` as root for group relayctl.', example: '"/run/relayctl-smtpctl.sock"' },
  { key: "ttl", default: '"20m"', doc: `Default lease lifetime (${bounds("ttl")}); clients renew every 4 minutes.` },
  { key: "ipv6_prefix", default: "128", doc: "Prefix length of IPv6 leases (48-128); below 128 needs lookup = \"policy\". 64 covers a LAN with its privacy addresses." },
  { key: "postmap", default: null, defaultNote: "found on PATH or in /usr/sbin", doc: "postmap to run.", example: '"/usr/sbin/postmap"' },
  { key: "postmap_timeout", default: '"10s"', doc: `How long one postmap (or smtpctl) run may take before it is abandoned (${bounds("postmap_timeout")}).` },
  { key: "renewals_per_minute", default: "20", doc: "Renewals one client may make per minute (0: no limit); a runaway loop is refused." },
  { key: "trusted_proxies", default: null, doc: "Reverse proxies whose X-Forwarded-For header is believed (addresses or CIDR networks).", example: '["127.0.0.1"]' },
  { key: "metrics_allow", default: null, doc: "Who may read GET /metrics besides loopback (addresses or CIDR networks).", example: '["192.0.2.10"]' },
  { key: "log_format", default: '"text"', doc: 'Log lines: "text" (level: message) or "json" (one object per line).' },
  { key: "log_level", default: '"info"', doc: "error, warn, info or debug." },
  { key: "database", default: null, defaultNote: "SQLite in state_dir", doc: "Shared PostgreSQL state for several relay hosts: a postgres:// URL (unix socket: ?host=/var/run/postgresql; TLS: ?sslmode=verify-full; connections: ?pool_size=10). Several hosts as libpq writes them (`h1,h2:5433`, `?host=/a,/b&port=5432`, `target_session_attrs=read-write`) or a list of one-host URLs: the first read-write host is used, and found again after a failover (several-relays.md, Failover).", example: '"postgres://relayctl@localhost/relayctl?host=/var/run/postgresql"' },
  { key: "database_password_file", default: null, doc: "File (mode 0600, refused otherwise) holding the database password, when the URL has none.", example: '"/etc/relayctl/db-password"' },
  { key: "stale_after", default: '"30s"', doc: `With database: once this host's view of the shared database is older than this (${bounds("stale_after")}), it answers the MTA as if no lease were live and reports degraded, until it reads the database again (several-relays.md, When a host loses the database).` },
  { key: "overdue_check", default: '"30s"', doc: `How often the server looks for clients that stopped renewing (late, silent) or came back (${bounds("overdue_check")}); see docs/operations.md.` },
  { key: "alert_command", default: null, doc: "Program run once per change of a client's overdue state, as an argv list (no shell): the event as JSON on stdin and RELAYCTL_EVENT, RELAYCTL_CLIENT, RELAYCTL_STATE, ... in its environment; killed after 10s.", example: '["/usr/local/bin/page-oncall"]' },
  { key: "alert_webhook", default: null, doc: "URL that gets each overdue event as a JSON POST (https, or http to loopback only); 5s timeout, 3 tries, in the background.", example: '"https://alerts.example.org/hooks/relayctl"' },
  { key: "alert_webhook_ca", default: null, doc: "CA certificate (PEM) to trust for alert_webhook instead of the system's.", example: '"/etc/relayctl/webhook-ca.pem"' },
  { key: "alert_mail", default: null, doc: "Address (or list) mailed each overdue event through the local sendmail (postconf -h sendmail_path).", example: '["postmaster@example.org"]' },
  { key: "client_metrics", default: '"auto"', doc: `Per-client series on /metrics (relayctl_client_overdue, relayctl_client_last_renewal_timestamp_seconds), two per client: true, false, or "auto" (on up to ${CLIENT_METRICS_AUTO_MAX.toLocaleString("en-US")} clients, since each overdue check then reads every client).` },
  { key: "export", default: null, doc: 'Files of the live leases for the rest of the mail stack (OpenDKIM InternalHosts, an rspamd map), one address or CIDR network a line, rewritten atomically like the lookup: a list of { format = "lines", path = "...", static = [networks], reload = [argv] }: static networks are listed whatever the leases, reload runs after each rewrite, for readers that load the file only when told. See docs/export.md.', example: '[{ format = "lines", path = "/etc/opendkim/relayctl/hosts", static = ["127.0.0.1", "::1"] }]' },
  { key: "audit_retention", default: '"90d"', doc: `How long the audit log (relayctl server log) keeps entries (${bounds("audit_retention")}).` },
];

/** The server.toml keys the loader accepts. */
export const SERVER_KEY_NAMES: readonly string[] = SERVER_KEYS.map((k) => k.key);

/** The commented server.toml that install.sh and the .deb put in /etc/relayctl (generated into packaging/server.toml). */
export function renderServerSkeleton(): string {
  const out = [
    "# relayctl server configuration (TOML). Every key is optional: the commented",
    "# values are the defaults. After changing listen, state_dir, map or",
    "# policy_socket, re-run `install.sh server` so the systemd unit's sandbox follows.",
    "# Generated from src/lib/schema.ts; docs/configuration.md has the same table.",
  ];
  for (const k of SERVER_KEYS) {
    out.push("", `# ${k.doc}`);
    if (k.defaultNote) out.push(`# Default: ${k.defaultNote}.`);
    out.push(`#${k.key} = ${k.default ?? k.example ?? '""'}`);
  }
  return out.join("\n") + "\n";
}

/** The configuration reference table for docs/configuration.md. */
export function renderServerKeyTable(): string {
  const rows = ["| key | default | meaning |", "|---|---|---|"];
  for (const k of SERVER_KEYS) rows.push(`| \`${k.key}\` | ${k.default ? `\`${k.default}\`` : k.defaultNote ?? "unset"} | ${k.doc.replace(/\|/g, "\\|")} |`);
  return rows.join("\n") + "\n";
}
