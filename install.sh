#!/bin/sh
# relayctl installer: POSIX sh, for the mail host (server) and each dynamic host (client).
#
#   ./install.sh server | client          from an unpacked release directory, or a clone
#                                         after `npm ci` (builds dist/relayctl when missing)
#   ./install.sh uninstall [--purge] [--unhook]
#                                         remove units and binary (--purge: config, state, user
#                                         too; --unhook: first take the map out of Postfix)
#   ./install.sh units DIR [BIN]          write the default systemd units into DIR (for packagers)
#   ./install.sh skeleton server|client   print the commented config skeleton (for packagers)
#   curl -fsSL URL/install.sh | sh -s -- server
#                                         piped: uses ./relayctl or RELAYCTL_BINARY=PATH
#
# Environment:
#   DESTDIR          install into this root instead of / (images, tests): no user is created,
#                    nothing is chowned and systemctl is never run
#   RELAYCTL_BINARY  the relayctl executable to install (default: next to this script, else ./relayctl)
#   RELAYCTL_INIT    systemd | cron (default: systemd when it runs here and systemctl exists;
#                    with DESTDIR, when the target has systemctl)
#   RELAYCTL_DOCTOR  1: run relayctl doctor even with DESTDIR (tests)
#
# See docs/operations.md ("Installing") for what each step does and why.
set -eu

BIN=/usr/local/bin/relayctl
CONF_DIR=/etc/relayctl
SERVER_CONFIG=$CONF_DIR/server.toml
CLIENT_CONFIG=$CONF_DIR/client.toml
DEFAULT_STATE_DIR=/var/lib/relayctl
DEFAULT_MAP=/etc/postfix/relayctl/clients
DEFAULT_POLICY_SOCKET=/var/spool/postfix/relayctl/policy
DEFAULT_EXIM_HOSTS=/etc/exim4/relayctl/hosts
DEFAULT_SMTPD_TABLE=/etc/smtpd/relayctl/clients
DEFAULT_SMTPCTL_SOCKET=/run/relayctl-smtpctl.sock
DEFAULT_LISTEN='[::]:8443'
UNIT_DIR=/etc/systemd/system
MAN_PAGE=/usr/local/share/man/man1/relayctl.1
BASH_COMPLETION=/usr/local/share/bash-completion/completions/relayctl
ZSH_COMPLETION=/usr/local/share/zsh/site-functions/_relayctl
CRON_FILE=/etc/cron.d/relayctl
SERVICE_USER=relayctl
UNITS="relayctl.service relayctl-sweep.service relayctl-sweep.timer relayctl-client.service relayctl-client.timer"
# Only for lookup = "opensmtpd": smtpd takes `smtpctl update table` from root alone.
SMTPCTL_UNITS="relayctl-smtpctl.socket relayctl-smtpctl@.service"
DESTDIR=${DESTDIR:-}

say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
	printf 'install.sh: %s\n' "$*" >&2
	exit 1
}

usage() {
	cat <<'EOF'
usage: install.sh server | client | uninstall [--purge] [--unhook] | units DIR [BIN]
  server     install relayctl, the relayctl user, config skeleton, relayctl.service and
             relayctl-sweep.timer (without systemd: the sweep cron line)
  client     install relayctl, config skeleton and relayctl-client.timer (or print the cron line)
  uninstall  remove units and binary; keep config and state unless --purge; --purge refuses
             while Postfix uses the map, unless --unhook takes it out of Postfix first
  units DIR  write the default systemd units into DIR, for relayctl at BIN
  skeleton server|client  print the commented config file install.sh writes
environment: DESTDIR, RELAYCTL_BINARY, RELAYCTL_INIT (systemd|cron), RELAYCTL_DOCTOR
EOF
}

# Piped into sh, $0 is the shell's name and there is no release directory to read.
script_dir() {
	if [ -f "$0" ]; then
		CDPATH='' cd -- "$(dirname -- "$0")" && pwd
	fi
}

# BEGIN shared with the .deb: build.ts copies these lines into its prerm and postrm, as a
# maintainer script cannot rely on any other file of a package being removed. Plain sh
# with no helper from outside the block; variables prefixed per function, as sh has no locals.

# shellcheck disable=SC2317 # postrm gets the whole block and does not call this
# toml_get FILE KEY: prints the first string value of KEY in FILE; good enough for the flat keys relayctl uses.
toml_get() {
	[ -f "$1" ] || return 0
	sed -n -e "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" \
		-e "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*'\\([^']*\\)'.*/\\1/p" "$1" | head -n 1
}

# postfix_instances ROOT: the config directory of each Postfix instance of the system at
# ROOT, as Postfix names them (without ROOT), one a line: the primary, then each of its
# multi_instance_directories. Fails when postconf cannot read the primary's main.cf.
postfix_instances() {
	pi_list=$(postconf -c "$1/etc/postfix" -h multi_instance_directories 2>/dev/null) || return 1
	echo /etc/postfix
	# Postfix separates list items with commas or blanks; no item may glob.
	set -f
	for pi_dir in $(printf '%s\n' "$pi_list" | tr ',' ' '); do echo "$pi_dir"; done
	set +f
}

# postfix_uses ROOT STRING...: true when a Postfix instance of the system at ROOT names any
# STRING in its settings: every main.cf parameter with each $parameter expanded (postconf
# -x), and master.cf's -o overrides, also expanded (postconf -Px), in every instance. So a
# hook written through a parameter of its own, or only for one smtpd in master.cf, counts.
# False when postconf is gone (Postfix removed) or there is no main.cf; true when postconf
# cannot read an instance, as then nothing shows the hook is gone. postconf's answer is
# only compared with STRING, never evaluated.
postfix_uses() {
	pu_root=$1
	shift
	command -v postconf >/dev/null 2>&1 && [ -f "$pu_root/etc/postfix/main.cf" ] || return 1
	pu_dirs=$(postfix_instances "$pu_root") || return 0
	# No directory name may glob.
	set -f
	for pu_dir in $pu_dirs; do
		pu_settings=$(postconf -c "$pu_root$pu_dir" -x 2>/dev/null && postconf -c "$pu_root$pu_dir" -Px 2>/dev/null) || {
			set +f
			return 0
		}
		for pu_s in "$@"; do
			case $pu_settings in *"$pu_s"*)
				set +f
				return 0
				;;
			esac
		done
	done
	set +f
	return 1
}

# shellcheck disable=SC2317 # postrm gets the whole block and does not call this
# empty_map ROOT MAP: replaces relayctl's map MAP (a path on the system at ROOT) and every
# database postmap built beside it with empty ones, so a Postfix that still names the map
# relays for nobody through it, yet still finds it (a missing map defers all mail). As
# atomic as the server's own rebuild: source and databases are built in a new private
# directory, then renamed over the databases, then over the source. Each table type comes
# from a database file itself (.lmdb, .cdb; a .db file is read as hash, else btree), never
# from a guess. On failure prints why (one phrase) and changes nothing it has not finished.
empty_map() {
	em_map=$1$2
	em_header='# Generated by relayctl: do not edit, every change is overwritten.'
	if [ -L "$em_map" ] || [ ! -f "$em_map" ]; then
		echo "$2 is not a regular file"
		return 1
	fi
	em_first=$(head -n 1 "$em_map")
	if [ "$em_first" != "$em_header" ]; then
		echo "$2 has no relayctl header, so it is not relayctl's to rewrite"
		return 1
	fi
	if ! command -v postmap >/dev/null 2>&1; then
		echo "postmap is not installed"
		return 1
	fi
	em_types=
	[ ! -f "$em_map.lmdb" ] || em_types="$em_types lmdb"
	[ ! -f "$em_map.cdb" ] || em_types="$em_types cdb"
	if [ -f "$em_map.db" ]; then
		if postmap -c "$1/etc/postfix" -s "hash:$em_map" >/dev/null 2>&1; then
			em_types="$em_types hash"
		elif postmap -c "$1/etc/postfix" -s "btree:$em_map" >/dev/null 2>&1; then
			em_types="$em_types btree"
		else
			echo "$2.db is neither a hash nor a btree table"
			return 1
		fi
	fi
	if [ -z "$em_types" ]; then
		echo "no database (.db, .lmdb, .cdb) lies beside $2"
		return 1
	fi
	# A new directory only root can enter: nobody can plant a link at the names postmap writes.
	em_tmp=$(mktemp -d "$em_map.empty.XXXXXX") || {
		echo "cannot create a directory beside $2"
		return 1
	}
	em_new=$em_tmp/map
	em_owner=$(stat -c %u:%g "$em_map")
	printf '%s\n' "$em_header" "# Emptied when relayctl was removed: Postfix relays for nobody through this map." >"$em_new"
	for em_type in $em_types; do
		if ! postmap -c "$1/etc/postfix" "$em_type:$em_new" 2>/dev/null; then
			rm -rf "$em_tmp"
			echo "postmap $em_type:$em_new failed"
			return 1
		fi
	done
	chmod 0644 "$em_tmp"/map*
	chown "$em_owner" "$em_tmp"/map* 2>/dev/null || true
	# Databases first, as the server does: Postfix reads them, and a source newer than its
	# database only draws a warning.
	for em_type in $em_types; do
		case $em_type in lmdb) em_suffix=.lmdb ;; cdb) em_suffix=.cdb ;; *) em_suffix=.db ;; esac
		mv -f "$em_new$em_suffix" "$em_map$em_suffix"
	done
	mv -f "$em_new" "$em_map"
	rm -rf "$em_tmp"
	echo "$em_types" | sed 's/^ //; s/ /, /g'
}
# END shared with the .deb

