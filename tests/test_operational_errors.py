"""Every fault an admin meets at start-up or at the command line: one line, never a traceback.

Each row of the tables below breaks one thing, runs the real `totpd` or `totpctl`
as a process, and expects a non-zero exit with the documented code (totpd(8): 1, 130 interrupted;
totpctl(8): 1 refused, 2 usage or input, 3 unreachable, 130 interrupted) and
exactly one line on stderr that names the thing at fault. Faults of permission run
as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv), so the kernel
checks them as it does for the unprivileged service user; the full disk is a tiny
tmpfs in a private mount namespace; "psycopg is not installed" is an interpreter
whose `import psycopg` fails as it does then.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from daemonproc import REPO, SYSTEM_PYTHON, DaemonProcess

# Root, but the kernel checks file permissions as for anyone else.
WITHOUT_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
NOBODY = 65534


@dataclasses.dataclass
class Run:
    command: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=lambda: _env())
    user: int | None = None
    interrupt: str = ""  # send SIGINT once it waits here (a /proc/PID/wchan suffix)


@dataclasses.dataclass
class Setup:
    top: Path  # a temp dir for this fault
    make_daemon: Callable[..., DaemonProcess]
    servers: list[socket.socket | sqlite3.Connection]  # fake daemons and held locks, closed after the test
    daemons: list[DaemonProcess] = dataclasses.field(default_factory=list)

    def daemon(self, **settings: object) -> DaemonProcess:
        """A real daemon, started (and stopped after the test by make_daemon)."""
        self.daemons.append(self.make_daemon(**settings))
        return self.daemons[-1]


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    make: Callable[[Setup], Run]  # sets the fault up; returns what to run
    exit_code: int
    names: tuple[str, ...]  # what the one line must say: the thing at fault, the fix
    after: Callable[[Setup], None] | None = None  # a further check once it has run


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# -- totpd ---------------------------------------------------------------------------------


def _totpd(config: Path | str, prefix: tuple[str, ...] = ()) -> Run:
    return Run([*prefix, sys.executable, "-m", "totpd", "--config", str(config)])


def _daemon(setup: Setup, prefix: tuple[str, ...] = (), **settings: object) -> Run:
    """totpd on a test configuration (tests/helpers/daemonproc.py) with `settings` changed."""
    return _totpd(DaemonProcess(setup.top / "d", **settings).config_path, prefix)


def _state(setup: Setup) -> Path:
    path = setup.top / "d" / "state"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _config_file(setup: Setup, text: bytes, mode: int = 0o644, prefix: tuple[str, ...] = ()) -> Run:
    path = setup.top / "totpd.conf"
    path.write_bytes(text)
    path.chmod(mode)
    return _totpd(path, prefix)


def _with_key(setup: Setup, content: bytes | None = None, mode: int = 0o600) -> Path:
    path = _state(setup) / "master.key"
    path.write_bytes(os.urandom(32) if content is None else content)
    path.chmod(mode)
    return path


def _without(module: str, run: Run, setup: Setup) -> Run:
    """`run` with an interpreter where importing `module` fails as it does when it is not installed."""
    stub = setup.top / "stub" / module
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {module!r}", name={module!r})\n')
    run.env["PYTHONPATH"] = f"{stub.parent}{os.pathsep}{run.env['PYTHONPATH']}"
    return run


def _psycopg_missing(setup: Setup) -> Run:
    return _without("psycopg", _daemon(setup, database="postgresql://totpd@127.0.0.1:5432/totpd"), setup)


def _no_key_was_made(setup: Setup) -> None:
    assert not (setup.top / "d" / "state" / "master.key").exists(), "a master key was made for a store never opened"


def _postgres_down(setup: Setup) -> Run:
    import psycopg  # noqa: F401  (a test extra: without it this fault is a different one)

    _with_key(setup)
    return _daemon(setup, database="postgresql://totpd@127.0.0.1:1/totpd", database_timeout=2)


def _database(setup: Setup, fill: Callable[[Path], None]) -> Run:
    path = _state(setup) / "totpd.db"
    fill(path)
    path.chmod(0o600)
    _with_key(setup)
    return _daemon(setup)


def _corrupt(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\0" + os.urandom(8192))


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")


def _database_dir_read_only(setup: Setup) -> Run:
    _with_key(setup)
    _state(setup).chmod(0o500)
    return _daemon(setup, prefix=tuple(WITHOUT_DAC))


def _full_disk(size: str) -> Callable[[Setup], Run]:
    def make(setup: Setup) -> Run:
        disk = setup.top / "disk"
        disk.mkdir()
        run = _daemon(setup, database=str(disk / "totpd.db"), key_file=str(setup.top / "master.key"))
        mount = f'mount -t tmpfs -o size={size},mode=0700 tmpfs "$1" && shift && exec "$@"'
        run.command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", str(disk), *run.command]
        return run

    return make


def _database_locked(setup: Setup) -> Run:
    """totpd waiting at start-up for a database another process holds locked (a backup, a migration)."""
    setup.daemon().stop()  # the database and key it made, in its own directory
    run = _totpd(setup.daemons[0].config_path)
    lock = sqlite3.connect(setup.daemons[0].workdir / "state" / "totpd.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    setup.servers.append(lock)
    return dataclasses.replace(run, interrupt="futex_do_wait")  # waiting for the store to open


def _socket_taken(setup: Setup) -> Run:
    path = setup.top / "taken.sock"
    _listen(setup, path)
    return _daemon(setup, socket=str(path))


DAEMON_FAULTS = [
    Fault("config missing", lambda s: _totpd(s.top / "nope.conf"), 1, ("nope.conf", "No such file")),
    Fault("config unreadable", lambda s: _config_file(s, b"window = 1\n", 0o000, tuple(WITHOUT_DAC)), 1,
          ("totpd.conf", "Permission denied")),
    Fault("config is a directory", lambda s: _totpd(s.top), 1, ("Is a directory",)),
    Fault("config not TOML", lambda s: _config_file(s, b"window = \n"), 1, ("totpd.conf", "not valid TOML")),
    Fault("config not UTF-8", lambda s: _config_file(s, b'issuer = "\xff\xfe"\n'), 1, ("totpd.conf", "UTF-8")),
    Fault("unknown key", lambda s: _daemon(s, windw=2), 1, ("totpd.conf", "unknown key 'windw'")),
    Fault("bad value", lambda s: _daemon(s, window="wide"), 1, ("totpd.conf", "key 'window'")),
    Fault("PostgreSQL without psycopg", _psycopg_missing, 1,
          ("totpd.conf: database is PostgreSQL", "needs psycopg", "apt install python3-psycopg"), _no_key_was_made),
    Fault("PostgreSQL server down", _postgres_down, 1, ("PostgreSQL", "port=1", "cannot connect")),
    Fault("master key unreadable", lambda s: (_with_key(s, mode=0o000), _daemon(s, tuple(WITHOUT_DAC)))[1], 1,
          ("master.key", "Permission denied")),
    Fault("master key readable by others", lambda s: (_with_key(s, mode=0o644), _daemon(s))[1], 1, ("master.key",)),
    Fault("master key the wrong size", lambda s: (_with_key(s, b"short\n"), _daemon(s))[1], 1, ("master.key", "32 bytes")),
    Fault("database directory read-only", _database_dir_read_only, 1, ("totpd.db", "Permission denied")),
    Fault("database corrupt", lambda s: _database(s, _corrupt), 1, ("totpd.db", "cannot open the database")),
    Fault("database of another program", lambda s: _database(s, _foreign), 1, ("totpd.db", "not a totpd database")),
    Fault("database is a directory", lambda s: _daemon(s, database=str(_state(s))), 1, ("key 'database'", "directory")),
    Fault("disk full creating the database", _full_disk("16k"), 1, ("totpd.db", "full")),
    Fault("disk full writing the schema", _full_disk("64k"), 1, ("totpd.db", "full")),
    Fault("socket path is a regular file", lambda s: (_touch(s.top / "totpd.sock"), _daemon(s, socket=str(s.top / "totpd.sock")))[1],
          1, ("totpd.sock", "not a socket")),
    Fault("socket directory is a regular file", lambda s: (_touch(s.top / "run"), _daemon(s, socket=str(s.top / "run" / "t.sock")))[1],
          1, ("run/t.sock", "not a directory")),
    Fault("socket path too long", lambda s: _daemon(s, socket=str(s.top / ("s" * 110))), 1, ("ssss", "too long")),
    Fault("socket taken by another daemon", _socket_taken, 1, ("taken.sock", "already listening")),
    Fault("socket group unknown", lambda s: _daemon(s, socket_group="no-such-group-21"), 1,
          ("socket_group", "no-such-group-21")),
    # An unprivileged daemon may give its socket only to a group it is a member of.
    Fault("socket group not the daemon's", lambda s: _daemon(s, ("setpriv", "--bounding-set=-chown", "--"), socket_group="daemon"),
          1, ("socket_group", "'daemon'", "Operation not permitted")),
    Fault("interrupted during start-up (Control-C)", _database_locked, 130, ("interrupted",)),
]


# -- totpctl -------------------------------------------------------------------------------


def _ctl(socket_path: Path | str, *args: str) -> Run:
    return Run([sys.executable, "-m", "totpd.cli", "--socket", str(socket_path), *args])


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


def _listen(setup: Setup, path: Path, serve: Callable[[socket.socket], None] | None = None) -> Path:
    """A socket at `path` that accepts; `serve` (in a thread) plays a broken daemon."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    setup.servers.append(server)
    if serve is not None:

        def loop() -> None:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(4096)
                serve(connection)

        threading.Thread(target=loop, daemon=True).start()
    return path


