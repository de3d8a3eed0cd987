"""Identity: which account a name means, and what NSS says about accounts.

Directory services resolve several spellings to one account (SSSD or LDAP folding
case, `alice@EXAMPLE` for `alice`, winbind's `DOMAIN\\alice`); sshd and sudo hand PAM
the name as it was typed. The service resolves every request's name once, here, to
the account's canonical name (NSS `pw_name`) before the store, a policy list, the
throttle or the audit line sees it. Every lookup may block on a directory service:
callers run them on the service's NSS worker, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .policy import Rules
    from .workers import Worker

# How long a name NSS resolved is believed without asking again, and how many are kept.
NAMES_TTL = 5.0
NAMES_KEPT = 4096


def lookup(name: str) -> pwd.struct_passwd | None:
    """The account NSS finds for `name` (any spelling it accepts), or None."""
    try:
        return pwd.getpwnam(name)
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


def canonical(name: str) -> str:
    """The account's canonical name: the name NSS gives for the uid that `name` resolves
    to; the name as given where NSS knows no such account.

    Two names with one uid (`toor` beside `root`, a local entry that duplicates a
    directory's uid) are one account to the kernel, so they share one second factor.
    An unknown name is kept as given: it can match no account that NSS resolves (the
    store holds canonical names only), so it reaches the unknown-user answer.
    """
    found = account(name)
    return name if found is None else found[0]


def account(name: str) -> tuple[str, int] | None:
    """The account `name` names: its canonical name and its uid, or None where NSS
    knows no such account. One resolution answers both which account and whose."""
    entry = lookup(name)
    if entry is None:
        return None
    try:
        return pwd.getpwuid(entry.pw_uid).pw_name, entry.pw_uid
    except KeyError:
        return entry.pw_name, entry.pw_uid


async def uid_of(name: str, known: int | None, nss: "Worker") -> int:
    """The uid of the account `name` names, -1 where NSS knows none: `known`, the
    service's identity step's answer (`Request.user_uid`), where that step asked NSS,
    else one lookup on the NSS worker."""
    if known is not None:
        return known
    entry = await nss.run(lookup, name)
    return -1 if entry is None else entry.pw_uid


class Names:
    """The one identity step: a request's name to its account (`account`: the canonical
    name and uid), with what NSS resolved in the last NAMES_TTL seconds kept on the
    event loop's thread.

    Only names NSS knew are kept: a name it did not know is asked again every time, so
    an account created a moment ago is found at once. A kept name is the answer NSS
    gave at most NAMES_TTL seconds before, so a request is judged as it would have been
    had it arrived that much earlier (docs/security.md). At most NAMES_KEPT names are
    kept; the oldest goes first.
    """

    def __init__(self, nss: "Worker", ttl: float = NAMES_TTL, kept: int = NAMES_KEPT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nss, self._ttl, self._kept, self._clock = nss, ttl, kept, clock
        self._found: dict[str, tuple[float, tuple[str, int]]] = {}  # given -> (believed until, account)

    async def account(self, given: str) -> tuple[str, int] | None:
        """The account `given` names, as `account` says, from NSS or from what it said lately."""
        now = self._clock()
        kept = self._found.get(given)
        if kept is not None and now < kept[0]:
            return kept[1]
        found = await self._nss.run(account, given)
        self._found.pop(given, None)
        if found is None:
            return None
        if len(self._found) >= self._kept:
            del self._found[next(iter(self._found))]
        self._found[given] = (now + self._ttl, found)
        return found


def canonical_names(names: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    """`names` (a policy list) in canonical names, and whether NSS knew every one."""
    found = [account(name) for name in names]
    return tuple(name if each is None else each[0] for name, each in zip(names, found)), None not in found


def canonical_rules(rules: "Rules") -> tuple["Rules", bool]:
    """A policy's rules with their account lists in canonical names, and whether NSS
    knew every name (the daemon and `totpctl doctor` resolve them alike)."""
    required, known_required = canonical_names(rules.required_users)
    exempt, known_exempt = canonical_names(rules.exempt_users)
    return dataclasses.replace(rules, required_users=required, exempt_users=exempt), known_required and known_exempt


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
