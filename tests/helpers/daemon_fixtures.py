"""The suite's daemon fixtures: a real totpd process on a temp socket, on SQLite or on
a throwaway PostgreSQL. tests/conftest.py and bench/conftest.py (the benchmark's own
tests) both take them from here."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from daemonproc import DaemonProcess


# -- store backends (fleet mode) ------------------------------------------------------
# `backend` says which store make_daemon's daemons use. It is "sqlite" unless a test
# module overrides the fixture with a parametrized one (test_daemon.py runs its whole
# suite on both) or a test is marked `both_backends` (the handlers' own test files).
# With "postgres", every daemon a test makes shares one fresh database on the
# session's throwaway cluster and one master key, like the hosts of a fleet.


@pytest.fixture
def backend() -> str:
    return "sqlite"


# A test so marked runs on both stores (the mark overrides the `backend` fixture).
both_backends = pytest.mark.parametrize("backend", ["sqlite", "postgres"])


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster (initdb + pg_ctl, private socket dir) for the session."""
    from pgcluster import PostgresCluster

    cluster = PostgresCluster().init().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_database(postgres):
    """A fresh database for one test: its name; dropped afterwards."""
    name = postgres.create_database("test")
    yield name
    postgres.drop_database(name)


@pytest.fixture
def make_daemon(request, backend):
    """Factory: make_daemon(**settings) -> a started DaemonProcess; all stopped at teardown.

    Work dirs live under /tmp with mode 0755 (pytest's own are 0700 under root) so
    tests can reach the socket as an unprivileged uid; the state dir inside is 0700.
    """
    started: list[DaemonProcess] = []
    top = Path(tempfile.mkdtemp(prefix="totpd-test-"))
    top.chmod(0o755)
    shared: dict[str, object] = {}
    if backend == "postgres":
        cluster = request.getfixturevalue("postgres")
        shared = {"database": cluster.dsn(request.getfixturevalue("pg_database")), "key_file": str(top / "fleet" / "master.key")}
    elif backend != "sqlite":
        raise ValueError(f"unknown backend {backend!r}")

    def make(start: bool = True, workdir: Path | None = None, **settings: object) -> DaemonProcess:
        daemon = DaemonProcess(workdir or top / f"daemon{len(started)}", **{**shared, **settings})
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