def _stale_socket(setup: Setup) -> Run:
    path = setup.top / "stale.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # bound, never listening: what a daemon that died leaves
    setup.servers.append(server)
    return _ctl(path, "status", "alice")


def _socket_refused_to_nobody(setup: Setup) -> Run:
    daemon = setup.daemon(socket_mode="0600")
    # Run as nobody: the system Python on a world-readable copy of the package.
    return Run([SYSTEM_PYTHON, "-m", "totpd.cli", "--socket", daemon.socket_path, "status", "root"],
               env={**daemon.env, "PYTHONPATH": daemon._public_package()}, user=NOBODY)


def _migrate_without_psycopg(setup: Setup) -> Run:
    run = _ctl(setup.top / "t.sock", "migrate", "--to", "postgresql://totpd@127.0.0.1/totpd",
               "--database", str(setup.top / "totpd.db"), "--key-file", str(setup.top / "master.key"))
    return _without("psycopg", run, setup)


def _not_enrolled(setup: Setup) -> None:
    status = setup.daemons[0].ctl("status", "alice", "--json")
    assert status.returncode == 1 and "not enrolled" in status.stderr, "the enrollment went ahead without its QR code"


CTL_FAULTS = [
    Fault("daemon down", lambda s: _ctl(s.top / "totpd.sock", "status", "alice"), 3, ("totpd.sock", "is totpd running")),
    Fault("daemon died, socket left", _stale_socket, 3, ("stale.sock", "no daemon is listening", "is totpd running")),
    Fault("socket refuses permission", _socket_refused_to_nobody, 3, ("totpd.sock", "permission denied")),
    Fault("--socket names a regular file", lambda s: _ctl(_touch(s.top / "file"), "list"), 3, ("file", "not a socket")),
    Fault("--socket names a directory", lambda s: _ctl(s.top, "list"), 3, ("not a socket",)),
    Fault("daemon hangs up", lambda s: _ctl(_listen(s, s.top / "t.sock", lambda c: None), "list"), 3,
          ("t.sock", "closed the connection")),
    Fault("daemon answers garbage", lambda s: _ctl(_listen(s, s.top / "t.sock", lambda c: c.sendall(b"HTTP/1.1 400\r\n\r\n")), "list"),
          3, ("t.sock", "malformed reply")),
    Fault("account not enrolled", lambda s: _ctl(s.daemon().socket_path, "reset", "alice"), 1, ("reset alice",)),
    Fault("secret file unreadable", lambda s: _ctl(s.top / "t.sock", "enroll", "alice", "--secret-file", str(s.top / "none")),
          2, ("none", "cannot read the secret")),
    Fault("QR file in a missing directory",
          lambda s: _ctl(s.daemon().socket_path, "enroll", "alice", "--no-confirm", "--json", "--qr-png", str(s.top / "no" / "qr.png")),
          2, ("no/qr.png", "cannot write")),
    Fault("migrate to PostgreSQL without psycopg", _migrate_without_psycopg, 2,
          ("database is PostgreSQL", "apt install python3-psycopg")),
    Fault("enroll without segno", lambda s: _without("segno", _ctl(s.daemon().socket_path, "enroll", "alice"), s), 2,
          ("needs segno", "apt install python3-segno"), _not_enrolled),
    Fault("interrupted (Control-C)",
          lambda s: dataclasses.replace(_ctl(s.top / "t.sock", "enroll", "alice", "--secret-file", "-"), interrupt="pipe_read"),
          130, ("interrupted",)),
]


