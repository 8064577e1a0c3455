#!/bin/sh
# relayctl installer: POSIX sh, for the mail host (server) and each dynamic host (client).
#
#   ./install.sh server | client          from an unpacked release directory, or a clone
#                                         after `npm ci` (builds dist/relayctl when missing)
#   ./install.sh uninstall [--purge] [--unhook]
#                                         remove units and binary (--purge: config, state, user
#                                         too; --unhook: first take the map out of main.cf)
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
DEFAULT_LISTEN='[::]:8443'
UNIT_DIR=/etc/systemd/system
MAN_PAGE=/usr/local/share/man/man1/relayctl.1
BASH_COMPLETION=/usr/local/share/bash-completion/completions/relayctl
ZSH_COMPLETION=/usr/local/share/zsh/site-functions/_relayctl
CRON_FILE=/etc/cron.d/relayctl
SERVICE_USER=relayctl
UNITS="relayctl.service relayctl-sweep.service relayctl-sweep.timer relayctl-client.service relayctl-client.timer"
# Where main.cf can hook the map in; uninstall checks them all.
HOOK_PARAMS="mynetworks smtpd_relay_restrictions smtpd_recipient_restrictions smtpd_client_restrictions"
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
             while main.cf uses the map, unless --unhook takes it out of main.cf first
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

# Prints the first string value of KEY in a TOML file; good enough for the flat keys relayctl uses.
toml_get() {
	[ -f "$1" ] || return 0
	sed -n -e "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" \
		-e "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*'\\([^']*\\)'.*/\\1/p" "$1" | head -n 1
}

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

# smtpctl to run (`smtpctl update table relayctl`) after each rewrite of smtpd_table; it needs root (see docs/opensmtpd.md).
# Default: found on PATH or in /usr/sbin.
#smtpctl = "/usr/sbin/smtpctl"

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

# Shared PostgreSQL state for several relay hosts: a postgres:// URL (unix socket: ?host=/var/run/postgresql; TLS: ?sslmode=verify-full).
# Default: SQLite in state_dir.
#database = "postgres://relayctl@localhost/relayctl?host=/var/run/postgresql"

# File (mode 0600, refused otherwise) holding the database password, when the URL has none.
#database_password_file = "/etc/relayctl/db-password"

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

install_server() {
	state_dir=$(toml_get "$DESTDIR$SERVER_CONFIG" state_dir)
	state_dir=${state_dir:-$DEFAULT_STATE_DIR}
	map=$(toml_get "$DESTDIR$SERVER_CONFIG" map)
	map=${map:-$DEFAULT_MAP}
	map_dir=$(dirname "$map")
	listen=$(toml_get "$DESTDIR$SERVER_CONFIG" listen)
	port=${listen:-$DEFAULT_LISTEN}
	port=${port##*:}
	case $port in '' | *[!0-9]*) die "$SERVER_CONFIG: cannot read the port of listen = \"$listen\"" ;; esac
	# With lookup = "policy" the server also writes its socket's directory.
	writable="$state_dir $map_dir"
	policy_dir=
	if [ "$(toml_get "$DESTDIR$SERVER_CONFIG" lookup)" = policy ]; then
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
	# Only a directory of our own is handed to relayctl: chowning /etc/postfix itself would be wrong.
	if ours "$map_dir" "$(dirname "$DEFAULT_MAP")"; then
		make_dir "$map_dir" 0755 "$SERVICE_USER:$SERVICE_USER"
	else
		warn "$map_dir exists and is not relayctl's own (owner $(owner_of "$map_dir")): make sure the $SERVICE_USER user can write it"
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

	if use_systemd; then
		write_units "$DESTDIR$UNIT_DIR" "$writable" "$port" server
		say "installed $DESTDIR$UNIT_DIR/relayctl.service, relayctl-sweep.service and relayctl-sweep.timer"
		if can_systemctl; then
			systemctl daemon-reload
			systemctl enable relayctl.service relayctl-sweep.timer
			# restart, not start: a re-install must run the new binary.
			systemctl restart relayctl.service || warn "relayctl.service did not start: see journalctl -u relayctl"
			systemctl start relayctl-sweep.timer
		else
			say "systemd is not running here: later run systemctl daemon-reload && systemctl enable --now relayctl.service relayctl-sweep.timer"
		fi
	else
		without_systemd_server
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
	if [ -n "$policy_dir" ]; then print_policy_steps "$policy_socket"; else print_postfix_steps "$map"; fi
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

# postconf for the system being changed: the target's main.cf under DESTDIR.
pc() {
	if [ -n "$DESTDIR" ]; then postconf -c "$DESTDIR/etc/postfix" "$@"; else postconf "$@"; fi
}

# unhooked_value PARAM VALUE MAP: VALUE without the entries that use MAP or relayctl's
# policy service (with the check_* word naming them), in the list syntax PARAM takes.
unhooked_value() {
	printf '%s\n' "$2" | awk -v param="$1" -v map="$3" '{
		gsub(/,/, " ")
		n = split($0, w, /[ \t]+/)
		out = ""; sep = (param == "mynetworks") ? " " : ", "
		for (i = 1; i <= n; i++) {
			if (w[i] == "") continue
			if (w[i] ~ /^check_/ && i < n && (index(w[i + 1], map) || index(w[i + 1], "relayctl/policy"))) { i++; continue }
			if (index(w[i], map) || index(w[i], "relayctl/policy")) continue
			out = out (out == "" ? "" : sep) w[i]
		}
		print out
	}'
}

