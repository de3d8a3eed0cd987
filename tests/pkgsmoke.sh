#!/bin/sh
# Runs as root inside a clean Debian root (tests/test_package.py's mmdebstrap test):
# install the package with apt, start the daemon from the shipped configuration on
# its socket, enroll an account, log in through PAM with pamtester, refuse a replay,
# then purge the package and its dependencies and leave the root as it was.
# Usage: pkgsmoke.sh /path/to/totpd_VERSION_ARCH.deb
set -eu
deb=$1
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# Everything named after totpd but this script and the .deb, and dpkg's package list.
totpd_paths() { find / -xdev -iname '*totpd*' ! -path /tmp/pkgsmoke.sh ! -path "$deb" | sort; }
packages() { dpkg-query -W -f '${Package} ${Version}\n' | sort; }

totpd_paths > /tmp/paths.before
packages > /tmp/packages.before

step "apt-get install $deb"
apt-get install -y -q --no-install-recommends "$deb" > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get install"; }
grep -E '^Setting up python3-(pyotp|segno|argon2|cryptography|dbus-fast) ' /tmp/apt.log | sed 's/^/   /'
python3 -c 'import sys; print("   python", sys.version.split()[0])'
# The daemon imports D-Bus support only when a bus is configured: import it anyway.
python3 -I -c 'import totpd.daemon, totpd.cli, totpd.dbusapi, totpd.recovery' || fail "totpd does not import here"

step "totpd from /etc/totpd/totpd.conf"
# Without systemd the daemon binds the configured socket itself; totpd.socket would
# make /run/totpd (and the socket) as root.
grep -q '^socket = "/run/totpd/totpd.sock"$' /etc/totpd/totpd.conf || fail "shipped config has another socket"
install -d -m 0755 -o totpd -g totpd /run/totpd
(umask 077; exec setpriv --reuid totpd --regid totpd --clear-groups \
    /usr/bin/totpd --config /etc/totpd/totpd.conf) > /tmp/daemon.log 2>&1 &
daemon=$!
tries=0
until [ -S /run/totpd/totpd.sock ]; do
    kill -0 "$daemon" 2>/dev/null || { cat /tmp/daemon.log; fail "totpd exited"; }
    tries=$((tries + 1)); [ "$tries" -lt 300 ] || { cat /tmp/daemon.log; fail "no socket after 30 s"; }
    sleep 0.1
done

step "totpctl enroll nobody"
totpctl enroll nobody --no-confirm --json > /tmp/enrolled.json
code=$(python3 -c 'import json, pyotp; print(pyotp.TOTP(json.load(open("/tmp/enrolled.json"))["secret"]).now())')

step "pamtester: a code logs in, the same code again does not"
module=$(dpkg -L totpd | grep '/security/pam_totpd\.so$')
printf 'auth required %s\naccount required pam_permit.so\n' "$module" > /etc/pam.d/totpd-smoke
echo "$code" | pamtester -v totpd-smoke nobody authenticate || fail "a good code was refused"
if echo "$code" | pamtester -v totpd-smoke nobody authenticate; then fail "a replayed code was accepted"; fi
rm /etc/pam.d/totpd-smoke
! grep -q -e "$code" -e "$(python3 -c 'import json; print(json.load(open("/tmp/enrolled.json"))["secret"])')" /tmp/daemon.log \
    || fail "the daemon logged the code or the secret"
totpctl list | grep -q nobody || fail "totpctl list does not show nobody"

kill -TERM "$daemon"
wait "$daemon" || { cat /tmp/daemon.log; fail "totpd did not stop cleanly"; }
rm -rf /run/totpd /tmp/enrolled.json

step "apt-get purge totpd, then autoremove its dependencies"
apt-get purge -y -q totpd > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get purge"; }
apt-get autoremove --purge -y -q > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get autoremove"; }
totpd_paths > /tmp/paths.after
packages > /tmp/packages.after
diff /tmp/paths.before /tmp/paths.after || fail "purge left files behind (above)"
diff /tmp/packages.before /tmp/packages.after || fail "purge + autoremove left packages behind (above)"
getent passwd totpd > /dev/null || fail "purge removed the user totpd (docs/operations.md says it stays)"
echo "== OK"
