#!/bin/sh
# What a system needs besides totpd's files (run by `make install` as root, and the
# same steps as the Debian postinst): the system user and group totpd, the state
# directory /var/lib/totpd (0700 totpd:totpd), and /etc/totpd readable by the group.
# Idempotent. Usage: setup-system.sh SYSUSERS_FILE [SYSCONFDIR]
set -eu
sysusers_file=$1
sysconfdir=${2:-/etc}

if ! getent passwd totpd >/dev/null; then
    if command -v systemd-sysusers >/dev/null 2>&1 && [ -f "$sysusers_file" ]; then
        systemd-sysusers "$sysusers_file"
    else
        adduser --system --group --home /var/lib/totpd --no-create-home \
            --shell /usr/sbin/nologin --gecos "totpd two-factor daemon" totpd
    fi
fi
install -d -m 0700 -o totpd -g totpd /var/lib/totpd
if [ -d "$sysconfdir/totpd" ]; then
    chown root:totpd "$sysconfdir/totpd"
    chmod 0750 "$sysconfdir/totpd"
fi
if [ -f "$sysconfdir/totpd/totpd.conf" ]; then
    chown root:totpd "$sysconfdir/totpd/totpd.conf"
    chmod 0640 "$sysconfdir/totpd/totpd.conf"
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
