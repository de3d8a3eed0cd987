"""Is this host's clock wrong? Told from one phone's drift by many accounts agreeing.

A phone whose clock is off moves its own token's codes; a host whose clock is off
moves every account's codes by the same amount. So the daemon keeps, in memory, the
offset (in seconds: tokens may have different periods) of each account's latest
accepted TOTP code within `host_clock_window`; when at least `host_clock_accounts`
accounts, and more than half of those seen, agree on one non-zero offset, that is
this host's clock error. A token then learns no skew from a code at that offset
(login.py asks `teaches_skew`), so the host's error is not written into every
user's token. In memory per daemon: the clock belongs to this host, even in fleet mode.
"""

from __future__ import annotations

import collections
import logging
from typing import Mapping, NamedTuple

from .audit import Audit

log = logging.getLogger("totpd")


def agreed_offset(accounts_at: Mapping[int, int], accounts: int) -> int | None:
    """The non-zero offset (seconds) that at least `accounts` accounts, and more than
    half of all accounts counted, agree on; None where there is none (or `accounts` is 0).

    `accounts_at` maps an offset to how many distinct accounts' latest codes sat there.
    Half is required so that a few drifted phones among many right ones never blame
    the host; a strict majority is unique, so the answer never flaps between two.
    """
    if accounts <= 0:
        return None
    total = sum(accounts_at.values())
    for offset, count in accounts_at.items():
        if offset != 0 and count >= accounts and 2 * count > total:
            return offset
    return None


def teaches_skew(offset: int | None, host_offset: int | None) -> bool:
    """May an accepted code `offset` seconds from this host's clock (None: HOTP, no clock)
    move its token's learned skew? Not when it sits exactly at the host's agreed error."""
    return host_offset is None or offset != host_offset


class Change(NamedTuple):
    """The agreed host offset before and after an observation (None: none agreed)."""

    before: int | None
    after: int | None


class HostClock:
    """The latest accepted offset of each account within the window, what they agree
    on, and the log and audit lines when that changes.

    Called from the event loop only; the judging transaction gets `offset(now)`'s
    value, taken before it runs.
    """

    def __init__(self, accounts: int, window: float, audit: Audit) -> None:
        self.accounts = accounts
        self.window = window
        self.audit = audit
        self._latest: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()  # oldest first
        self._accounts_at: collections.Counter[int] = collections.Counter()
        self._agreed: int | None = None

    def offset(self, now: float) -> int | None:
        """This host's clock error as accepted codes agree on it now, in seconds
        (codes' time less this host's: negative when this host runs fast), or None."""
        self._forget_before(now - self.window)
        self._agreed = agreed_offset(self._accounts_at, self.accounts)
        return self._agreed

    def observe(self, user: str, offset: int, now: float) -> Change | None:
        """Count `user`'s accepted TOTP code at `offset` seconds; the change of the agreed
        host offset it makes, or None where it stays as it was."""
        if self.accounts <= 0:
            return None
        before = self._agreed
        if user in self._latest:
            self._uncount(self._latest.pop(user)[0])
        self._latest[user] = (offset, now)
        self._accounts_at[offset] += 1
        after = self.offset(now)
        if after == before:
            return None
        self._announce(before, after)
        return Change(before, after)

    def _announce(self, before: int | None, after: int | None) -> None:
        if after is None:
            log.warning("accepted codes no longer agree on an offset from this host's clock (it was %+d s):"
                        " tokens learn skew from every offset again", before)
            self.audit.record("host_clock", "offset_cleared", detail=f"offset={before:+d}s", level="warning")
            return
        agreeing = self._accounts_at[after]
        log.error("accepted codes of %d accounts agree at %+d s from this host's clock: %s; check its time sync"
                  " (timedatectl, chronyc tracking); tokens learn no skew from codes at that offset",
                  agreeing, after, describe(after))
        self.audit.record("host_clock", "offset_detected", detail=f"offset={after:+d}s accounts={agreeing}", level="warning")

    def _forget_before(self, cutoff: float) -> None:
        while self._latest:
            user, (offset, seen) = next(iter(self._latest.items()))
            if seen >= cutoff:
                return
            del self._latest[user]
            self._uncount(offset)

    def _uncount(self, offset: int) -> None:
        self._accounts_at[offset] -= 1
        if not self._accounts_at[offset]:
            del self._accounts_at[offset]


def describe(offset: int) -> str:
    """`offset` (codes' time less this host's, seconds) as what it says of this host's clock."""
    return f"this host's clock is likely {abs(offset)} s {'fast' if offset < 0 else 'slow'}"