# -- the walk ------------------------------------------------------------------------------


@pytest.fixture
def setup(tmp_path, make_daemon):
    servers: list[socket.socket] = []
    yield Setup(tmp_path, make_daemon, servers)
    for server in servers:
        server.close()


def _run(run: Run) -> tuple[int, str]:
    kwargs: dict = {}
    if run.user is not None:
        kwargs = {"user": run.user, "group": run.user, "extra_groups": []}
    process = subprocess.Popen(run.command, env=run.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd="/", **kwargs)
    if run.interrupt:
        _wait_in(process.pid, run.interrupt)
        process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"{run.command} did not exit within 60 s:\n{stderr}")
    return process.returncode, stderr


def _wait_in(pid: int, wchan: str) -> None:
    """Until the process blocks in the kernel function `wchan` names (so Python's SIGINT
    handler is set); "pipe_read" is its standard input (anon_pipe_read on newer kernels)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/wchan").read_text().endswith(wchan):
            return
        time.sleep(0.02)
    pytest.fail(f"the process never waited in {wchan}")


def _check(fault: Fault, setup: Setup, program: str) -> None:
    code, stderr = _run(fault.make(setup))
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"{fault.name}: not one line on stderr:\n{stderr}"
    assert code == fault.exit_code, f"{fault.name}: exit {code}: {stderr}"
    assert lines[0].startswith(f"{program}: "), lines[0]
    for text in fault.names:
        assert text in lines[0], f"{fault.name}: {text!r} is not in {lines[0]!r}"
    if fault.after is not None:
        fault.after(setup)


@pytest.mark.parametrize("fault", DAEMON_FAULTS, ids=lambda fault: fault.name)
def test_a_totpd_that_cannot_start_says_why_in_one_line(setup, fault):
    _check(fault, setup, "totpd")


@pytest.mark.parametrize("fault", CTL_FAULTS, ids=lambda fault: fault.name)
def test_a_totpctl_that_cannot_do_its_job_says_why_in_one_line(setup, fault):
    _check(fault, setup, "totpctl")
