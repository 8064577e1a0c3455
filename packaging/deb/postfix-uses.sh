# Shared by prerm and postrm; build.ts puts it in their place, as a maintainer
# script cannot rely on any other file of a package being removed.

# postfix_uses STRING...: true when a Postfix instance of the system ($root) names
# any STRING in its settings: every main.cf parameter with each $parameter expanded
# (postconf -x), and master.cf's -o overrides, also expanded (postconf -Px), for the
# primary instance and each of its multi_instance_directories. So a hook written
# through a parameter of its own, or only for one smtpd in master.cf, counts too.
# False when postconf is gone (Postfix removed) or there is no main.cf; true when
# postconf cannot read an instance, as then nothing shows the hook is gone.
# postconf's answer is only compared with STRING, never evaluated.
postfix_uses() {
	command -v postconf >/dev/null 2>&1 && [ -f "$root/etc/postfix/main.cf" ] || return 1
	instances=$(postconf -c "$root/etc/postfix" -h multi_instance_directories 2>/dev/null) || return 0
	# Postfix separates list items with commas or blanks; no item may glob.
	set -f
	for dir in /etc/postfix $(printf '%s\n' "$instances" | tr ',' ' '); do
		settings=$(postconf -c "$root$dir" -x 2>/dev/null && postconf -c "$root$dir" -Px 2>/dev/null) || { set +f; return 0; }
		for s in "$@"; do
			case $settings in *"$s"*) set +f; return 0 ;; esac
		done
	done
	set +f
	return 1
}
