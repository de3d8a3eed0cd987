"""Fixtures shared by every test: a real totpd process on a temp socket."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemonproc import DaemonProcess  # noqa: E402


@pytest.fixture
def make_daemon():
    """Factory: make_daemon(**settings) -> a started DaemonProcess; all stopped at teardown.

    Work dirs live under /tmp with mode 0755 (pytest's own are 0700 under root) so
    tests can reach the socket as an unprivileged uid; the state dir inside is 0700.
    """
    started: list[DaemonProcess] = []
    top = Path(tempfile.mkdtemp(prefix="totpd-test-"))
    top.chmod(0o755)

    def make(start: bool = True, workdir: Path | None = None, **settings: object) -> DaemonProcess:
        daemon = DaemonProcess(workdir or top / f"daemon{len(started)}", **settings)
        daemon.workdir.chmod(0o755)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        daemon.stop()
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def daemon(make_daemon) -> DaemonProcess:
    return make_daemon()
