#!/usr/bin/env bash
# Unpacks Exim and OpenSMTPD from Debian's packages into a cache directory for
# the e2e tests (test/e2e/exim.test.ts, test/e2e/opensmtpd.test.ts), without
# installing them: Debian makes every MTA package conflict with Postfix, so
# `apt-get install exim4-daemon-light` or `opensmtpd` would remove it. Only
# their plain library dependencies are installed, and the system users the
# binaries were built to run as are created when missing.
#
# Usage: test/mta-debs.sh [DIR]   (default /var/cache/relayctl-test/mta;
# the tests read RELAYCTL_MTA_ROOT, with the same default). Run as root.
set -euo pipefail

dest="${1:-${RELAYCTL_MTA_ROOT:-/var/cache/relayctl-test/mta}}"
pkgs=(exim4-daemon-light exim4-base exim4-config opensmtpd)
# Libraries the two daemons link against that a Postfix host may lack; none
# of them conflicts with Postfix (checked with apt-get install -s).
libs=(libidn12 libevent-2.1-7 libdb5.3 libgnutls-dane0 libpcre2-8-0 libnsl2 libssl3)

if [ -x "$dest/usr/sbin/exim4" ] && [ -x "$dest/usr/sbin/smtpd" ] && [ -x "$dest/usr/sbin/smtpctl" ]; then
  echo "mta-debs: $dest already holds exim4, smtpd and smtpctl"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt's download sandbox user must be able to write where the files land.
  chown _apt "$work" 2>/dev/null || chmod 755 "$work"
  # Package lists may be missing or stale on a fresh machine: update once and retry.
  (cd "$work" && apt-get download "${pkgs[@]}") || { apt-get update -qq && (cd "$work" && apt-get download "${pkgs[@]}"); } || {
    echo "mta-debs: apt-get download ${pkgs[*]} failed" >&2
    exit 1
  }
  rm -rf "$dest.new"
  mkdir -p "$dest.new"
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$dest.new"; done
  rm -rf "$dest"
  mv "$dest.new" "$dest"
fi

missing=()
for p in "${libs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  # Refuse anything that would take Postfix away.
  if apt-get install -s --no-install-recommends "${missing[@]}" | grep -q '^Remv '; then
    echo "mta-debs: installing ${missing[*]} would remove packages; not done" >&2
    exit 1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Exim is built to run as Debian-exim (it refuses to start without that
# user); OpenSMTPD's processes drop to opensmtpd and opensmtpq
# (Debian's names), chrooted in /var/lib/opensmtpd/empty.
for u in Debian-exim opensmtpd opensmtpq; do
  getent passwd "$u" >/dev/null || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group "$u"
done

for b in exim4 smtpd smtpctl; do
  if ldd "$dest/usr/sbin/$b" | grep 'not found' >&2; then
    echo "mta-debs: $b lacks the libraries above" >&2
    exit 1
  fi
done
install -d -m 755 /var/lib/opensmtpd/empty
# smtpctl refuses to run unless setgid to the queue user (Debian's postinst
# sets this; dpkg -x does not).
chgrp opensmtpq "$dest/usr/sbin/smtpctl"
chmod 2555 "$dest/usr/sbin/smtpctl"
# (smtpd -h prints its version and exits 1.)
"$dest/usr/sbin/exim4" -bV -C /dev/null 2>/dev/null | head -1
{ "$dest/usr/sbin/smtpd" -h 2>&1 || true; } | head -1
echo "mta-debs: ready in $dest"
