"""sudo_grace: a code accepted in a login session lets a later sudo in that same session skip the code.

The binding is the kernel's audit session: `pam_loginuid` sets a process's loginuid
when a login session opens, and the kernel then gives it a session id that its
children inherit, that an unprivileged process cannot change, and that is never
reused until reboot. A session is named by its *anchor*: the topmost ancestor of a
process with the same session id (for SSH, the per-connection `sshd: USER [priv]`
monitor that opened the session), as (pid, start time) so a reused pid never matches.
Only a set-uid program the account itself started (its real uid: sudo) gets a grace,
never a process that authenticates a new login as root (sshd, login).

This module owns reading those facts from /proc, the anchor, the pure decision
(`granted`) and the records, kept in memory only: a restart forgets every grace.
docs/security.md says what the binding does and does not stop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Sequence

from . import identity
from .config import Config
from .workers import Worker

log = logging.getLogger("totpd")

UNSET = 4294967295  # (u32)-1: /proc's loginuid and sessionid of a process outside any login session
MAX_DEPTH = 1024  # ancestors walked to find an anchor; a deeper chain gets no grace

Anchor = tuple[int, int]  # (pid, start time in clock ticks after boot): one process, for ever


@dataclasses.dataclass(frozen=True)
class Process:
    """What /proc says about one process, for the binding."""

    pid: int
    ppid: int
    start: int  # /proc/PID/stat field 22
    session: int  # /proc/PID/sessionid; UNSET outside a login session
    loginuid: int  # /proc/PID/loginuid; UNSET outside a login session
    uid: int  # the real uid (/proc/PID/status): who started a set-uid sudo

    @property
    def anchor(self) -> Anchor:
        return (self.pid, self.start)


def read_process(pid: int, proc: str = "/proc") -> Process | None:
    """The process `pid` as /proc shows it, or None where it cannot (gone, hidden, no audit)."""
    if pid <= 0:
        return None
    try:
        stat = _read(f"{proc}/{pid}/stat")
        session = int(_read(f"{proc}/{pid}/sessionid"))
        loginuid = int(_read(f"{proc}/{pid}/loginuid"))
        status = _read(f"{proc}/{pid}/status")
        uid = int(status[status.index(b"\nUid:") + 5:].split()[0])
        # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
        fields = stat[stat.rindex(b")") + 2:].split()
        return Process(pid, int(fields[1]), int(fields[19]), session, loginuid, uid)
    except (OSError, ValueError, IndexError):
        return None


def _read(path: str) -> bytes:
    """A small /proc file whole, in one read (its text is made in one go by the kernel)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def anchor_of(pid: int, read: Callable[[int], Process | None] = read_process) -> Anchor | None:
    """The anchor of `pid`'s login session, or None: outside a session, or an ancestor unreadable."""
    process = read(pid)
    return None if process is None else session_anchor(process, read)


def session_anchor(process: Process, read: Callable[[int], Process | None] = read_process) -> Anchor | None:
    """anchor_of for a process already read."""
    if process.session == UNSET:
        return None
    for _ in range(MAX_DEPTH):
        if process.ppid == 0:
            return process.anchor
        parent = read(process.ppid)
        if parent is None:
            return None  # a hidden ancestor could be the true anchor: never guess below it
        if parent.session != process.session:
            return process.anchor
        process = parent
    return None


def candidates(pid: int, read: Callable[[int], Process | None] = read_process) -> tuple[Anchor, ...]:
    """The anchors a code accepted by process `pid` binds to.

    Inside a session (sudo, su): that session's anchor. Before one (sshd authenticates
    in a child of the monitor that opens the session afterwards; `login` in the process
    that does): the process and its parent, either of which may become the anchor.
    """
    process = read(pid)
    if process is None:
        return ()
    if process.session != UNSET:
        anchor = session_anchor(process, read)
        return (anchor,) if anchor is not None else ()
    parent = read(process.ppid)
    # Only a parent that is no session's yet may open this one, and never init itself.
    if parent is None or parent.session != UNSET or parent.pid == 1:
        return (process.anchor,)
    return (process.anchor, parent.anchor)


@dataclasses.dataclass(frozen=True)
class Grace:
    """One accepted code's grace: the anchors it binds to and when the code was accepted."""

    anchors: tuple[Anchor, ...]
    accepted_at: float


