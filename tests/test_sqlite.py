"""totpd/store/sqlite.py: the embedded store, its group commit, and the statements a login costs.

The statement counts read SQLite's own trace of what ran on the store's connection.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from totpd import otp
from totpd.audit import Audit
from totpd.config import Config
from totpd.protocol import Reply, Request
from totpd.sealing import Sealer, key_check, load_key, secret_context
from totpd.service import Caller, Service
from totpd.store import StoreOptions, Token, Transaction, open_store
from totpd.store.sqlite import _prefill_wal

from test_store import KEY, batch, enroll, last, read

ROOT = Caller(pid=1, uid=0, gid=0)


@pytest.fixture
def sqlite_store(tmp_path):
    opened = open_store(str(tmp_path / "state" / "totpd.db"), key_check(Sealer(KEY)), StoreOptions())
    yield opened
    opened.close()


class Statements:
    """What SQLite ran on the store's connection, by first word, from the moment it is made."""

    def __init__(self, store) -> None:
        self.all: list[str] = []
        store._conn.set_trace_callback(self.all.append)

    def verbs(self) -> list[str]:
        return [statement.split()[0].upper() for statement in self.all]


# -- the statements a login costs ------------------------------------------------------


def test_a_check_is_one_select_and_nothing_else(sqlite_store):
    sqlite_store.run(lambda tx: enroll(tx, "alice"))
    statements = Statements(sqlite_store)
    assert read(sqlite_store, lambda tx: tx.get("alice")).user == "alice"
    assert statements.verbs() == ["SELECT"], statements.all


def test_a_batch_of_verifications_is_one_select_and_one_update_each_between_one_begin_and_one_commit(sqlite_store):
    users = [f"user{index}" for index in range(5)]
    sqlite_store.run(lambda tx: [enroll(tx, user) for user in users])
    statements = Statements(sqlite_store)

    def judge(user: str):
        def unit(tx: Transaction) -> bool:
            account = tx.get(user)
            assert account is not None
            return tx.advance_step(user, "default", last(account) + 10)

        return unit

    assert batch(sqlite_store, *(judge(user) for user in users)) == [True] * 5
    assert statements.verbs() == ["BEGIN", *["SELECT", "UPDATE"] * 5, "COMMIT"], statements.all


def test_a_login_costs_the_service_one_select_then_one_select_and_one_update(tmp_path):
    config = Config(
        database=str(tmp_path / "state" / "totpd.db"), key_file=str(tmp_path / "state" / "master.key"),
        check_accounts=False, audit="stderr", dbus="off",
    )
    os.makedirs(tmp_path / "state", mode=0o700)
    sealer = Sealer(load_key(config.key_file, create=True))
    store = open_store(config.database, key_check(sealer), StoreOptions())
    secret = otp.new_secret()
    store.run(lambda tx: (tx.put_pending("alice", sealer.seal(secret, secret_context("alice")), "SHA1", 6, 30, 0.0),
                          tx.activate_pending("alice", 0.0)))
    service = Service(config, store, sealer, Audit(config.audit))
    code = otp.hotp(secret, otp.time_step(time.time(), otp.Params()), 6, "sha1")
    statements = Statements(store)

    async def login() -> tuple[Reply, list[str], Reply]:
        check = await service.handle(Request("check", {"user": "alice", "service": "sshd"}), ROOT)
        read = statements.verbs()
        verify = await service.handle(Request("verify", {"user": "alice", "code": code, "service": "sshd"}), ROOT)
        return check, read, verify

    try:
        check, read, verify = asyncio.run(login())
    finally:
        service.close()
        store.close()
    assert check.status == "NEED_CODE" and read == ["SELECT"], statements.all  # no transaction for a check
    assert verify.status == "ACCEPTED"
    assert statements.verbs()[1:] == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], statements.all


def test_a_verification_of_an_account_with_several_tokens_is_still_one_select_and_one_update(sqlite_store):
    def write(tx: Transaction) -> None:
        enroll(tx, "alice")
        for name in ("phone", "key"):
            tx.add_token("alice", Token(name, "hotp" if name == "key" else "totp", b"sealed", "SHA1", 6, 30, -1, 0, 2000.0, None))

    sqlite_store.run(write)
    statements = Statements(sqlite_store)

    def unit(tx: Transaction) -> bool:
        account = tx.get("alice")
        assert account is not None and [token.name for token in account.tokens] == ["default", "key", "phone"]  # added, then name
        return tx.advance_step("alice", "key", 3)

    assert batch(sqlite_store, unit) == [True]
    assert statements.verbs() == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], statements.all
    assert [last(read(sqlite_store, lambda tx: tx.get("alice")), name) for name in ("default", "key")] == [-1, 3]