sha256_of() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d ' ' -f 1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d ' ' -f 1
	elif command -v openssl >/dev/null 2>&1; then
		openssl dgst -sha256 -r "$1" | cut -d ' ' -f 1
	else
		die "need sha256sum, shasum or openssl to verify $1"
	fi
}

# build_checkout DIR: builds DIR/dist/relayctl in a source checkout, as the checkout's
# owner, so a later `npm test` by that user can still overwrite dist/.
build_checkout() {
	[ -x "$1/node_modules/.bin/bun" ] || die "$1 is a source checkout without dist/relayctl and without node_modules: run \`npm ci\` there first (it installs bun), then install.sh again"
	say "building $1/dist/relayctl (bun build.ts, as npm run build does)"
	owner=$(stat -c %U "$1" 2>/dev/null || echo root)
	if [ "$(id -u)" = 0 ] && [ "$owner" != root ] && command -v runuser >/dev/null 2>&1; then
		(cd "$1" && runuser -u "$owner" -- node_modules/.bin/bun build.ts) || die "the build failed (above); fix it and run install.sh again"
	else
		(cd "$1" && node_modules/.bin/bun build.ts) || die "the build failed (above); fix it and run install.sh again"
	fi
}

# Sets SRC_BIN: RELAYCTL_BINARY, the release directory, a source checkout's dist/ (built
# when missing), then ./relayctl.
find_binary() {
	dir=$(script_dir)
	if [ -n "${RELAYCTL_BINARY:-}" ]; then
		SRC_BIN=$RELAYCTL_BINARY
	elif [ -n "$dir" ] && [ -f "$dir/relayctl" ]; then
		SRC_BIN=$dir/relayctl
	elif [ -n "$dir" ] && [ -f "$dir/build.ts" ]; then
		[ -f "$dir/dist/relayctl" ] || build_checkout "$dir"
		SRC_BIN=$dir/dist/relayctl
	elif [ -f ./relayctl ]; then
		SRC_BIN=./relayctl
	else
		die "no relayctl binary found: run install.sh from the unpacked release, or set RELAYCTL_BINARY=PATH"
	fi
	[ -f "$SRC_BIN" ] || die "$SRC_BIN: no such file"
}

# A release directory ships SHA256SUMS next to the binary; a binary without one is installed with a warning.
verify_binary() {
	sums=$(dirname -- "$SRC_BIN")/SHA256SUMS
	name=$(basename -- "$SRC_BIN")
	if [ ! -f "$sums" ]; then
		warn "no SHA256SUMS next to $SRC_BIN: checksum not verified"
		return 0
	fi
	want=$(awk -v f="$name" '$2 == f || $2 == ("*" f) { print $1; exit }' "$sums")
	if [ -z "$want" ]; then
		# In a release directory that is a broken download; elsewhere (dist/ of a checkout)
		# it is the tarballs' list, which says nothing about a loose binary.
		[ "$(dirname -- "$SRC_BIN")" != "$(script_dir)" ] || die "$sums lists no $name: download and unpack the release again"
		warn "$sums lists no $name: checksum not verified"
		return 0
	fi
	got=$(sha256_of "$SRC_BIN")
	[ "$got" = "$want" ] || die "$SRC_BIN: SHA-256 $got does not match $sums ($want); download the release again"
	say "verified $SRC_BIN against $sums"
}

install_binary() {
	find_binary
	verify_binary
	# Into a foreign root the binary may be for another architecture, so only a live install tries it.
	if [ -z "$DESTDIR" ]; then
		"$SRC_BIN" --version >/dev/null 2>&1 || die "$SRC_BIN does not run here: wrong architecture, or libc? glibc systems take linux-ARCH, Alpine and other musl systems linux-ARCH-musl (plus: apk add libstdc++ libgcc)"
	fi
	mkdir -p "$DESTDIR$(dirname "$BIN")"
	# Replaced by rename, so a running server keeps its old inode instead of "text file busy".
	cp "$SRC_BIN" "$DESTDIR$BIN.new"
	chmod 0755 "$DESTDIR$BIN.new"
	mv -f "$DESTDIR$BIN.new" "$DESTDIR$BIN"
	say "installed $DESTDIR$BIN"
	install_extras
}