def granted(
    seconds: int, graces: Sequence[Grace], caller: Process | None, anchor: Anchor | None, uid: int | None, now: float
) -> bool:
    """May this PAM caller skip the code? Only a set-uid program the account started itself
    (its real uid: sudo, never sshd or login, which authenticate as root) in a login
    session of the account (its loginuid), whose anchor one of the account's graces names,
    within `seconds` of that grace's code; never for root's account. Anything unknown refuses."""
    if seconds <= 0 or caller is None or anchor is None or uid is None or uid == 0:
        return False
    if caller.session == UNSET or caller.loginuid != uid or caller.uid != uid:
        return False
    return any(anchor in grace.anchors and 0 <= now - grace.accepted_at <= seconds for grace in graces)


def longest(config: Config) -> int:
    """The longest sudo_grace of any service: how long a record may matter."""
    return max([config.sudo_grace] + [s.sudo_grace for s in config.services.values() if s.sudo_grace is not None])


class Graces:
    """Every account's graces, in memory. Off (records nothing) where no service has a grace."""

    MAX_ACCOUNTS = 100_000
    MAX_PER_ACCOUNT = 64  # sessions with a grace at once; the oldest goes first

    def __init__(
        self, clock: Callable[[], float], longest: int, read: Callable[[int], Process | None] = read_process
    ) -> None:
        self._clock = clock
        self._longest = longest
        self._read = read
        self._by_user: dict[str, list[Grace]] = {}
        self._warned_hidden = False

    def _current(self, user: str, now: float) -> list[Grace]:
        graces = [grace for grace in self._by_user.get(user, ()) if now - grace.accepted_at <= self._longest]
        if graces:
            self._by_user[user] = graces
        else:
            self._by_user.pop(user, None)
        return graces

    def record(self, user: str, pid: int) -> None:
        """A code for `user` was accepted from root's PAM process `pid`."""
        if self._longest <= 0:
            return
        anchors = candidates(pid, self._read)
        if not anchors:
            self._hidden(pid)
            return
        now = self._clock()
        if user not in self._by_user and len(self._by_user) >= self.MAX_ACCOUNTS:
            for name in list(self._by_user):
                self._current(name, now)
            if len(self._by_user) >= self.MAX_ACCOUNTS:
                return
        kept = [grace for grace in self._current(user, now) if grace.anchors != anchors]
        self._by_user[user] = kept[-(self.MAX_PER_ACCOUNT - 1):] + [Grace(anchors, now)]

    async def grants(self, user: str, pid: int, seconds: int, nss: Worker, known_uid: int | None = None) -> bool:
        """Is `user`'s PAM request from process `pid` inside one of its graces of `seconds`?
        `known_uid`: the account's uid where the service's identity step resolved it."""
        if seconds <= 0:
            return False
        if not self._current(user, self._clock()):
            return False  # the common case costs no /proc read and no NSS lookup
        caller = self._read(pid)
        if caller is None:
            self._hidden(pid)
        anchor = session_anchor(caller, self._read) if caller is not None else None
        uid = await identity.uid_of(user, known_uid, nss)
        now = self._clock()  # after the lookup: a failure meanwhile has ended the graces
        return granted(seconds, self._current(user, now), caller, anchor, uid if uid >= 0 else None, now)

    def forget(self, user: str) -> None:
        """Every grace of the account ends (a failure, a reset, a lock, an unlock)."""
        self._by_user.pop(user, None)

    def active(self, user: str) -> tuple[int, float]:
        """(how many graces of the account are current with their session still there,
        when the newest ends at the longest sudo_grace; 0.0 if none)."""
        now = self._clock()
        alive = [grace for grace in self._current(user, now) if any(map(self._alive, grace.anchors))]
        return len(alive), max((grace.accepted_at + self._longest for grace in alive), default=0.0)

    def _alive(self, anchor: Anchor) -> bool:
        process = self._read(anchor[0])
        return process is not None and process.anchor == anchor

    def _hidden(self, pid: int) -> None:
        if not self._warned_hidden:
            self._warned_hidden = True
            log.warning(
                "sudo_grace: cannot read /proc/%d of a PAM caller (a kernel without audit, or the unit's"
                " ProtectProc= hides root's processes): grace is refused; see docs/operations.md", pid,
            )
