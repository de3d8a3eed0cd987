"""totpd/store/__init__.py: one interface, and every backend behind it doing the same.

Each test runs on the embedded SQLite store and on PostgreSQL (the session's
throwaway cluster, a fresh database each). What one backend does its own way is
tested beside it: tests/test_sqlite.py, tests/test_postgres.py.
"""

from __future__ import annotations

import asyncio

import pytest

from totpd.errors import StoreUnavailable
from totpd.sealing import Sealer, key_check, secret_context
from totpd.store import Account, Batcher, Reader, StoreOptions, Transaction, open_store

KEY = bytes(range(32))


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state" / "totpd.db")
    cluster = request.getfixturevalue("postgres")
    return cluster.dsn(request.getfixturevalue("pg_database"))


@pytest.fixture
def store(database):
    opened = open_store(database, key_check(Sealer(KEY)), StoreOptions())
    yield opened
    opened.close()


def enroll(tx: Transaction, user: str, secret: bytes = b"s" * 20) -> None:
    tx.put_pending(user, Sealer(KEY).seal(secret, secret_context(user)), "SHA1", 6, 30, 1000.0)
    tx.activate_pending(user, 1001.0)


def last(account: Account, token: str = "default") -> int:
    """A token's last accepted step."""
    found = account.token(token)
    assert found is not None
    return found.last_step


def batch(store, *units):
    """Every unit submitted in one loop turn through the Batcher: their outcomes (value or exception)."""

    async def run():
        batcher = Batcher(store)
        return await asyncio.gather(*(batcher.submit(unit) for unit in units), return_exceptions=True)

    return asyncio.run(run())


def read(store, work):
    async def run():
        return await Batcher(store).read(work)

    return asyncio.run(run())


# -- one interface, both backends -----------------------------------------------------


def test_every_operation_does_the_same_on_both_backends(store):
    def write(tx: Transaction) -> None:
        enroll(tx, "bob")
        enroll(tx, "alice")
        tx.put_pending("carol", b"sealed-pending", "SHA256", 8, 60, 1000.0)
        tx.replace_recovery_codes("alice", ["h0", "h1", "h2"])
        tx.set_meta("note", b"\x00\xff")

    store.run(write)
    alice = read(store, lambda tx: tx.get("alice"))
    assert isinstance(alice, Account) and alice.active and last(alice) == -1 and alice.locked is False
    token = alice.token("default")
    assert (token.type, token.algorithm, token.digits, token.period, alice.confirmed) == ("totp", "SHA1", 6, 30, 1001.0)
    carol = read(store, lambda tx: tx.get("carol"))
    assert not carol.active and (carol.pending_algorithm, carol.pending_digits, carol.pending_period) == ("SHA256", 8, 60)

    assert store.run(lambda tx: tx.advance_step("alice", "default", 5)) is True
    assert store.run(lambda tx: tx.advance_step("alice", "default", 5)) is False  # only a later step
    store.run(lambda tx: tx.set_failures("bob", 3, 2000.5, True))
    assert store.run(lambda tx: tx.advance_step("bob", "default", 9)) is False  # never while hard-locked
    assert store.run(lambda tx: tx.use_recovery_code("alice", 1)) is True
    assert store.run(lambda tx: tx.use_recovery_code("alice", 1)) is False

    bob = read(store, lambda tx: tx.get("bob"))
    assert (bob.failures, bob.locked_until, bob.locked) == (3, 2000.5, True)
    assert read(store, lambda tx: tx.recovery_hashes("alice")) == [(0, "h0"), (2, "h2")]
    assert read(store, lambda tx: (tx.count(), [(a.user, left) for a, left in tx.page(0, 10)])) == (
        3, [("alice", 2), ("bob", 0), ("carol", 0)]
    )
    assert read(store, lambda tx: [a.user for a, _ in tx.page(1, 1)]) == ["bob"]
    assert read(store, lambda tx: tx.get_meta("note")) == b"\x00\xff"
    assert read(store, lambda tx: tx.get_meta("absent")) is None

    copy = alice._replace(user="dave", locked=True, tokens=(token._replace(last_step=7), token._replace(name="key", type="hotp")))
    store.run(lambda tx: tx.restore(copy, [(4, "h4")]))
    assert read(store, lambda tx: (tx.get("dave"), tx.recovery_hashes("dave"))) == (copy, [(4, "h4")])
    assert store.run(lambda tx: tx.delete("dave")) is True
    assert read(store, lambda tx: (tx.get("dave"), tx.recovery_hashes("dave"))) == (None, [])
    assert store.run(lambda tx: tx.delete("dave")) is False


def test_a_unit_that_raises_leaves_nothing_written_and_its_batch_commits_the_rest(store):
    store.run(lambda tx: (enroll(tx, "alice"), enroll(tx, "bob"), enroll(tx, "carol")))
    read(store, lambda tx: tx.get("alice"))  # a PostgreSQL read leaves its connection as it found it

    def broken(tx: Transaction) -> None:
        tx.set_failures("bob", 7, 0.0, False)
        raise ValueError("a bug in a unit")

    outcomes = batch(store, lambda tx: tx.advance_step("alice", "default", 3), broken, lambda tx: tx.advance_step("carol", "default", 4))
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], ValueError)
    after = read(store, lambda tx: [tx.get(user) for user in ("alice", "bob", "carol")])
    assert [last(account) for account in after] == [3, -1, 4]
    assert after[1].failures == 0


def test_a_read_gets_no_write_methods(store):
    store.run(lambda tx: enroll(tx, "alice"))
    with pytest.raises(AttributeError):
        read(store, lambda tx: tx.advance_step("alice", "default", 10))
    assert read(store, lambda tx: tx.get("alice")).token("default").last_step == -1
    assert isinstance(read(store, lambda tx: tx), Reader) and not isinstance(read(store, lambda tx: tx), Transaction)


def test_a_closed_store_answers_every_unit_and_read_unavailable(store):
    store.close()
    assert isinstance(batch(store, lambda tx: tx.get("alice"))[0], StoreUnavailable)
    with pytest.raises(StoreUnavailable):
        read(store, lambda tx: tx.get("alice"))
    with pytest.raises(StoreUnavailable):
        store.run(lambda tx: tx.get("alice"))
