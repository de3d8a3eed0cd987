"""totpd/store/postgres.py: what the fleet's store does its own way, on the session's PostgreSQL.

Two stores on one database stand for two hosts. What every backend does alike is in
tests/test_store.py; fleet mode through real daemons, and the server failing under
them, in tests/test_fleet.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from totpd.sealing import Sealer, key_check
from totpd.store import StoreOptions, Transaction, open_store

from test_store import KEY, enroll

HELD = 0.5  # seconds the first host keeps the account's row


@pytest.fixture
def hosts(postgres, pg_database):
    dsn = postgres.dsn(pg_database)
    stores = [open_store(dsn, key_check(Sealer(KEY)), StoreOptions()) for _ in range(2)]
    stores[0].run(lambda tx: enroll(tx, "alice"))
    yield stores
    for store in stores:
        store.close()


def holding_alice(holds: threading.Event, release: threading.Event):
    """A unit that reads alice, says so, waits, then counts one failure on what it read."""

    def unit(tx: Transaction) -> float:
        account = tx.get("alice")
        assert account is not None
        holds.set()
        release.wait(5)
        tx.set_failures("alice", account.failures + 1, 0.0, False)
        return time.monotonic()

    return unit


def test_a_transactions_read_holds_the_account_so_two_hosts_never_decide_from_one_version(hosts):
    holds, release = threading.Event(), threading.Event()
    first = hosts[0].submit(holding_alice(holds, release))
    assert holds.wait(5)
    at_once = threading.Event()
    at_once.set()
    second = hosts[1].submit(holding_alice(threading.Event(), at_once))
    time.sleep(HELD)
    assert not second.done()  # waiting for the first host's row lock
    release.set()
    assert second.result(5) > first.result(5)  # its read returned only after the first host's commit
    assert hosts[0].read(lambda tx: tx.get("alice")).result(5).failures == 2  # neither failure lost


def test_a_read_takes_no_row_lock_and_sees_the_last_commit(hosts):
    holds, release = threading.Event(), threading.Event()
    writer = hosts[0].submit(holding_alice(holds, release))
    try:
        assert holds.wait(5)
        started = time.monotonic()
        assert hosts[1].read(lambda tx: tx.get("alice")).result(5).failures == 0
        assert time.monotonic() - started < HELD
    finally:
        release.set()
    writer.result(5)
    assert hosts[1].read(lambda tx: tx.get("alice")).result(5).failures == 1


def test_totpd_keeps_to_the_schema_its_search_path_names_beside_another_programs_accounts(postgres, pg_database):
    postgres.sql("CREATE TABLE accounts (id INTEGER PRIMARY KEY)", dbname=pg_database)  # in public, not totpd's
    postgres.sql("CREATE SCHEMA totpd", dbname=pg_database)
    dsn = postgres.dsn(pg_database) + " options='-csearch_path=totpd'"
    for _ in range(2):  # made, then found as it is
        store = open_store(dsn, key_check(Sealer(KEY)), StoreOptions())
        store.run(lambda tx: tx.count())
        store.close()
    tables = postgres.sql(
        "SELECT schemaname, tablename FROM pg_tables WHERE tablename IN ('accounts', 'totpd_schema') ORDER BY 1, 2",
        dbname=pg_database,
    )
    assert tables == [("public", "accounts"), ("totpd", "accounts"), ("totpd", "totpd_schema")]
    assert postgres.sql("SELECT version FROM totpd.totpd_schema", dbname=pg_database) == [(1,), (2,)]