# The man page and completions the build generates next to the binary (release
# directory or dist/); a bare binary has none, which is not worth stopping for.
install_extras() {
	from=$(dirname -- "$SRC_BIN")
	for pair in "relayctl.1 $MAN_PAGE" "completions/relayctl $BASH_COMPLETION" "completions/_relayctl $ZSH_COMPLETION"; do
		src=$from/${pair%% *}
		dst=$DESTDIR${pair#* }
		[ -f "$src" ] || continue
		put_file "$dst" 0644 <"$src"
		say "installed $dst"
	done
}

# Ownership is meaningless in a foreign root (its users are not ours), so DESTDIR installs skip it.
set_owner() {
	[ -z "$DESTDIR" ] || return 0
	chown "$1" "$2"
}

# make_dir PATH MODE OWNER: creates or repairs a directory.
make_dir() {
	mkdir -p "$DESTDIR$1"
	chmod "$2" "$DESTDIR$1"
	set_owner "$3" "$DESTDIR$1"
}

# uid_of USER: USER's uid on the system being changed (the target's passwd under DESTDIR),
# empty when it has no such user.
uid_of() {
	if [ -n "$DESTDIR" ]; then
		awk -F: -v u="$1" '$1 == u { print $3; exit }' "$DESTDIR/etc/passwd" 2>/dev/null || true
	else
		id -u "$1" 2>/dev/null || true
	fi
}

# ours DIR DEFAULT: true when DIR may be handed to relayctl (chowned and chmodded): it does
# not exist yet, so install.sh creates it; it is relayctl's own default directory; or it
# belongs to the relayctl user already. Never a symlink, which would hand over its target.
ours() {
	[ ! -L "$DESTDIR$1" ] || return 1
	[ -d "$DESTDIR$1" ] || return 0
	[ "$1" != "$2" ] || return 0
	uid=$(uid_of "$SERVICE_USER")
	[ -n "$uid" ] && [ "$(stat -c %u "$DESTDIR$1")" = "$uid" ]
}

# owner_of DIR: who owns DIR, for messages.
owner_of() {
	stat -c '%U (uid %u)' "$DESTDIR$1" 2>/dev/null || echo unknown
}

# put_file PATH MODE < content: atomic, so a half-written unit is never loaded.
put_file() {
	mkdir -p "$(dirname "$1")"
	cat >"$1.tmp"
	chmod "$2" "$1.tmp"
	mv -f "$1.tmp" "$1"
}

ensure_user() {
	if [ -n "$DESTDIR" ]; then
		say "DESTDIR set: create the $SERVICE_USER system user in the target system (home $DEFAULT_STATE_DIR, no login shell)"
		return 0
	fi
	id "$SERVICE_USER" >/dev/null 2>&1 && return 0
	nologin=$(command -v nologin 2>/dev/null || echo /bin/false)
	if command -v useradd >/dev/null 2>&1; then
		useradd --system --user-group --home-dir "$DEFAULT_STATE_DIR" --no-create-home --shell "$nologin" "$SERVICE_USER"
	elif command -v adduser >/dev/null 2>&1; then
		# BusyBox (Alpine): the group first, then a system user in it.
		addgroup -S "$SERVICE_USER" 2>/dev/null || true
		adduser -S -D -H -h "$DEFAULT_STATE_DIR" -s "$nologin" -G "$SERVICE_USER" "$SERVICE_USER"
	else
		die "neither useradd nor adduser found: create the system user $SERVICE_USER and re-run"
	fi
	say "created system user $SERVICE_USER"
}

# Generated from src/lib/schema.ts (renderServerSkeleton); a test keeps the two equal.
write_server_skeleton() {
	cat <<'EOF'
# relayctl server configuration (TOML). Every key is optional: the commented
# values are the defaults. After changing listen, state_dir, map or
# policy_socket, re-run `install.sh server` so the systemd unit's sandbox follows.
# Generated from src/lib/schema.ts; docs/configuration.md has the same table.

# Address and port of the HTTPS lease server; "[::]:8443" is dual-stack.
#listen = "[::]:8443"

# URL clients use to reach this server; it is printed in enrollment lines.
# Default: https://HOSTNAME:PORT.
#public_url = "https://mail.example.org:8443"

# Leases, tokens, the audit log and the self-signed certificate (when tls_cert is unset).
#state_dir = "/var/lib/relayctl"

# Certificate to serve instead of the self-signed one (set with tls_key); readable by the relayctl user.
#tls_cert = "/etc/relayctl/tls/fullchain.pem"

# Key of tls_cert.
#tls_key = "/etc/relayctl/tls/privkey.pem"

# How the MTA asks: "map" (a postmap table) or "policy" (the policy-delegation socket; exact IPv6 matching and prefix leases) for Postfix, "exim" (a net-iplsearch file) or "opensmtpd" (a file: table); see docs/lookups.md.
#lookup = "map"

# The policy socket (lookup = "policy"): inside Postfix's queue directory, never TCP.
#policy_socket = "/var/spool/postfix/relayctl/policy"

# The Postfix lookup table relayctl keeps (lookup = "map"); its directory must be writable by relayctl.
#map = "/etc/postfix/relayctl/clients"

# Table type: hash, lmdb, btree or cdb.
# Default: Postfix's default_database_type.
#map_type = "lmdb"

# The net-iplsearch file Exim reads (lookup = "exim"), one leased address or network a line; its directory must be writable by relayctl.
#exim_hosts = "/etc/exim4/relayctl/hosts"

# The file: table OpenSMTPD reads as <relayctl> (lookup = "opensmtpd"); its directory must be writable by relayctl.
#smtpd_table = "/etc/smtpd/relayctl/clients"

# smtpctl to run (`smtpctl update table relayctl`) after each rewrite of smtpd_table; smtpd takes it from root only, so a server running as another user sets smtpctl_socket (see docs/opensmtpd.md).
# Default: found on PATH or in /usr/sbin.
#smtpctl = "/usr/sbin/smtpctl"

# Where a server not running as root asks for that reload: relayctl-smtpctl.socket, which install.sh server installs, runs exactly `smtpctl update table relayctl` as root for group relayctl.
# Default: run smtpctl itself (root only).
#smtpctl_socket = "/run/relayctl-smtpctl.sock"

# Default lease lifetime (10s to 400d); clients renew every 4 minutes.
#ttl = "20m"

# Prefix length of IPv6 leases (48-128); below 128 needs lookup = "policy". 64 covers a LAN with its privacy addresses.
#ipv6_prefix = 128

# postmap to run.
# Default: found on PATH or in /usr/sbin.
#postmap = "/usr/sbin/postmap"

# How long one postmap (or smtpctl) run may take before it is abandoned (1s to 5m).
#postmap_timeout = "10s"

# Renewals one client may make per minute (0: no limit); a runaway loop is refused.
#renewals_per_minute = 20

# Reverse proxies whose X-Forwarded-For header is believed (addresses or CIDR networks).
#trusted_proxies = ["127.0.0.1"]

# Who may read GET /metrics besides loopback (addresses or CIDR networks).
#metrics_allow = ["192.0.2.10"]

# Log lines: "text" (level: message) or "json" (one object per line).
#log_format = "text"

# error, warn, info or debug.
#log_level = "info"

# Shared PostgreSQL state for several relay hosts: a postgres:// URL (unix socket: ?host=/var/run/postgresql; TLS: ?sslmode=verify-full; connections: ?pool_size=10). Several hosts as libpq writes them (`h1,h2:5433`, `?host=/a,/b&port=5432`, `target_session_attrs=read-write`) or a list of one-host URLs: the first read-write host is used, and found again after a failover (several-relays.md, Failover).
# Default: SQLite in state_dir.
#database = "postgres://relayctl@localhost/relayctl?host=/var/run/postgresql"

# File (mode 0600, refused otherwise) holding the database password, when the URL has none.
#database_password_file = "/etc/relayctl/db-password"

# With database: once this host's view of the shared database is older than this (6s to 1h), it answers the MTA as if no lease were live and reports degraded, until it reads the database again (several-relays.md, When a host loses the database).
#stale_after = "30s"

# How often the server looks for clients that stopped renewing (late, silent) or came back (1s to 1h); see docs/operations.md.
#overdue_check = "30s"

# Program run once per change of a client's overdue state, as an argv list (no shell): the event as JSON on stdin and RELAYCTL_EVENT, RELAYCTL_CLIENT, RELAYCTL_STATE, ... in its environment; killed after 10s.
#alert_command = ["/usr/local/bin/page-oncall"]

# URL that gets each overdue event as a JSON POST (https, or http to loopback only); 5s timeout, 3 tries, in the background.
#alert_webhook = "https://alerts.example.org/hooks/relayctl"

# CA certificate (PEM) to trust for alert_webhook instead of the system's.
#alert_webhook_ca = "/etc/relayctl/webhook-ca.pem"

# Address (or list) mailed each overdue event through the local sendmail (postconf -h sendmail_path).
#alert_mail = ["postmaster@example.org"]

# Per-client series on /metrics (relayctl_client_overdue, relayctl_client_last_renewal_timestamp_seconds), two per client: true, false, or "auto" (on up to 10,000 clients, since each overdue check then reads every client).
#client_metrics = "auto"

# Files of the live leases for the rest of the mail stack (OpenDKIM InternalHosts, an rspamd map), one address or CIDR network a line, rewritten atomically like the lookup: a list of { format = "lines", path = "...", static = [networks], reload = [argv] }: static networks are listed whatever the leases, reload runs after each rewrite, for readers that load the file only when told. See docs/export.md.
#export = [{ format = "lines", path = "/etc/opendkim/relayctl/hosts", static = ["127.0.0.1", "::1"] }]

# How long the audit log (relayctl server log) keeps entries (1s to 3650d).
#audit_retention = "90d"
EOF
}

write_client_skeleton() {
	cat <<'EOF'
# relayctl client configuration (TOML). Do not edit by hand: run the enrollment
# line printed by `relayctl server add NAME` on the mail host,
#   relayctl client enroll URL --name NAME --token - --pin sha256:...
# which replaces this file. It holds a secret token: keep it mode 0600.
#server = "https://mail.example.org:8443"
#name = "myhost"
#token = "..."
#pin = "sha256:..."
EOF
}

# install_config PATH MODE OWNER WRITER: an existing config is never touched.
install_config() {
	if [ -e "$DESTDIR$1" ]; then
		say "kept existing $DESTDIR$1"
		return 0
	fi
	"$4" | put_file "$DESTDIR$1" "$2"
	set_owner "$3" "$DESTDIR$1"
	say "wrote $DESTDIR$1"
}

# Hardening shared by both services.
hardening() {
	cat <<'EOF'
# MemoryDenyWriteExecute stays off on purpose: the JavaScript JIT needs W+X memory.
NoNewPrivileges=yes
ProtectSystem=strict
PrivateTmp=yes
ProtectHome=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
EOF
}

# needs_smtpctl: the [Unit] lines of a service that reloads smtpd through relayctl-smtpctl.socket
# (empty for every other lookup), so the socket listens before the service first asks.
needs_smtpctl() {
	[ "${SMTPCTL_SOCKET:-}" ] || return 0
	printf '%s\n' "# lookup = \"opensmtpd\": smtpd's table is reloaded through this root socket." "Wants=relayctl-smtpctl.socket" "After=relayctl-smtpctl.socket"
}

# render_server_unit WRITABLE_DIRS PORT
render_server_unit() {
	if [ "$2" -lt 1024 ]; then
		caps='# Port below 1024: the one capability needed to bind it, nothing else.
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE'
	else
		caps='# The port is above 1024, so the service needs no capability at all.
CapabilityBoundingSet='
	fi
	cat <<EOF
# relayctl lease server. Written by install.sh from server.toml (state_dir, map,
# listen); re-run \`install.sh server\` after changing those, as ReadWritePaths and
# the capabilities below follow them.
[Unit]
Description=relayctl lease server (Postfix relay access for dynamic hosts)
Documentation=man:relayctl(1)
Wants=network-online.target
After=network-online.target
$(needs_smtpctl)
[Service]
Type=simple
# An unprivileged user: the server only writes its state and the map's directory,
# which install.sh gives to this user, so it never needs root.
User=$SERVICE_USER
Group=$SERVICE_USER
ExecStart=$BIN server --config $SERVER_CONFIG
# SIGHUP makes the server re-read its TLS certificate and key (e.g. after renewal).
ExecReload=/bin/kill -HUP \$MAINPID
Restart=on-failure
RestartSec=5s

# The whole file system is read-only except the state and the map's directory
# (postmap writes the indexed table next to the map).
ReadWritePaths=$1
$(hardening)
# AF_UNIX for syslog from postmap; no raw, netlink or packet sockets.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
$caps

[Install]
WantedBy=multi-user.target
# Enabling the server enables the sweep that keeps expiring leases while it is down.
Also=relayctl-sweep.timer
EOF
}

# render_sweep_service WRITABLE_DIRS: the same user and sandbox as relayctl.service,
# because the sweep writes the same state and map.
render_sweep_service() {
	cat <<EOF
# relayctl sweep, started every minute by relayctl-sweep.timer: when no server holds
# the state lock it expires due leases and rebuilds the map; when one runs it does
# nothing. Written by install.sh from server.toml, like relayctl.service.
[Unit]
Description=relayctl sweep: expire leases while the server is down
Documentation=man:relayctl(1)
$(needs_smtpctl)
[Service]
Type=oneshot
User=$SERVICE_USER
Group=$SERVICE_USER
ExecStart=$BIN server sweep --config $SERVER_CONFIG
# A hung run must end before the next tick.
TimeoutStartSec=50s
ReadWritePaths=$1
$(hardening)
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
CapabilityBoundingSet=
EOF
}

render_sweep_timer() {
	cat <<'EOF'
# Runs relayctl-sweep.service every minute, so an expired lease leaves the map
# within a minute even while relayctl.service is stopped or failed.
[Unit]
Description=expire relayctl leases every minute, also while the server is down

[Timer]
OnBootSec=1min
OnUnitActiveSec=1min
# Without it systemd may delay each run by up to a minute to batch wakeups.
AccuracySec=1s

[Install]
WantedBy=timers.target
EOF
}

render_client_service() {
	cat <<EOF
# relayctl lease renewal, started by relayctl-client.timer.
[Unit]
Description=relayctl lease renewal
Documentation=man:relayctl(1)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
# Root, but a powerless one: client.toml holds the lease token and is written
# root-owned 0600 by \`relayctl client enroll\`, which an admin runs as root. A
# dedicated user would need a chown after every enrollment; instead this root has
# no capabilities (empty bounding set, so no DAC override), a read-only file
# system and no /home: it can read its own config and speak HTTPS, little else.
ExecStart=$BIN client --config $CLIENT_CONFIG
# A hung server must not hold the unit past the next timer tick.
TimeoutStartSec=3min
$(hardening)
# AF_NETLINK lets getaddrinfo() see which address families the host has.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
CapabilityBoundingSet=
EOF
}

render_client_timer() {
	cat <<'EOF'
# Renews the relayctl lease every 4 minutes, well inside the default 20m ttl.
[Unit]
Description=renew the relayctl lease every 4 minutes

[Timer]
OnBootSec=30s
OnUnitActiveSec=4min
# Jitter, so hosts that booted together do not call the server in lockstep.
RandomizedDelaySec=30s
# Without it systemd may delay each run by up to a minute to batch wakeups.
AccuracySec=1s

[Install]
WantedBy=timers.target
EOF
}

# render_smtpctl_socket: where the relayctl user asks for a reload of smtpd's table. Root's
# socket, group relayctl: no other user may make root run anything through it.
render_smtpctl_socket() {
	cat <<EOF
# lookup = "opensmtpd": smtpd takes \`smtpctl update table\` from root only, and the
# relayctl server runs as $SERVICE_USER. Each connection here starts one
# relayctl-smtpctl@.service, which runs exactly that command as root and answers
# with what smtpctl printed. Written by install.sh server; server.toml's
# smtpctl_socket names this socket.
[Unit]
Description=relayctl: reloads OpenSMTPD's relayctl table for the relayctl server
Documentation=man:relayctl(1)

[Socket]
ListenStream=$SMTPCTL_SOCKET
SocketUser=root
SocketGroup=$SERVICE_USER
SocketMode=0660
Accept=yes
# The server asks once per rewrite, one at a time: more is a runaway.
MaxConnections=4

[Install]
WantedBy=sockets.target
EOF
}

# render_smtpctl_service SMTPCTL GROUP: the root half. Its argv is fixed, it reads nothing
# from the connection, and it holds no capability: root's uid is all smtpd checks.
render_smtpctl_service() {
	cat <<EOF
# One \`smtpctl update table relayctl\` as root, for one connection to
# relayctl-smtpctl.socket; smtpctl's output (stdout and stderr) is the answer.
# Written by install.sh server.
[Unit]
Description=relayctl: smtpctl update table relayctl
Documentation=man:relayctl(1)
CollectMode=inactive-or-failed

[Service]
Type=simple
# smtpctl refuses to run unless its group is smtpd's queue group, which it gets from its
# setgid bit; NoNewPrivileges ignores that bit, so the group is given here instead.
Group=$2
ExecStart=$1 update table relayctl
StandardInput=socket
StandardOutput=socket
StandardError=socket
RuntimeMaxSec=30s
# smtpctl is C, with no JIT: it needs no W+X memory.
MemoryDenyWriteExecute=yes
$(hardening | sed 1d)
PrivateNetwork=yes
# smtpd's control socket is a unix socket in the file system.
RestrictAddressFamilies=AF_UNIX
CapabilityBoundingSet=
EOF
}

# write_units DIR WRITABLE_DIRS PORT KIND(server|client)
write_units() {
	if [ "$4" = server ]; then
		render_server_unit "$2" "$3" | put_file "$1/relayctl.service" 0644
		render_sweep_service "$2" | put_file "$1/relayctl-sweep.service" 0644
		render_sweep_timer | put_file "$1/relayctl-sweep.timer" 0644
	else
		render_client_service | put_file "$1/relayctl-client.service" 0644
		render_client_timer | put_file "$1/relayctl-client.timer" 0644
	fi
}

# find_program NAME: prints where NAME is installed on the system being changed: in the
# target's bin directories under DESTDIR; here also on PATH (the sbin ones may be missing from it).
find_program() {
	for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
		# -L as well: in a target root, /usr/sbin/crond -> /bin/busybox points at this machine's /bin.
		if [ -x "$DESTDIR$d/$1" ] || [ -L "$DESTDIR$d/$1" ]; then
			echo "$d/$1"
			return 0
		fi
	done
	[ -z "$DESTDIR" ] && command -v "$1" 2>/dev/null
}

# systemd runs the services only where it is the running init and systemctl exists: a
# container or chroot that merely has the package installed gets the cron way. A DESTDIR
# root cannot be running, so there the target's systemctl decides.
use_systemd() {
	case ${RELAYCTL_INIT:-auto} in
	systemd) return 0 ;;
	cron) return 1 ;;
	auto) { [ -n "$DESTDIR" ] || [ -d /run/systemd/system ]; } && find_program systemctl >/dev/null ;;
	*) die "RELAYCTL_INIT=${RELAYCTL_INIT:-}: use systemd or cron" ;;
	esac
}

