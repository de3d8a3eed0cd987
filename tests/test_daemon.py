"""The daemon as a real process on a real socket: what a restart keeps, secrets at rest,
and the process's own lifecycle. Each verb group has its own file (test_login.py,
test_enrollment.py, test_judging.py, test_admin.py, ...)."""

from __future__ import annotations

import base64
import os
import select
import shutil
import sqlite3
import stat
import time

import pytest

import wire
from daemonproc import code_at as code
from totpd.protocol import encode_request


# Every test in this file runs twice: on the embedded SQLite store and on PostgreSQL
# (fleet mode; conftest's make_daemon gives each test a fresh database).
@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


# -- durability and state -----------------------------------------------------------


def test_a_restart_keeps_enrollments_replay_state_and_recovery_code_use(daemon):
    out = daemon.enroll_json("alice")
    good = code(out["secret"])
    assert verify(daemon, "alice", good).status == "ACCEPTED"
    assert verify(daemon, "alice", out["recovery_codes"][0]).status == "ACCEPTED"
    daemon.restart()
    assert verify(daemon, "alice", good).status == "REJECTED"
    assert verify(daemon, "alice", out["recovery_codes"][0]).status == "REJECTED"
    assert verify(daemon, "alice", code(out["secret"], 1)).status == "ACCEPTED"


# -- secrets at rest ----------------------------------------------------------------


def test_secrets_are_sealed_and_state_files_are_private(daemon, backend):
    secret = daemon.enroll("alice")
    state = os.path.dirname(daemon.settings["key_file"])  # with SQLite, the database is beside the key
    raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    for name in os.listdir(state):
        path = os.path.join(state, name)
        with open(path, "rb") as handle:
            data = handle.read()
        assert raw not in data and secret.encode() not in data, path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    # Every value of every row, whichever the store: the secret appears in none of them.
    if backend == "sqlite":
        db = sqlite3.connect(os.path.join(state, "totpd.db"))
        query = db.execute
    else:
        import psycopg

        db = psycopg.connect(daemon.settings["database"], autocommit=True)
        query = db.execute
    for table in ("accounts", "recovery_codes", "meta"):
        for row in query(f"SELECT * FROM {table}").fetchall():
            for value in row:
                data = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                assert raw not in data and secret.encode() not in data and raw.hex().encode() not in data, table
    rows = query("SELECT hash FROM recovery_codes").fetchall()
    db.close()
    assert rows and all(row[0].startswith("$argon2id$") for row in rows)


def test_a_database_copied_without_its_key_yields_no_secret(make_daemon, backend):
    first = make_daemon()
    first.enroll("alice")
    first.stop()
    other = make_daemon(start=False)
    other.write_config(key_file=str(other.workdir / "state" / "master.key"))  # its own key, not first's
    if backend == "sqlite":
        (other.workdir / "state").mkdir()
        shutil.copy(first.workdir / "state" / "totpd.db", other.workdir / "state" / "totpd.db")
    # (PostgreSQL: `other` is a host whose key differs from the fleet's, on the same database.)
    # SQLite: the key is missing beside an existing database and none is made up for it.
    expect = "master key is missing" if backend == "sqlite" else "master key does not open this database"
    with pytest.raises(RuntimeError, match=expect):
        other.start()


def test_nothing_secret_reaches_the_log(daemon):
    out = daemon.enroll_json("alice")
    good = code(out["secret"])
    verify(daemon, "alice", good)
    verify(daemon, "alice", "987654")
    verify(daemon, "alice", out["recovery_codes"][0])
    log = daemon.log()
    assert "event=verify" in log
    for needle in [out["secret"], good, "987654", *out["recovery_codes"], out["recovery_codes"][0].replace("-", "")]:
        assert needle not in log


# -- process lifecycle --------------------------------------------------------------


def test_sigterm_stops_cleanly_and_removes_the_socket(daemon):
    assert daemon.stop(15) == 0
    assert not os.path.exists(daemon.socket_path)
    assert "stopped" in daemon.log()


def test_sigint_stops_like_sigterm(daemon):
    assert daemon.stop(2) == 0
    assert not os.path.exists(daemon.socket_path)


def test_start_up_and_shut_down_say_each_step_once_in_order(daemon):
    assert daemon.stop(15) == 0
    steps = ["listening on " + daemon.socket_path, "stopping: finishing requests in flight", "stopped"]
    lines = [line for line in daemon.log().splitlines() if line.startswith("totpd: INFO:")]
    found = [index for step in steps for index, line in enumerate(lines) if step in line]
    assert len(found) == len(steps) and found == sorted(found), lines


def test_a_request_in_flight_at_sigterm_is_answered_before_the_daemon_stops(make_daemon):
    daemon = make_daemon(recovery_codes=50)  # fifty argon2 hashes: the answer takes a while
    with wire.connect(daemon.socket_path, timeout=30) as sock:
        sock.sendall(encode_request("enroll", {"user": "alice", "activate": "1"}))
        time.sleep(0.2)
        assert not select.select([sock], [], [], 0)[0], "answered before the signal: nothing was in flight"
        daemon.process.send_signal(15)
        reply = wire.read_reply(sock)
        assert reply.status == "OK" and len(reply.fields["recovery_codes"].split()) == 50
        assert wire.closed(sock)  # then the connection is closed
    assert daemon.process.wait(15) == 0
    assert "stopped" in daemon.log()


def test_a_stale_socket_from_a_killed_daemon_is_replaced(daemon):
    daemon.stop(9)
    assert os.path.exists(daemon.socket_path)
    daemon.start()
    assert wire.request(daemon.socket_path, "ping").status == "OK"


def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon, make_daemon, tmp_path):
    second = make_daemon(start=False, socket=daemon.socket_path)
    with pytest.raises(RuntimeError, match="already listening"):
        second.start()


def test_totpctl_names_the_socket_when_the_daemon_is_not_running(tmp_path):
    from daemonproc import DaemonProcess

    idle = DaemonProcess(tmp_path / "none")
    result = idle.ctl("status", "alice")
    assert result.returncode == 3
    assert idle.socket_path in result.stderr and "is totpd running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


