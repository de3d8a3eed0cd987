"""Is this host's clock synchronized? TOTP is only as right as the clock.

Asks the kernel (adjtimex(2) with no changes: the STA_UNSYNC flag, which NTP
daemons such as chrony, ntpd and systemd-timesyncd clear once synchronized).
Read-only, no privilege needed. None when the kernel cannot be asked (e.g. a
seccomp filter refuses the call). `timesync` adds systemd's view (`timedatectl
show`) for an administrator to read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (x86_64 and aarch64 glibc): modes, then longs,
    # then padding; only `status` is read and the buffer is generously sized.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_byte * 256),
    ]


def synchronized() -> bool | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return not (timex.status & _STA_UNSYNC) and state != _TIME_ERROR


def describe() -> str:
    state = synchronized()
    if state is None:
        return "unknown (the kernel could not be asked)"
    return "synchronized" if state else "NOT synchronized: codes may be refused; start an NTP client (chrony, systemd-timesyncd)"


def timesync() -> str:
    """systemd's view of time synchronization in one line: `timedatectl show`'s NTP and
    NTPSynchronized, or why it could not say (not installed, no systemd)."""
    binary = shutil.which("timedatectl")
    if binary is None:
        return "timedatectl is not installed (no systemd here?)"
    try:
        done = subprocess.run([binary, "show"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"timedatectl show did not run: {exc}"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[0]
        return f"timedatectl show failed: {why}"
    return timesync_of(done.stdout)


def timesync_of(shown: str) -> str:
    """`timedatectl show`'s output as one line naming NTP and NTPSynchronized."""
    properties = dict(line.partition("=")[::2] for line in shown.splitlines())
    return " ".join(f"{key}={properties.get(key) or '?'}" for key in ("NTP", "NTPSynchronized")) + " (timedatectl show)"