# cron_daemon: which cron daemon the system has: "cron.d" (Debian's cron, cronie: they read
# /etc/cron.d), "busybox" (BusyBox crond: per-user crontabs only), or nothing. A /etc/cron.d
# directory alone proves nothing: packages create it without any daemon to read it.
cron_daemon() {
	for name in cron crond; do
		path=$(find_program "$name") || continue
		case $(readlink "$DESTDIR$path" 2>/dev/null) in
		*busybox) echo busybox ;;
		*) echo cron.d ;;
		esac
		return 0
	done
	if [ -z "$DESTDIR" ] && command -v busybox >/dev/null 2>&1 && busybox --list 2>/dev/null | grep -qx crond; then echo busybox; fi
}

# cron_install_hint: the command that installs a cron daemon with this system's package manager.
cron_install_hint() {
	for cmd in "apt-get install cron" "dnf install cronie" "yum install cronie" "apk add cronie" "zypper install cronie"; do
		if find_program "${cmd%% *}" >/dev/null; then
			echo "$cmd"
			return 0
		fi
	done
	echo "install cron or cronie with your package manager"
}

# systemctl only when systemd runs this very system; never for a DESTDIR root or a container without it.
can_systemctl() {
	[ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

run_doctor() {
	bin=$DESTDIR$BIN
	# The config's paths name the target system's files, which are not this machine's.
	if [ -n "$DESTDIR" ] && [ "${RELAYCTL_DOCTOR:-}" != 1 ]; then
		say "(DESTDIR set: run relayctl doctor in the target system)"
		return 0
	fi
	if ! "$bin" doctor --help >/dev/null 2>&1; then
		say "(this relayctl has no doctor command; skipped the checks)"
		return 0
	fi
	say ""
	say "running: relayctl doctor $1 $DESTDIR$2"
	# The install is done either way; doctor's findings are advice for the next steps.
	"$bin" doctor "$1" "$DESTDIR$2" || say "relayctl doctor reported problems (above); the install itself is complete"
}

# The table type relayctl writes: map_type from server.toml, else what Postfix defaults to.
map_type() {
	t=$(toml_get "$DESTDIR$SERVER_CONFIG" map_type)
	if [ -z "$t" ] && [ -z "$DESTDIR" ] && command -v postconf >/dev/null 2>&1; then
		t=$(postconf -h default_database_type 2>/dev/null || true)
	fi
	echo "${t:-hash}"
}

# print_postfix_steps MAP: next-step text for hooking the map into Postfix, with the
# current values expanded when postconf can tell them (the same lines relayctl doctor suggests).
print_postfix_steps() {
	table="$(map_type):$1"
	say "  2. Hook the map into Postfix, then run \`postfix reload\`:"
	if [ -z "$DESTDIR" ] && command -v postconf >/dev/null 2>&1; then
		networks=$(postconf -h mynetworks 2>/dev/null || true)
		relay=$(postconf -h smtpd_relay_restrictions 2>/dev/null || true)
		case " $networks " in
		*" $table "* | *" $table, "*) say "       (mynetworks already lists $table)" ;;
		*) say "       postconf -e 'mynetworks = $networks $table'" ;;
		esac
	else
		networks="\$(postconf -h mynetworks)"
		relay="\$(postconf -h smtpd_relay_restrictions)"
		say "       postconf -e \"mynetworks = $networks $table\""
	fi
	say "     or, to let leased hosts relay without mynetworks' other exemptions (connection limits, postscreen):"
	say "       postconf -e \"smtpd_relay_restrictions = check_client_access $table, ${relay:-reject_unauth_destination}\""
}