# True when postconf can read the main.cf of the system being changed.
can_postconf() {
	command -v postconf >/dev/null 2>&1 && { [ -z "$DESTDIR" ] || [ -f "$DESTDIR/etc/postfix/main.cf" ]; }
}

# hooked_params MAP: the main.cf parameters that still use the map (or relayctl's policy
# service), one "PARAM=VALUE" per line.
hooked_params() {
	for param in $HOOK_PARAMS; do
		value=$(pc -h "$param" 2>/dev/null) || continue
		case $value in *"$1"* | *relayctl/policy*) printf '%s=%s\n' "$param" "$value" ;; esac
	done
}

# unhook MAP PURGE UNHOOK: with UNHOOK, takes the map out of main.cf and reloads Postfix;
# without it, --purge refuses while main.cf uses the map (Postfix would defer all mail,
# local too, once the map is gone) and prints the commands that unhook it.
unhook() {
	if ! can_postconf; then
		say "Remove $1 from Postfix's main.cf (mynetworks, smtpd_*_restrictions) and run \`postfix reload\`:"
		say "with the server gone nothing expires its leases, so those addresses would stay trusted."
		return 0
	fi
	hooked=$(hooked_params "$1")
	[ -n "$hooked" ] || return 0
	cmds=$(printf '%s\n' "$hooked" | while IFS= read -r line; do
		param=${line%%=*}
		printf "postconf -e '%s = %s'\n" "$param" "$(unhooked_value "$param" "${line#*=}" "$1")"
	done)
	if [ "$3" = 1 ]; then
		printf '%s\n' "$hooked" | while IFS= read -r line; do
			param=${line%%=*}
			pc -e "$param = $(unhooked_value "$param" "${line#*=}" "$1")"
			say "took $1 out of $param"
		done
		if [ -z "$DESTDIR" ] && command -v postfix >/dev/null 2>&1; then postfix reload || warn "postfix reload failed: run it yourself"; fi
	elif [ "$2" = 1 ]; then
		printf 'install.sh: main.cf still uses %s; deleting it would make Postfix defer all mail. Unhook it first:\n%s\npostfix reload\n(or run install.sh uninstall --purge --unhook)\n' "$1" "$cmds" >&2
		exit 1
	else
		say "main.cf still uses $1: with the server gone nothing expires its leases, so those"
		say "addresses would stay trusted. Unhook it (or re-run with --unhook):"
		printf '%s\n' "$cmds" | sed 's/^/  /'
		say "  postfix reload"
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
	# Before anything is removed: a refusal must leave the install as it was.
	unhook "${map:-$DEFAULT_MAP}" "$purge" "$unhook"
	for unit in $UNITS; do
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
