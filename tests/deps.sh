#!/bin/sh
# Installs the Debian packages the tests use as real peers. It is quick
# when they are present: apt runs only for what is missing.
#
#   tests/deps.sh PKG...              from the configured suites
#   tests/deps.sh --backports PKG...  from bookworm-backports (libvirt 11,
#                                     QEMU with -netdev stream reconnect)
set -e

installed() {
	dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | grep -q "ok installed${2:+.*$2}"
}

# mirror prints the Debian mirror apt already uses, read from live source
# entries only (never from comments, disabled files or the security suite).
mirror() {
	{
		cat /etc/apt/sources.list 2>/dev/null | sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p'
		cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
		cat /etc/apt/sources.list.d/*.list 2>/dev/null | sed -n 's/^deb[[:space:]]\+\([^[:space:]]\+\).*/\1/p'
	} | grep -E '^https?://.*/debian/?$' | head -1
}

suite=""
if [ "$1" = --backports ]; then
	suite=bookworm-backports
	shift
fi
missing=""
for p in "$@"; do
	installed "$p" "${suite:+bpo}" || missing="$missing $p"
done
[ -n "$missing" ] || exit 0

echo "installing${suite:+ from $suite}:$missing"
if [ -n "$suite" ]; then
	list=/etc/apt/sources.list.d/$suite.sources
	rm -f "$list" # ours, possibly from an earlier guess: not a source to copy
	m=$(mirror)
	printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
		"${m:-http://deb.debian.org/debian}" "$suite" >"$list"
fi
apt-get update -q
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${suite:+-t $suite} $missing