# print_policy_steps SOCKET: the check_policy_service line for lookup = "policy", with the
# socket named relative to the queue directory, as smtpd (chrooted there) sees it.
print_policy_steps() {
	queue=/var/spool/postfix
	if [ -z "$DESTDIR" ] && command -v postconf >/dev/null 2>&1; then queue=$(postconf -h queue_directory 2>/dev/null || echo "$queue"); fi
	name=${1#"$queue"/}
	say "  2. Hook the policy service into Postfix (relayctl doctor checks it), then run \`postfix reload\`:"
	say "       postconf -e 'smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, permit_auth_destination, check_policy_service { unix:$name, timeout=5s }, reject_unauth_destination'"
}

# mta_file LOOKUP: sets file (the file the MTA reads: Postfix's map, also beside the policy
# service, or Exim's or OpenSMTPD's line file, as server.toml sets it) and file_default.
mta_file() {
	case $1 in
	exim) file_key=exim_hosts file_default=$DEFAULT_EXIM_HOSTS ;;
	opensmtpd) file_key=smtpd_table file_default=$DEFAULT_SMTPD_TABLE ;;
	*) file_key=map file_default=$DEFAULT_MAP ;;
	esac
	file=$(toml_get "$DESTDIR$SERVER_CONFIG" "$file_key")
	file=${file:-$file_default}
}

# empty_line_file FILE MTA: once the server and the sweep are gone nothing expires the leases
# in Exim's or OpenSMTPD's file, which the MTA keeps reading (removing it would make Exim
# defer every relayed recipient and smtpd refuse to start): replaces it by rename, owner and
# mode kept, with one that admits nobody, and has smtpd reload it. Only relayctl's own file.
empty_line_file() {
	elf=$DESTDIR$1
	[ -f "$elf" ] && [ ! -L "$elf" ] || return 0
	# The header relayctl writes first in every file it owns (src/server/lookups/map.ts).
	if [ "$(head -n 1 "$elf")" != '# Generated by relayctl: do not edit, every change is overwritten.' ]; then
		warn "$1 has no relayctl header, so it was left as it is: $2 relays for every address in it; empty it yourself"
		return 0
	fi
	elf_new=$(mktemp "$elf.empty.XXXXXX") || die "cannot create a file beside $1 to empty it: $2 still relays for its leases"
	{
		head -n 1 "$elf"
		echo "# Emptied when relayctl was removed: $2 relays for nobody through this file."
		# smtpd refuses a table without an entry; no connection comes from 0.0.0.0.
		[ "$2" != OpenSMTPD ] || echo 0.0.0.0
	} >"$elf_new"
	chmod 0644 "$elf_new"
	chown "$(stat -c %u:%g "$elf")" "$elf_new" 2>/dev/null || true
	mv -f "$elf_new" "$elf"
	say "emptied $1, which $2 still reads: it relays for nobody through it now, as nothing would expire its leases"
	[ "$2" = OpenSMTPD ] && [ -z "$DESTDIR" ] || return 0
	elf_smtpctl=$(toml_get "$SERVER_CONFIG" smtpctl)
	[ -n "$elf_smtpctl" ] || elf_smtpctl=$(find_program smtpctl) || elf_smtpctl=smtpctl
	"$elf_smtpctl" update table relayctl >/dev/null 2>&1 ||
		warn "$elf_smtpctl update table relayctl failed: a running smtpd relays for the leases it loaded last until it reloads the table or restarts"
}

# print_exim_steps FILE: the ACL statement for lookup = "exim" (docs/exim.md), as relayctl doctor prints it.
print_exim_steps() {
	say "  2. Hook the file into Exim (relayctl doctor checks it): in the RCPT ACL (acl_smtp_rcpt),"
	say "     before the relay refusal (Debian: just before \`accept hosts = +relay_from_hosts\` in"
	say "     /etc/exim4/conf.d/acl/30_exim4-config_check_rcpt or exim4.conf.template):"
	say "       accept hosts = net-iplsearch;$1"
	say "     then: update-exim4.conf && systemctl reload exim4   (see docs/exim.md)"
}

# print_smtpd_steps FILE: the smtpd.conf lines for lookup = "opensmtpd" (docs/opensmtpd.md).
print_smtpd_steps() {
	say "  2. Hook the table into OpenSMTPD (relayctl doctor checks it): in /etc/smtpd.conf, above"
	say "     every other match line, with an action \"relay\" of your own:"
	say "       table relayctl file:$1"
	say "       match from src <relayctl> for any action \"relay\""
	say "     then: systemctl restart opensmtpd   (see docs/opensmtpd.md)"
}

