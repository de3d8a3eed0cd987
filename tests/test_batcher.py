"""totpd/store/batcher.py: a batch per turn of the event loop, a commit per batch, reads at once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from totpd.sealing import Sealer, key_check
from totpd.store import Batcher, StoreOptions, Transaction, open_store

from test_sqlite import Statements
from test_store import KEY, enroll, last


@pytest.fixture
def store(tmp_path):
    opened = open_store(str(tmp_path / "state" / "totpd.db"), key_check(Sealer(KEY)), StoreOptions())
    opened.run(lambda tx: [enroll(tx, user) for user in ("alice", "bob", "carol")])
    yield opened
    opened.close()


def step(user: str, value: int):
    return lambda tx: tx.advance_step(user, "default", value)


def test_the_units_of_one_turn_share_one_commit_and_a_later_turn_gets_its_own(store):
    statements = Statements(store)

    async def run():
        batcher = Batcher(store)
        first = await asyncio.gather(batcher.submit(step("alice", 1)), batcher.submit(step("bob", 1)))
        second = await batcher.submit(step("carol", 1))
        return first, second

    assert asyncio.run(run()) == ([True, True], True)
    assert statements.verbs() == ["BEGIN", "UPDATE", "UPDATE", "COMMIT", "BEGIN", "UPDATE", "COMMIT"], statements.all


def test_a_unit_is_answered_only_once_its_batch_is_committed(store, tmp_path):
    seen_by_another_connection = []

    async def run():
        batcher = Batcher(store)
        await batcher.submit(step("alice", 9))
        other = sqlite3.connect(tmp_path / "state" / "totpd.db")
        seen_by_another_connection.append(other.execute("SELECT last_step FROM tokens WHERE user = 'alice'").fetchone())
        other.close()

    asyncio.run(run())
    assert seen_by_another_connection == [(9,)]


def test_a_read_is_answered_before_read_returns_without_a_transaction(store):
    statements = Statements(store)

    async def run():
        future = Batcher(store).read(lambda tx: last(tx.get("bob")))
        return future.done(), await future

    assert asyncio.run(run()) == (True, -1)
    assert statements.verbs() == ["SELECT"], statements.all


def test_a_caller_that_gave_up_does_not_keep_the_rest_of_its_batch_unanswered(store):
    async def run():
        batcher = Batcher(store)
        abandoned = batcher.submit(step("alice", 2))
        kept = batcher.submit(step("bob", 2))
        abandoned.cancel()  # its client hung up before the commit
        return await kept

    assert asyncio.run(run()) is True
    assert store.read(lambda tx: (last(tx.get("alice")), last(tx.get("bob")))).result() == (2, 2)


def test_while_the_store_thread_holds_the_connection_a_batch_is_answered_from_there(store):
    """Another thread's work (a `totpctl import`, fleet chores) holds SQLite's connection:
    the loop's batch goes to the store thread and comes back with one wake-up."""
    holding, release = threading.Event(), threading.Event()

    def hold(tx: Transaction) -> None:
        holding.set()
        release.wait(10)

    held = store.submit(hold)
    assert holding.wait(10)

    async def run():
        batcher = Batcher(store)
        pending = asyncio.gather(batcher.submit(step("alice", 5)), batcher.submit(step("carol", 5)))
        await asyncio.sleep(0.05)
        assert not pending.done()  # not run in the loop's thread meanwhile
        release.set()
        return await pending

    assert asyncio.run(run()) == [True, True]
    held.result(10)
    assert store.read(lambda tx: (last(tx.get("alice")), last(tx.get("carol")))).result() == (5, 5)