def test_a_unit_that_raises_makes_the_batch_replay_without_it_and_its_writes_are_gone(sqlite_store):
    sqlite_store.run(lambda tx: [enroll(tx, user) for user in ("alice", "bob", "carol")])
    statements = Statements(sqlite_store)

    def broken(tx: Transaction) -> None:
        tx.set_failures("bob", 7, 0.0, False)
        raise ValueError("a bug in a unit")

    outcomes = batch(sqlite_store, lambda tx: tx.advance_step("alice", "default", 3), broken, lambda tx: tx.advance_step("carol", "default", 4))
    assert outcomes[0] is True and isinstance(outcomes[1], ValueError) and outcomes[2] is True
    # The first run stops at the unit that raised; the replay leaves it out, each unit
    # in a savepoint of its own, and commits the rest once.
    assert statements.verbs() == [
        "BEGIN", "UPDATE", "UPDATE", "ROLLBACK",
        "BEGIN", "SAVEPOINT", "UPDATE", "RELEASE", "SAVEPOINT", "UPDATE", "RELEASE", "COMMIT",
    ], statements.all
    accounts = read(sqlite_store, lambda tx: [tx.get(user) for user in ("alice", "bob", "carol")])
    assert [(last(account), account.failures) for account in accounts] == [(3, 0), (-1, 0), (4, 0)]


def test_a_second_unit_that_raises_in_the_replay_is_rolled_back_alone(sqlite_store):
    sqlite_store.run(lambda tx: [enroll(tx, user) for user in ("alice", "bob", "carol")])
    runs = []

    def flaky(tx: Transaction) -> None:  # succeeds the first time, raises on the replay
        runs.append(1)
        tx.set_failures("carol", 5, 0.0, False)
        if len(runs) > 1:
            raise KeyError("carol")

    def broken(tx: Transaction) -> None:
        raise ValueError("a bug in a unit")

    outcomes = batch(sqlite_store, flaky, broken, lambda tx: tx.advance_step("alice", "default", 3))
    assert isinstance(outcomes[0], KeyError) and isinstance(outcomes[1], ValueError) and outcomes[2] is True
    assert len(runs) == 2  # one replay, never a third run
    assert read(sqlite_store, lambda tx: (tx.get("carol").failures, last(tx.get("alice")))) == (0, 3)


def test_units_submitted_from_another_thread_run_on_the_store_thread_in_one_transaction(sqlite_store):
    sqlite_store.run(lambda tx: [enroll(tx, user) for user in ("alice", "bob")])
    statements = Statements(sqlite_store)
    results: list = []
    sqlite_store.submit_batch(
        [lambda tx: tx.advance_step("alice", "default", 1), lambda tx: tx.advance_step("bob", "default", 1)], results.extend
    )
    assert sqlite_store.read(lambda tx: tx.get("bob")).result().token("default").last_step == 1  # queued behind the batch
    assert results == [(0, True, None), (1, True, None)]
    assert statements.verbs() == ["BEGIN", "UPDATE", "UPDATE", "COMMIT", "SELECT"], statements.all


# -- the write-ahead log ----------------------------------------------------------------


def test_a_write_ahead_log_left_by_a_crash_is_never_overwritten(tmp_path):
    live = tmp_path / "live.db"
    db = sqlite3.connect(live, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("CREATE TABLE t (n INTEGER)")
    db.execute("INSERT INTO t VALUES (42)")
    crashed = tmp_path / "crashed.db"  # the files as a SIGKILL leaves them: frames in the WAL
    shutil.copy(live, crashed)
    shutil.copy(str(live) + "-wal", str(crashed) + "-wal")
    db.close()
    before = Path(str(crashed) + "-wal").read_bytes()
    assert len(before) > 0
    _prefill_wal(str(crashed))
    assert Path(str(crashed) + "-wal").read_bytes() == before
    db = sqlite3.connect(crashed)
    try:
        assert db.execute("SELECT n FROM t").fetchall() == [(42,)]
    finally:
        db.close()
