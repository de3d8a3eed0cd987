"""The daemon's own files and directories: whose they must be before it starts."""

from __future__ import annotations

import ctypes
import os
import socket
import stat
import subprocess
import sys

import pytest

from daemonproc import DaemonProcess
from totpd import daemon as daemon_module
from totpd.errors import SocketError

NOBODY = 65534


def start_fails(daemon: DaemonProcess) -> str:
    """Run the daemon to its refusal; its one line of stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "totpd", "--config", daemon.config_path], capture_output=True, text=True,
        env=daemon.env, timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def fresh(tmp_path) -> DaemonProcess:
    """A daemon that has run once (its key, database and socket directory exist), now stopped."""
    daemon = DaemonProcess(tmp_path / "d", socket=str(tmp_path / "d" / "run" / "totpd.sock"))
    daemon.socket_path = str(daemon.settings["socket"])  # where start() waits for an answer
    daemon.start().stop()
    return daemon


def test_a_socket_directory_others_can_write_is_refused(fresh):
    run = os.path.dirname(fresh.socket_path)
    os.chmod(run, 0o777)
    assert f"{run}: the directory of the socket is writable by group or others; chmod go-w it" in start_fails(fresh)


def test_a_state_directory_owned_by_another_user_is_refused(fresh):
    state = fresh.workdir / "state"
    os.chown(state, NOBODY, NOBODY)
    line = start_fails(fresh)
    assert f"{state}: the directory of the master key is owned by uid 65534" in line and "chown it" in line


def test_a_master_key_owned_by_another_user_is_refused(fresh):
    os.chown(fresh.workdir / "state" / "master.key", NOBODY, NOBODY)
    assert "the master key is owned by uid 65534, not root or this daemon's user" in start_fails(fresh)


def test_a_database_owned_by_another_user_is_refused(fresh):
    os.chown(fresh.workdir / "state" / "totpd.db", NOBODY, NOBODY)
    assert "the database is owned by uid 65534, not root or this daemon's user" in start_fails(fresh)


def test_a_database_directory_others_can_write_is_refused(tmp_path):
    daemon = DaemonProcess(tmp_path / "d", database=str(tmp_path / "shared" / "totpd.db"))
    (tmp_path / "shared").mkdir(mode=0o775)
    os.chmod(tmp_path / "shared", 0o775)
    assert f"{tmp_path / 'shared'}: the directory of the database is writable by group or others" in start_fails(daemon)


def test_the_socket_mode_is_set_on_the_socket_itself_never_through_a_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_text("")
    target.chmod(0o600)
    link = tmp_path / "totpd.sock"
    link.symlink_to(target)
    with pytest.raises(SocketError, match="not a socket"):
        daemon_module._set_owner_and_mode(str(link), -1, 0o666)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_the_bound_socket_gets_the_configured_mode(tmp_path):
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    daemon_module._set_owner_and_mode(str(path), -1, 0o640)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
    sock.close()


def test_the_daemon_can_not_dump_core(daemon):
    limits = open(f"/proc/{daemon.process.pid}/limits").read()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    child = os.fork()
    if child == 0:  # prctl acts on the calling process: ask in a child that called it
        daemon_module.no_core_dumps()
        libc = ctypes.CDLL(None)
        os._exit(libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
