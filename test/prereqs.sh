#!/bin/sh
# The one list of what the tests need on Debian or Ubuntu; .ci/run installs
# it from here and docs/hacking.md points here.
#
#   test/prereqs.sh           as root: install what is missing and set it up for the tests
#   test/prereqs.sh --check   say on one line what is missing (exit 1), or nothing (exit 0);
#                             `npm test` runs this first
set -u

# Real Postfix (hash and lmdb maps, the pgsql: table), PostgreSQL for the shared store,
# swaks and iproute2 for the relay probes and namespaces, the dyndns2 clients (ddclient
# with its TLS module, inadyn, curl, wget), libfaketime for the clock tests, shellcheck
# and systemd-analyze for install.sh and the units, dpkg-dev and lintian for the .debs,
# man-db for the man page, zsh for its completion, openssl and file for certificates
# and release checks, opendkim and miltertest for the export file (OpenDKIM's
# InternalHosts, asked through the milter protocol).
PACKAGES="postfix postfix-lmdb postfix-pgsql postgresql swaks iproute2 openssl curl wget file shellcheck systemd faketime ddclient libio-socket-ssl-perl inadyn dpkg-dev lintian man-db zsh opendkim miltertest"

SETUP="as root, run test/prereqs.sh (installs them), then npm test as root; or npm run test:unit for the unit tests alone, or RELAYCTL_SKIP_E2E=1 npm test to skip the e2e tests"

missing_packages() {
	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s ' "$p"
	done
}

check() {
	problems=""
	missing=""
	[ "$(id -u)" -eq 0 ] || problems="not root (the e2e tests create network namespaces and run Postfix)"
	if ! command -v dpkg-query >/dev/null 2>&1; then
		problems="${problems:+$problems; }no dpkg-query to check packages with: install the equivalents of $PACKAGES"
	else
		missing=$(missing_packages)
		[ -z "$missing" ] || problems="${problems:+$problems; }missing packages: ${missing% }"
	fi
	# Without it postmap refuses to start; test/prereqs.sh puts Debian's default there.
	case " $missing" in
		*" postfix "*) ;;
		*) [ -e /etc/postfix/main.cf ] || problems="${problems:+$problems; }no /etc/postfix/main.cf" ;;
	esac
	mta="${RELAYCTL_MTA_ROOT:-/var/cache/relayctl-test/mta}"
	[ -x "$mta/usr/sbin/exim4" ] && [ -x "$mta/usr/sbin/smtpd" ] || problems="${problems:+$problems; }Exim and OpenSMTPD not unpacked in $mta"
	[ -z "$problems" ] && return 0
	if [ "${RELAYCTL_SKIP_E2E:-}" = 1 ] && [ "${RELAYCTL_REQUIRE_E2E:-}" != 1 ]; then
		echo "relayctl tests: skipping the e2e tests (RELAYCTL_SKIP_E2E=1): $problems" >&2
		return 0
	fi
	echo "relayctl tests: the e2e tests cannot run: $problems: $SETUP" >&2
	return 1
}

install() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "test/prereqs.sh: installing packages needs root: run it as root (su -, or sudo test/prereqs.sh)" >&2
		return 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	missing=$(missing_packages)
	if [ -n "$missing" ]; then
		# Postfix's debconf questions: no system mail configuration is wanted,
		# the tests run private instances of their own.
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		# The PostgreSQL tests start private clusters on unix sockets; no system
		# cluster is wanted listening beside them.
		mkdir -p /etc/postgresql-common/createcluster.d
		echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/relayctl-ci.conf
		apt-get update -qq || { echo "apt-get update failed"; return 1; }
		# shellcheck disable=SC2086 # one word per package
		apt-get install -y -qq --no-install-recommends $missing >/tmp/relayctl-prereqs-apt.log 2>&1 \
			|| { tail -20 /tmp/relayctl-prereqs-apt.log; echo "apt-get install failed"; return 1; }
	fi
	# "No configuration" leaves /etc/postfix without main.cf, and postmap (as
	# relayctl runs it on a real mail host) refuses to start without one.
	[ -e /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
	# Exim and OpenSMTPD conflict with Postfix as packages: unpacked, not installed.
	bash "$(dirname "$0")/mta-debs.sh" || { echo "unpacking Exim and OpenSMTPD failed"; return 1; }
}

case "${1:-}" in
	--check) check ;;
	"") install ;;
	*) echo "usage: test/prereqs.sh [--check]" >&2; exit 2 ;;
esac
