"""Fleet mode: several daemons ("hosts") on one PostgreSQL, and what happens when it fails.

Every daemon a test makes here shares the test's database and master key (conftest's
make_daemon with backend "postgres"). Tests that stop or freeze the server get a
cluster of their own, so the session's cluster never sees it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import threading
import time

import psycopg
import pyotp
import pytest

import wire
from pgcluster import PASSWORD_ROLE, PostgresCluster

PAM_TIMEOUT = 5.0  # pam_totpd.so's default timeout=: every reply must come well within it


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def own_cluster():
    """A cluster for one test that stops or freezes its server."""
    cluster = PostgresCluster().init().start()
    yield cluster
    cluster.destroy()


def code(secret: str, steps_from_now: int = 0) -> str:
    totp = pyotp.TOTP(secret)
    return totp.at(time.time() + steps_from_now * totp.interval)


def step_of(steps_from_now: int = 0) -> int:
    return int((time.time() + steps_from_now * 30) // 30)


def verify(daemon, user: str, value: str, timeout: float = 10.0):
    with wire.connect(daemon.socket_path, timeout=timeout) as sock:
        from totpd.protocol import encode_request

        sock.sendall(encode_request("verify", {"user": user, "code": value, "service": "sshd", "rhost": "192.0.2.1"}))
        return wire.read_reply(sock)


def enroll_fast(daemon, user: str) -> str:
    """Enroll and activate over the socket (no totpctl process): the secret."""
    secret = pyotp.random_base32(32)
    reply = wire.request(daemon.socket_path, "enroll", user=user, secret=secret, activate="1")
    assert reply.status == "OK", (reply.status, reply.message)
    return secret


def last_steps(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute('SELECT "user", last_step FROM tokens').fetchall())


# -- one enrollment, every host --------------------------------------------------------


def test_one_enrollment_serves_every_host_and_a_code_works_on_only_one(make_daemon):
    host_a, host_b = make_daemon(), make_daemon()
    secret = host_a.enroll("alice")
    good = code(secret)
    assert verify(host_b, "alice", good).status == "ACCEPTED"
    replay = verify(host_a, "alice", good)
    assert replay.status == "REJECTED" and "already used" in replay.message
    assert json.loads(host_a.ctl("list", "--json").stdout)[0]["user"] == "alice"


def test_two_hundred_submissions_of_one_code_across_two_hosts_accept_exactly_one(make_daemon):
    hosts = [make_daemon(), make_daemon()]
    secret = hosts[0].enroll("alice")
    good = code(secret)
    barrier = threading.Barrier(200)

    def submit(index: int) -> str:
        barrier.wait()
        return verify(hosts[index % 2], "alice", good).status

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(submit, range(200)))
    assert statuses.count("ACCEPTED") == 1, statuses
    assert set(statuses) == {"ACCEPTED", "REJECTED"}


def test_a_lockout_reached_through_one_host_holds_on_the_other(make_daemon):
    host_a, host_b = make_daemon(max_failures=5, backoff_after=5), make_daemon(max_failures=5, backoff_after=5)
    secret = host_a.enroll("alice")
    # Failures counted fleet-wide: alternate the hosts.
    statuses = [verify((host_a, host_b)[i % 2], "alice", "000001").status for i in range(5)]
    assert statuses == ["REJECTED"] * 4 + ["LOCKED"]
    assert verify(host_b, "alice", code(secret)).status == "LOCKED"
    assert wire.request(host_b.socket_path, "check", user="alice").status == "LOCKED"
    assert json.loads(host_b.ctl("status", "alice", "--json").stdout)["locked"] is True
    assert host_b.ctl("unlock", "alice").returncode == 0
    assert verify(host_a, "alice", code(secret)).status == "ACCEPTED"


def test_a_recovery_code_used_on_one_host_is_dead_on_the_other(make_daemon):
    host_a, host_b = make_daemon(), make_daemon()
    codes = host_a.enroll_json("alice")["recovery_codes"]
    assert verify(host_a, "alice", codes[0]).status == "ACCEPTED"
    assert verify(host_b, "alice", codes[0]).status == "REJECTED"
    assert json.loads(host_b.ctl("status", "alice", "--json").stdout)["recovery_codes_left"] == 9


def test_daemons_starting_together_on_a_new_database_migrate_it_once(make_daemon, postgres, pg_database):
    hosts = [make_daemon(start=False) for _ in range(4)]
    key = hosts[0].settings["key_file"]  # the fleet's key exists before the hosts start
    os.makedirs(os.path.dirname(key), mode=0o700)
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(os.urandom(32))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda host: host.start(), hosts))
    assert postgres.sql("SELECT version FROM totpd_schema", dbname=pg_database) == [(1,), (2,)]
    secret = hosts[0].enroll("alice")
    assert verify(hosts[3], "alice", code(secret)).status == "ACCEPTED"


def test_a_database_with_a_newer_schema_is_refused(make_daemon, postgres, pg_database):
    make_daemon().stop()
    postgres.sql("INSERT INTO totpd_schema VALUES (99, 0)", dbname=pg_database)
    with pytest.raises(RuntimeError, match="schema version 99, newer than this totpd"):
        make_daemon()


# -- the connection string and its password ---------------------------------------------


def test_a_password_never_sits_in_the_config_but_a_password_file_works(make_daemon, postgres, tmp_path):
    password = "correct horse battery staple"
    if not postgres.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_ROLE,)):
        postgres.sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'")
    name = postgres.create_database("pw")
    postgres.sql(f'ALTER DATABASE "{name}" OWNER TO {PASSWORD_ROLE}')
    dsn = postgres.dsn(name, user=PASSWORD_ROLE)
    try:
        with pytest.raises(RuntimeError, match="holds a password in clear"):
            make_daemon(database=dsn + f" password='{password}'")
        with pytest.raises(RuntimeError, match="password"):
            make_daemon(database=dsn)  # no password at all: the server's refusal, named
        secret_file = tmp_path / "pgpass"
        secret_file.write_text(password + "\n")
        secret_file.chmod(0o644)
        with pytest.raises(RuntimeError, match="readable by others"):
            make_daemon(database=dsn, database_password_file=str(secret_file))
        secret_file.chmod(0o600)
        daemon = make_daemon(database=dsn, database_password_file=str(secret_file))
        secret = daemon.enroll("alice")
        assert verify(daemon, "alice", code(secret)).status == "ACCEPTED"
        assert password not in daemon.log()
        daemon.stop()
    finally:
        postgres.drop_database(name)


# -- failures -------------------------------------------------------------------------------


def test_killing_postgresql_mid_load_loses_no_acknowledged_step_and_the_daemons_recover(make_daemon, own_cluster):
    dsn = own_cluster.dsn(own_cluster.create_database())
    settings = dict(database=dsn, recovery_codes=1, max_failures=100, backoff_after=100)
    hosts = [make_daemon(**settings), make_daemon(**settings)]
    pids = [host.process.pid for host in hosts]
    users = [f"user{i:03d}" for i in range(100)]
    secrets = {user: enroll_fast(hosts[i % 2], user) for i, user in enumerate(users)}

    tasks: queue.Queue = queue.Queue()
    for offset in (-1, 0, 1):  # each account's codes in step order
        for user in users:
            tasks.put((user, offset))
    results: list[tuple[str, int, str, str, float]] = []  # user, step, code, status, seconds
    lock = threading.Lock()
    killed = threading.Event()

    def load(worker: int) -> None:
        while True:
            try:
                user, offset = tasks.get_nowait()
            except queue.Empty:
                return
            value, step = code(secrets[user], offset), step_of(offset)
            started = time.monotonic()
            reply = verify(hosts[(worker + offset) % 2], user, value)
            with lock:
                results.append((user, step, value, reply.status, time.monotonic() - started))
                if reply.status == "UNAVAILABLE":
                    assert "try again" in reply.message
            time.sleep(0.03)

    def kill_and_restart() -> None:
        while len(results) < 80:
            time.sleep(0.01)
        own_cluster.stop("immediate")
        killed.set()
        time.sleep(2.0)
        own_cluster.start()

    with concurrent.futures.ThreadPoolExecutor(17) as pool:
        killer = pool.submit(kill_and_restart)
        workers = [pool.submit(load, worker) for worker in range(16)]
        for future in [killer, *workers]:
            future.result(timeout=120)

    statuses = [status for _, _, _, status, _ in results]
    assert killed.is_set() and statuses.count("ACCEPTED") >= 80, statuses
    assert "UNAVAILABLE" in statuses, "the kill never hit a request"
    assert set(statuses) <= {"ACCEPTED", "REJECTED", "UNAVAILABLE"}, set(statuses)
    assert max(seconds for *_, seconds in results) < PAM_TIMEOUT

    # Nothing acknowledged was lost: every ACCEPTED step is recorded after the crash...
    recorded = last_steps(dsn)
    accepted = [(user, step, value) for user, step, value, status, _ in results if status == "ACCEPTED"]
    lost = [(user, step) for user, step, _ in accepted if recorded[user] < step]
    assert not lost, lost
    # ...so each of those codes is refused now, on either host.
    for index, (user, step, value) in enumerate(accepted):
        if abs(step - step_of()) <= 1:  # still inside the window: refused only because it was used
            reply = verify(hosts[index % 2], user, value)
            assert reply.status == "REJECTED" and "already used" in reply.message, (user, reply)

    # Both daemons answer normally again, on their own, without a restart.
    for index, host in enumerate(hosts):
        deadline = time.monotonic() + 20
        while wire.request(host.socket_path, "check", user=users[index]).status != "NEED_CODE":
            assert time.monotonic() < deadline, f"host {index} did not recover:\n{host.log()}"
            time.sleep(0.2)
        fresh = enroll_fast(host, f"fresh{index}")
        assert verify(host, f"fresh{index}", code(fresh)).status == "ACCEPTED"
        assert host.process.poll() is None and host.process.pid == pids[index]
        assert "is unavailable" in host.log() and "answers again" in host.log()


def test_a_frozen_postgresql_fails_verifications_closed_in_time_and_everyone_else_is_served(make_daemon, own_cluster):
    dsn = own_cluster.dsn(own_cluster.create_database())
    host_a, host_b = make_daemon(database=dsn, database_timeout=1.5), make_daemon(database=dsn, database_timeout=1.5)
    alice, bob = host_a.enroll("alice"), host_a.enroll("bob")
    assert verify(host_b, "alice", code(alice, -1)).status == "ACCEPTED"  # connections are open and warm
    frozen = own_cluster.freeze()
    try:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: verify((host_a, host_b)[i % 2], "alice", code(alice)), range(8)))
            # Meanwhile each daemon serves what needs no database.
            assert wire.request(host_a.socket_path, "ping").status == "OK"
            assert wire.exchange(host_b.socket_path, wire.frame(b"explode\n")).status == "BAD_REQUEST"
        elapsed = time.monotonic() - started
        assert {reply.status for reply in replies} == {"UNAVAILABLE"}
        assert all("try again" in reply.message for reply in replies)
        assert elapsed < PAM_TIMEOUT - 1, elapsed
    finally:
        own_cluster.thaw(frozen)
    assert "database_timeout" in host_a.log() + host_b.log()
    deadline = time.monotonic() + 20
    while (reply := verify(host_a, "bob", code(bob))).status == "UNAVAILABLE":
        assert time.monotonic() < deadline, host_a.log()
        time.sleep(0.2)
    assert reply.status == "ACCEPTED"