# smtpctl_setup: for lookup = "opensmtpd", which smtpctl the root unit runs (SMTPCTL: the
# smtpctl key, else the target's) and where it listens (SMTPCTL_SOCKET: the smtpctl_socket
# key, else the default, which server.toml must then name: the server reads no unit).
smtpctl_setup() {
	smtpctl=$(toml_get "$DESTDIR$SERVER_CONFIG" smtpctl)
	[ -n "$smtpctl" ] || smtpctl=$(find_program smtpctl) || smtpctl=/usr/sbin/smtpctl
	# The group smtpctl is setgid to (Debian: opensmtpq), which the root unit must run with.
	if [ -g "$DESTDIR$smtpctl" ]; then
		smtpctl_group=$(stat -c %G "$DESTDIR$smtpctl")
	else
		smtpctl_group=opensmtpq
		[ -x "$DESTDIR$smtpctl" ] || warn "no smtpctl at $smtpctl: install OpenSMTPD and run install.sh server again, or set smtpctl in $SERVER_CONFIG (relayctl-smtpctl@.service runs it with group $smtpctl_group, Debian's queue group)"
	fi
	SMTPCTL_SOCKET=$(toml_get "$DESTDIR$SERVER_CONFIG" smtpctl_socket)
	if [ -z "$SMTPCTL_SOCKET" ]; then
		SMTPCTL_SOCKET=$DEFAULT_SMTPCTL_SOCKET
		warn "lookup = \"opensmtpd\" and the server runs as $SERVICE_USER, but smtpd takes \`smtpctl update table\` from root only: add smtpctl_socket = \"$SMTPCTL_SOCKET\" to $SERVER_CONFIG (the server refuses to start without it)"
	fi
}

install_server() {
	state_dir=$(toml_get "$DESTDIR$SERVER_CONFIG" state_dir)
	state_dir=${state_dir:-$DEFAULT_STATE_DIR}
	lookup=$(toml_get "$DESTDIR$SERVER_CONFIG" lookup)
	# The server replaces the MTA's file by rename, so it writes its directory.
	mta_file "$lookup"
	file_dir=$(dirname "$file")
	listen=$(toml_get "$DESTDIR$SERVER_CONFIG" listen)
	port=${listen:-$DEFAULT_LISTEN}
	port=${port##*:}
	case $port in '' | *[!0-9]*) die "$SERVER_CONFIG: cannot read the port of listen = \"$listen\"" ;; esac
	# With lookup = "policy" the server also writes its socket's directory.
	writable="$state_dir $file_dir"
	policy_dir=
	if [ "$lookup" = policy ]; then
		policy_socket=$(toml_get "$DESTDIR$SERVER_CONFIG" policy_socket)
		policy_socket=${policy_socket:-$DEFAULT_POLICY_SOCKET}
		policy_dir=$(dirname "$policy_socket")
		writable="$writable $policy_dir"
		# Before anything is installed, so a refusal leaves the system as it was. Postfix's own
		# directories (private/, public/) must keep their owner and mode, or Postfix breaks
		# and whoever got them could answer for relayctl.
		ours "$policy_dir" "$(dirname "$DEFAULT_POLICY_SOCKET")" || die "policy_socket = \"$policy_socket\" lies in $DESTDIR$policy_dir, which exists and is not relayctl's own (owner $(owner_of "$policy_dir")), so install.sh will not chown or chmod it: set policy_socket in $SERVER_CONFIG to a path in a directory of its own, such as the default $DEFAULT_POLICY_SOCKET, or, if nothing but relayctl uses $policy_dir, chown it to $SERVICE_USER first; then run install.sh server again"
	fi

	install_binary
	ensure_user
	make_dir "$CONF_DIR" 0750 "root:$SERVICE_USER"
	make_dir "$state_dir" 0700 "$SERVICE_USER:$SERVICE_USER"
	# Only a directory of our own is handed to relayctl: chowning /etc/postfix itself would be
	# wrong. 0755: the MTA's own user (Debian-exim, postfix) reads the 0644 file in it.
	if ours "$file_dir" "$(dirname "$file_default")"; then
		make_dir "$file_dir" 0755 "$SERVICE_USER:$SERVICE_USER"
	else
		warn "$file_dir exists and is not relayctl's own (owner $(owner_of "$file_dir")): make sure the $SERVICE_USER user can write it"
	fi
	install_config "$SERVER_CONFIG" 0640 "root:$SERVICE_USER" write_server_skeleton
	if [ -n "$policy_dir" ]; then
		# Group postfix and setgid, so smtpd (group postfix) may connect to the socket the server makes.
		if [ -n "$DESTDIR" ] || getent group postfix >/dev/null 2>&1; then
			make_dir "$policy_dir" 2750 "$SERVICE_USER:postfix"
		else
			warn "no postfix group: create $policy_dir (owner $SERVICE_USER, group postfix, mode 2750) once Postfix is installed"
		fi
	fi

	SMTPCTL_SOCKET=
	if [ "$lookup" = opensmtpd ]; then smtpctl_setup; fi

	if use_systemd; then
		write_units "$DESTDIR$UNIT_DIR" "$writable" "$port" server
		say "installed $DESTDIR$UNIT_DIR/relayctl.service, relayctl-sweep.service and relayctl-sweep.timer"
		if [ -n "$SMTPCTL_SOCKET" ]; then
			render_smtpctl_socket | put_file "$DESTDIR$UNIT_DIR/relayctl-smtpctl.socket" 0644
			render_smtpctl_service "$smtpctl" "$smtpctl_group" | put_file "$DESTDIR$UNIT_DIR/relayctl-smtpctl@.service" 0644
			say "installed $DESTDIR$UNIT_DIR/relayctl-smtpctl.socket and relayctl-smtpctl@.service ($smtpctl update table relayctl as root, for group $SERVICE_USER)"
		fi
		if can_systemctl; then
			systemctl daemon-reload
			# The socket first: the server's first reload of smtpd's table goes through it.
			if [ -n "$SMTPCTL_SOCKET" ]; then systemctl enable --now relayctl-smtpctl.socket; fi
			systemctl enable relayctl.service relayctl-sweep.timer
			# restart, not start: a re-install must run the new binary.
			systemctl restart relayctl.service || warn "relayctl.service did not start: see journalctl -u relayctl"
			systemctl start relayctl-sweep.timer
		else
			say "systemd is not running here: later run systemctl daemon-reload && systemctl enable --now ${SMTPCTL_SOCKET:+relayctl-smtpctl.socket }relayctl.service relayctl-sweep.timer"
		fi
	else
		without_systemd_server
		if [ -n "$SMTPCTL_SOCKET" ]; then
			say "no systemd: for lookup = \"opensmtpd\", also run this as root from your init system, so the"
			say "server (as $SERVICE_USER) can have smtpd's table reloaded (it runs nothing else):"
			say "  socat UNIX-LISTEN:$SMTPCTL_SOCKET,user=root,group=$SERVICE_USER,mode=0660,unlink-early,fork EXEC:'$smtpctl update table relayctl',stderr"
		fi
	fi

	run_doctor --config "$SERVER_CONFIG"
	say ""
	say "Next steps:"
	if use_systemd; then
		say "  1. Review $SERVER_CONFIG (public_url above all), then: systemctl restart relayctl"
	else
		say "  1. Review $SERVER_CONFIG (public_url above all), then start the server from your init system"
		say "     (stop it there first if it runs): $(server_command)"
	fi
	case $lookup in
	policy) print_policy_steps "$policy_socket" ;;
	exim) print_exim_steps "$file" ;;
	opensmtpd) print_smtpd_steps "$file" ;;
	*) print_postfix_steps "$file" ;;
	esac
	say "  3. Open TCP port $port to the dynamic hosts."
	say "  4. For each host: relayctl server add NAME, and run the printed line on that host"
	say "     after installing relayctl there with \`install.sh client\`."
}

# The foreground server as the service user, for init systems other than systemd.
server_command() {
	echo "runuser -u $SERVICE_USER -- $BIN server --config $SERVER_CONFIG"
}

# For containers, OpenRC, runit and BSD-style inits: how to run the server in the
# foreground, where its log goes, and the sweep that expires leases while it is down.
without_systemd_server() {
	sweep="$BIN server sweep --config $SERVER_CONFIG"
	case $(cron_daemon) in
	cron.d)
		if [ -d "$DESTDIR$(dirname "$CRON_FILE")" ]; then
			printf '# Expire relayctl leases every minute, also while the server is down.\n* * * * * %s %s\n' "$SERVICE_USER" "$sweep" | put_file "$DESTDIR$CRON_FILE" 0644
			say "installed $DESTDIR$CRON_FILE (the sweep, every minute as $SERVICE_USER)"
		else
			say "no /etc/cron.d: add the sweep to the system crontab (/etc/crontab format, with the user field):"
			say "  * * * * * $SERVICE_USER $sweep"
		fi
		;;
	busybox)
		say "BusyBox crond reads no /etc/cron.d: give the sweep to $SERVICE_USER's crontab, and make sure crond"
		say "runs (Alpine: rc-update add crond && rc-service crond start):"
		say "  echo '* * * * * $sweep' | crontab -u $SERVICE_USER -"
		;;
	*)
		warn "no cron daemon (cron, crond) found, so $CRON_FILE was not written: nothing would run the sweep, which expires leases while the server is down"
		say "run the sweep every minute: install cron, then run install.sh server again:"
		say "  $(cron_install_hint)"
		say "or run it as a service of its own from your init system:"
		say "  runuser -u $SERVICE_USER -- sh -c 'while :; do $sweep; sleep 60; done'"
		;;
	esac
	say "no systemd: run the server in the foreground as user $SERVICE_USER from your init system:"
	say "  $(server_command)"
	say "  (without runuser: su -s /bin/sh $SERVICE_USER -c '$BIN server --config $SERVER_CONFIG')"
	say "  It logs one line per event on stderr (JSON lines with log_format = \"json\" in server.toml);"
	say "  SIGTERM stops it cleanly, SIGHUP reloads its config and certificate."
}

