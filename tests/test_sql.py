"""totpd/store/sql.py: every statement once, each backend's from its Dialect.

What the dialects change is tested where it shows: names listed in byte order
whatever the database's own collation; the row lock in tests/test_postgres.py; the
column types in tests/test_schema.py (every migration runs on both backends).
"""

from __future__ import annotations

import pytest

from totpd.sealing import Sealer, key_check
from totpd.store import StoreOptions, open_store

from test_store import KEY, enroll

# In byte order; English (ICU) would say _x, a, b, B, é, Z.
NAMES = ["B", "Z", "_x", "a", "b", "é"]


@pytest.fixture(params=["sqlite", "postgres"])
def unordered(request, tmp_path):
    """A database whose own collation may not be byte order (PostgreSQL: ICU's English)."""
    if request.param == "sqlite":
        yield str(tmp_path / "state" / "totpd.db")
        return
    cluster = request.getfixturevalue("postgres")
    name = f"icu_{request.getfixturevalue('pg_database')}"
    cluster.sql(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en'")
    try:
        yield cluster.dsn(name)
    finally:
        cluster.drop_database(name)


def test_accounts_are_listed_in_the_byte_order_of_their_names_whatever_the_databases_collation(unordered):
    store = open_store(unordered, key_check(Sealer(KEY)), StoreOptions())
    try:
        store.run(lambda tx: [enroll(tx, user) for user in reversed(NAMES)])
        listed = store.read(lambda tx: [account.user for account, _ in tx.page(0, 10)]).result()
        pages = store.read(lambda tx: [[account.user for account, _ in tx.page(at, 2)] for at in (0, 2, 4)]).result()
    finally:
        store.close()
    assert listed == NAMES == sorted(NAMES, key=lambda name: name.encode())
    assert pages == [NAMES[0:2], NAMES[2:4], NAMES[4:6]]

