"""totpd/clock.py: whether the kernel says this host's clock is synchronized."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from pathlib import Path

import pytest

from daemonproc import SYSTEM_PYTHON
from totpd import clock


class _Libc:
    """adjtimex(2) answering with a given return value and status word."""

    def __init__(self, state: int, status: int) -> None:
        self.state, self.status = state, status

    def adjtimex(self, pointer) -> int:
        pointer._obj.status = self.status
        return self.state


@pytest.mark.parametrize(
    "state, status, expected",
    [
        (0, 0, True),  # TIME_OK, STA_UNSYNC clear: an NTP daemon disciplines the clock
        (1, 0x0001, True),  # TIME_INS with STA_PLL
        (0, 0x0040, False),  # STA_UNSYNC set: never synchronized, or the daemon stopped
        (5, 0, False),  # TIME_ERROR
        (-1, 0, None),  # the call failed (EPERM from a seccomp filter)
    ],
)
def test_the_kernels_answer_is_read_from_adjtimex(monkeypatch, state, status, expected):
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _Libc(state, status))
    assert clock.synchronized() is expected


def test_no_libc_to_ask_is_unknown_not_an_error(monkeypatch):
    def missing(*args, **kwargs):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert clock.synchronized() is None
    assert clock.describe() == "unknown (the kernel could not be asked)"


def test_this_kernel_answers_an_unprivileged_caller_too():
    assert clock.synchronized() in (True, False)
    asked = subprocess.run([SYSTEM_PYTHON, "-c", "from totpd import clock; print(clock.synchronized())"],
                           user=65534, group=65534, extra_groups=[], capture_output=True, text=True, cwd="/",
                           env={**os.environ, "PYTHONPATH": str(Path(clock.__file__).parent.parent)}, check=True)
    assert asked.stdout.strip() == str(clock.synchronized())


@pytest.mark.parametrize("state, words", [(True, "synchronized"), (False, "NOT synchronized"), (None, "unknown")])
def test_describe_says_what_to_do_when_it_is_not(monkeypatch, state, words):
    monkeypatch.setattr(clock, "synchronized", lambda: state)
    text = clock.describe()
    assert text.startswith(words)
    assert ("NTP client" in text) == (state is False)


def test_timedatectl_show_is_read_for_ntp_and_its_synchronization():
    shown = "Timezone=Etc/UTC\nLocalRTC=no\nCanNTP=yes\nNTP=yes\nNTPSynchronized=no\nTimeUSec=Mon 2026-12-07 18:00:00 UTC\n"
    assert clock.timesync_of(shown) == "NTP=yes NTPSynchronized=no (timedatectl show)"
    assert clock.timesync_of("Timezone=UTC\n") == "NTP=? NTPSynchronized=? (timedatectl show)"


def test_timesync_says_why_systemd_could_not_answer(monkeypatch, tmp_path):
    # This machine has timedatectl but no systemd as PID 1: whatever it answers is one line naming it.
    said = clock.timesync()
    assert "\n" not in said
    assert re.fullmatch(r"NTP=\S+ NTPSynchronized=\S+ \(timedatectl show\)|timedatectl show failed: .+", said)
    monkeypatch.setenv("PATH", str(tmp_path))  # no timedatectl at all
    assert clock.timesync() == "timedatectl is not installed (no systemd here?)"