install_client() {
	install_binary
	# On the mail host itself these already belong to the server: leave them as they are.
	[ -d "$DESTDIR$CONF_DIR" ] || make_dir "$CONF_DIR" 0750 root:root
	[ -d "$DESTDIR$DEFAULT_STATE_DIR" ] || make_dir "$DEFAULT_STATE_DIR" 0700 root:root
	install_config "$CLIENT_CONFIG" 0600 root:root write_client_skeleton

	if use_systemd; then
		write_units "$DESTDIR$UNIT_DIR" "" 0 client
		say "installed $DESTDIR$UNIT_DIR/relayctl-client.service and relayctl-client.timer"
		if can_systemctl; then
			systemctl daemon-reload
			systemctl enable --now relayctl-client.timer
		else
			say "systemd is not running here: later run systemctl daemon-reload && systemctl enable --now relayctl-client.timer"
		fi
	else
		if [ -z "$(cron_daemon)" ]; then
			warn "no systemd and no cron daemon (cron, crond) found: nothing renews the lease yet"
			say "either run the client from your init system as a service of its own (as root):"
			say "  $BIN client --watch --config $CLIENT_CONFIG"
			say "or install cron ($(cron_install_hint)) and use the crontab line below."
		fi
		say "no systemd: add this line to root's crontab (crontab -e); the sleep spreads hosts over 42 seconds:"
		say "  */4 * * * * sleep \$((\$(od -An -N1 -tu1 /dev/urandom) / 6)) && $BIN client --config $CLIENT_CONFIG"
	fi

	run_doctor --client-config "$CLIENT_CONFIG"
	say ""
	say "Next steps:"
	say "  1. On the mail host: relayctl server add $(hostname 2>/dev/null || echo NAME)"
	say "  2. Here, as root: run the \`relayctl client enroll ... --token -\` line it prints, then paste"
	say "     the token line when asked (it reads stdin, so the token stays out of shell history)."
	say "  3. Check: relayctl client status"
}

# unhook_plan MAP: the postconf edits that take MAP and relayctl's policy service out of
# every Postfix instance of the system being changed, one "KIND DIR NAME=VALUE" a line: e
# sets a main.cf parameter, X removes one, P sets a master.cf override (NAME is
# SERVICE/TYPE/PARAMETER). Only
# entries that name them go, with the check_* word before them, which can only make Postfix
# stricter; a parameter left empty by that (one of its own, relayctl_clients = hash:MAP)
# was only ever the map, so every $NAME, ${NAME} or $(NAME) of it goes the same way.
unhook_plan() {
	up_dirs=$(postfix_instances "$DESTDIR") || return 1
	set -f
	for up_dir in $up_dirs; do
		{
			postconf -c "$DESTDIR$up_dir" -n | sed 's/^/e /'
			postconf -c "$DESTDIR$up_dir" -P | sed 's/^/P /'
		} | awk -v map="$1" -v dir="$up_dir" '
		# Commas and blanks separate list items; a { ... } group is one item.
		function split_items(v, t,   n, i, c, depth, cur) {
			n = 0; depth = 0; cur = ""
			for (i = 1; i <= length(v); i++) {
				c = substr(v, i, 1)
				if (c == "{") depth++
				else if (c == "}" && depth > 0) depth--
				if (depth == 0 && (c == "," || c == " " || c == "\t")) {
					if (cur != "") t[++n] = cur
					cur = ""
				} else cur = cur c
			}
			if (cur != "") t[++n] = cur
			return n
		}
		function dropped(item) { return index(item, map) || index(item, "relayctl/policy") || (item in refs) }
		# VALUE without the items that name the map (sets cut when any went).
		function unhooked(name, v,   t, n, i, out, sep) {
			n = split_items(v, t); out = ""; cut = 0
			sep = (name ~ /(^|\/)mynetworks$/) ? " " : ", "
			for (i = 1; i <= n; i++) {
				if (t[i] ~ /^check_/ && i < n && dropped(t[i + 1])) { i++; cut = 1; continue }
				if (dropped(t[i])) { cut = 1; continue }
				out = out (out == "" ? "" : sep) t[i]
			}
			return out
		}
		{
			k = index($0, " = "); if (k == 0) k = length($0) - 1
			kind[NR] = substr($0, 1, 1); name[NR] = substr($0, 3, k - 3); value[NR] = substr($0, k + 3)
		}
		END {
			# Parameters that held only the map, found until none is new (a chain of them ends).
			for (round = 0; round <= NR; round++) {
				more = 0
				for (i = 1; i <= NR; i++) {
					if (kind[i] != "e" || (name[i] in only)) continue
					if (unhooked(name[i], value[i]) == "" && cut) {
						only[name[i]]; refs["$" name[i]]; refs["${" name[i] "}"]; refs["$(" name[i] ")"]; more = 1
					}
				}
				if (!more) break
			}
			for (i = 1; i <= NR; i++) {
				v = unhooked(name[i], value[i])
				if (cut) print kind[i] " " dir " " name[i] "=" v
			}
		}' | while IFS= read -r up_line; do
			# A parameter of its own left empty goes (X), as Postfix would warn about it; one of Postfix's is set empty.
			up_name=${up_line#e "$up_dir" }
			up_name=${up_name%=}
			case $up_line in
			"e $up_dir $up_name=") [ -n "$(postconf -c "$DESTDIR$up_dir" -d "$up_name" 2>/dev/null)" ] || up_line="X $up_dir $up_name=" ;;
			esac
			printf '%s\n' "$up_line"
		done
	done
	set +f
}

# apply_plan ROOT: runs each edit of an unhook_plan (on stdin) on the Postfix configuration
# under ROOT, never through a shell.
apply_plan() {
	while IFS= read -r ap_line; do
		ap_kind=${ap_line%% *}
		ap_rest=${ap_line#* }
		ap_dir=$1${ap_rest%% *}
		ap_rest=${ap_rest#* }
		ap_name=${ap_rest%%=*}
		ap_value=${ap_rest#*=}
		case $ap_kind in
		P) postconf -c "$ap_dir" -P "$ap_name=$ap_value" ;;
		X) postconf -c "$ap_dir" -X "$ap_name" ;;
		*) postconf -c "$ap_dir" -e "$ap_name = $ap_value" ;;
		esac
	done
}

# print_plan: an unhook_plan (on stdin) as the commands an admin would run.
print_plan() {
	sed -e "s|^\([ePX]\) /etc/postfix |\1 |" \
		-e "s|^X \([^ ]*\) \([^=]*\)=\$|postconf -c \1 -X \2|; s|^X \([^=]*\)=\$|postconf -X \1|" \
		-e "s|^e \([^ ]*\) \([^=]*\)=\(.*\)|postconf -c \1 -e '\2 = \3'|; s|^e \([^=]*\)=\(.*\)|postconf -e '\1 = \2'|" \
		-e "s|^P \([^ ]*\) \([^=]*\)=\(.*\)|postconf -c \1 -P '\2=\3'|; s|^P \([^=]*\)=\(.*\)|postconf -P '\1=\2'|"
}

# still_named MAP: the settings (postconf -x, -Px) of each instance that still name MAP or
# relayctl's policy service, for messages.
still_named() {
	sn_dirs=$(postfix_instances "$DESTDIR") || return 0
	set -f
	for sn_dir in $sn_dirs; do
		{ postconf -c "$DESTDIR$sn_dir" -x 2>&1 && postconf -c "$DESTDIR$sn_dir" -Px 2>&1; } | grep -F -e "$1" -e relayctl/policy | sed "s|^|$sn_dir: |"
	done
	set +f
}

