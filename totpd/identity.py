"""Identity: which account a name means, and what NSS says about accounts.

Directory services resolve several spellings to one account (SSSD or LDAP folding
case, `alice@EXAMPLE` for `alice`, winbind's `DOMAIN\\alice`); sshd and sudo hand PAM
the name as it was typed. The service resolves every request's name once, here, to
the account's canonical name (NSS `pw_name`) before the store, a policy list, the
throttle or the audit line sees it. Every lookup may block on a directory service:
callers run them on the service's NSS worker, never on the event loop.
"""

from __future__ import annotations

import grp
import os
import pwd


def lookup(name: str) -> pwd.struct_passwd | None:
    """The account NSS finds for `name` (any spelling it accepts), or None."""
    try:
        return pwd.getpwnam(name)
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def canonical(name: str) -> str:
    """The account's canonical name; the name as given where NSS knows no such account.

    An unknown name is kept as given: it can match no account that NSS resolves
    (the store holds canonical names only), so it reaches the unknown-user answer.
    """
    entry = lookup(name)
    return name if entry is None else entry.pw_name


def groups_of(user: str) -> frozenset[str]:
    """Names of the account's primary and supplementary groups (NSS: files, LDAP, SSSD)."""
    entry = lookup(user)
    if entry is None:
        return frozenset()
    names = set()
    for gid in os.getgrouplist(entry.pw_name, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return frozenset(names)


def in_group(uid: int, gid: int, group: str) -> bool:
    """Is the account of `uid` (primary group `gid`) a member of `group`?"""
    try:
        target = grp.getgrnam(group).gr_gid
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return target in os.getgrouplist(name, gid)