# plan_works PLAN MAP: true when PLAN leaves no instance naming MAP or the policy service:
# tried on copies of every instance's main.cf and master.cf, so the real ones are only
# edited when the edits are known to unhook it all.
plan_works() {
	pw_tmp=$(mktemp -d) || return 1
	pw_dirs=$(postfix_instances "$DESTDIR") || return 1
	set -f
	for pw_dir in $pw_dirs; do
		mkdir -p "$pw_tmp$pw_dir"
		cp "$DESTDIR$pw_dir/main.cf" "$pw_tmp$pw_dir/"
		[ ! -f "$DESTDIR$pw_dir/master.cf" ] || cp "$DESTDIR$pw_dir/master.cf" "$pw_tmp$pw_dir/"
	done
	set +f
	pw_ok=0
	if printf '%s\n' "$1" | sed '/^$/d' | apply_plan "$pw_tmp" >/dev/null 2>&1 && ! postfix_uses "$pw_tmp" "$2" relayctl/policy; then pw_ok=1; fi
	rm -rf "$pw_tmp"
	[ "$pw_ok" = 1 ]
}

# unhook MAP PURGE UNHOOK: with UNHOOK, takes the map (and the policy service) out of every
# Postfix instance and reloads Postfix, or, when its edits would not unhook it all, says what
# is left and changes nothing; without UNHOOK, --purge refuses while Postfix names the map
# (it would defer all mail, local too, once the map is gone), and a plain uninstall prints
# the commands that unhook it. Sets HOOKED to 1 when Postfix still names the map afterwards.
unhook() {
	HOOKED=0
	if ! command -v postconf >/dev/null 2>&1; then
		say "Take $1 and relayctl's policy service out of Postfix (postconf -x, postconf -P show where) and run \`postfix reload\`:"
		say "with the server gone nothing expires its leases."
		return 0
	fi
	postfix_uses "$DESTDIR" "$1" relayctl/policy || return 0
	plan=$(unhook_plan "$1") || plan=
	works=0
	if [ -n "$plan" ] && plan_works "$plan" "$1"; then works=1; fi
	cmds=$(printf '%s\n' "$plan" | sed '/^$/d' | print_plan)
	if [ "$3" = 1 ] && [ "$works" = 1 ]; then
		printf '%s\n' "$plan" | apply_plan "$DESTDIR"
		printf '%s\n' "$cmds" | sed 's/^/unhooked: /'
		if [ -z "$DESTDIR" ] && command -v postfix >/dev/null 2>&1; then postfix reload || warn "postfix reload failed: run it yourself"; fi
		return 0
	fi
	HOOKED=1
	if [ "$works" = 1 ]; then
		how=$(printf '%s\npostfix reload' "$cmds")
	else
		# A spelling these edits do not take apart (a conditional \${name?{...}}, a service of
		# its own): the settings that still name it, for the admin to edit.
		how=$(printf 'these settings still name it after every edit install.sh knows (%s); edit them, then postfix reload:\n%s' "$(printf '%s' "$cmds" | tr '\n' ';')" "$(still_named "$1")")
	fi
	if [ "$3" = 1 ] || [ "$2" = 1 ]; then
		printf 'install.sh: Postfix still uses %s; deleting it would make Postfix defer all mail. Unhook it first:\n%s\n' "$1" "$how" >&2
		[ "$3" = 1 ] || printf '(or run install.sh uninstall --purge --unhook)\n' >&2
		[ "$2" = 0 ] || exit 1
	else
		say "Postfix still uses $1. Unhook it (or re-run with --unhook):"
		printf '%s\n' "$how" | sed 's/^/  /'
	fi
}

uninstall() {
	purge=0
	unhook=0
	for opt in "$@"; do
		case $opt in
		--purge) purge=1 ;;
		--unhook) unhook=1 ;;
		*) die "uninstall: unknown option $opt (only --purge and --unhook)" ;;
		esac
	done
	map=$(toml_get "$DESTDIR$SERVER_CONFIG" map)
	map=${map:-$DEFAULT_MAP}
	# Before anything is removed: a refusal must leave the install as it was.
	unhook "$map" "$purge" "$unhook"
	for unit in $UNITS $SMTPCTL_UNITS; do
		[ -f "$DESTDIR$UNIT_DIR/$unit" ] || continue
		if can_systemctl; then
			systemctl disable --now "$unit" || true
		fi
		rm -f "$DESTDIR$UNIT_DIR/$unit"
		say "removed $DESTDIR$UNIT_DIR/$unit"
	done
	if can_systemctl; then systemctl daemon-reload; fi
	for f in "$BIN" "$MAN_PAGE" "$BASH_COMPLETION" "$ZSH_COMPLETION" "$CRON_FILE"; do
		[ -f "$DESTDIR$f" ] || continue
		rm -f "$DESTDIR$f"
		say "removed $DESTDIR$f"
	done
	# Fail closed, once the server and the sweep are stopped (they would rebuild it): with them
	# gone nothing expires the leases in a map Postfix still reads, or
	# in Exim's or OpenSMTPD's file.
	lookup=$(toml_get "$DESTDIR$SERVER_CONFIG" lookup)
	mta_file "$lookup"
	case $lookup in
	exim) empty_line_file "$file" Exim ;;
	opensmtpd) empty_line_file "$file" OpenSMTPD ;;
	esac
	if [ "$HOOKED" = 1 ] && postfix_uses "$DESTDIR" "$map"; then
		if types=$(empty_map "$DESTDIR" "$map"); then
			say "emptied $map ($types), which Postfix still names: it relays for nobody through it now, as nothing would expire its leases; unhook it as above"
		else
			warn "Postfix still relays for the leases in $map, and nothing expires them any more; it could not be emptied: $types. Unhook it now (above)"
		fi
	fi
	if [ "$purge" = 0 ]; then
		say "kept $CONF_DIR, $DEFAULT_STATE_DIR and $(dirname "$DEFAULT_MAP") (use --purge to remove them)"
		return 0
	fi
	# Paths set in server.toml are never deleted: a typo there must not become rm -rf.
	for path in state_dir map policy_socket; do
		v=$(toml_get "$DESTDIR$SERVER_CONFIG" "$path")
		[ -z "$v" ] || say "note: $SERVER_CONFIG sets $path = $v; remove it yourself if no longer needed"
	done
	rm -rf "$DESTDIR$CONF_DIR" "$DESTDIR$DEFAULT_STATE_DIR" "$DESTDIR$(dirname "$DEFAULT_MAP")" "$DESTDIR$(dirname "$DEFAULT_POLICY_SOCKET")"
	say "removed $DESTDIR$CONF_DIR, $DESTDIR$DEFAULT_STATE_DIR, $DESTDIR$(dirname "$DEFAULT_MAP") and $DESTDIR$(dirname "$DEFAULT_POLICY_SOCKET")"
	if [ -z "$DESTDIR" ] && id "$SERVICE_USER" >/dev/null 2>&1; then
		if command -v userdel >/dev/null 2>&1; then userdel "$SERVICE_USER"; else deluser "$SERVICE_USER"; fi
		say "removed user $SERVICE_USER"
	fi
}

main() {
	case ${1:-} in
	server) install_server ;;
	client) install_client ;;
	uninstall)
		shift
		uninstall "$@"
		;;
	units)
		[ -n "${2:-}" ] || die "units: which directory?"
		BIN=${3:-$BIN}
		write_units "$2" "$DEFAULT_STATE_DIR $(dirname "$DEFAULT_MAP")" "${DEFAULT_LISTEN##*:}" server
		write_units "$2" "" 0 client
		# The root half of lookup = "opensmtpd", as Debian lays OpenSMTPD out; nothing
		# enables it (docs/opensmtpd.md: systemctl enable --now relayctl-smtpctl.socket).
		SMTPCTL_SOCKET=$DEFAULT_SMTPCTL_SOCKET
		render_smtpctl_socket | put_file "$2/relayctl-smtpctl.socket" 0644
		render_smtpctl_service /usr/sbin/smtpctl opensmtpq | put_file "$2/relayctl-smtpctl@.service" 0644
		;;
	skeleton)
		case ${2:-} in
		server) write_server_skeleton ;;
		client) write_client_skeleton ;;
		*) die "skeleton: server or client?" ;;
		esac
		;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
