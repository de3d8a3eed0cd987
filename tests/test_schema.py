"""totpd/store/schema.py: one schema, its migrations, and one record of the version, on both backends.

Databases of earlier releases are made two ways: by hand from the migrations' own
text with the version recorded as that release did, and by the previous release's
own code (its tree taken from git), run in a process of its own.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from totpd.errors import StoreAbsent, StoreError
from totpd.sealing import KEY_CHECK, Sealer, key_check, secret_context
from totpd.store import StoreOptions, is_postgres, open_store, schema
from totpd.store.sql import POSTGRES, SQLITE
from totpd.store.sqlite import EARLIER_RELEASES_REFUSE

from test_store import KEY, database, enroll, last  # noqa: F401  (database: the two-backend fixture)

# main before the version's record was one: schema 2, SQLite's version in PRAGMA user_version.
PREVIOUS_RELEASE = "70ad3368582ce5b2d587b102e7d9ee17bc8a1547"
SEALER = Sealer(KEY)


class Raw:
    """A plain connection to a test's database, beside (not through) the store: SQL in the
    schema's own notation ({blob}..., `?`), as the dialect of the backend runs it."""

    def __init__(self, database: str) -> None:
        self.postgres = is_postgres(database)
        self.dialect = POSTGRES if self.postgres else SQLITE
        if self.postgres:
            self.conn = psycopg.connect(database, autocommit=True)
        else:
            os.makedirs(os.path.dirname(database), mode=0o700, exist_ok=True)
            self.conn = sqlite3.connect(database, isolation_level=None)
            os.chmod(database, 0o600)

    def __call__(self, text: str, params: tuple = ()) -> list[tuple]:
        cursor = self.conn.execute(self.dialect.sql(text), params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def record(self) -> list[int]:
        return [version for (version,) in self("SELECT version FROM totpd_schema ORDER BY version")]

    def earlier_release(self, version: int) -> None:
        """Migrations 1 to `version` as they stand, recorded the way the releases of that
        time did: PostgreSQL in the table, SQLite in user_version."""
        if self.postgres:
            self("CREATE TABLE totpd_schema (version INTEGER PRIMARY KEY, applied {double} NOT NULL)")
        for target in range(1, version + 1):
            for statement in schema.migration(target, self.dialect):
                self(statement)
            if self.postgres:
                self("INSERT INTO totpd_schema (version, applied) VALUES (?, 0)", (target,))
        if not self.postgres:
            self(f"PRAGMA user_version = {version}")
        self("INSERT INTO meta (key, value) VALUES ('key_check', ?)", (SEALER.seal(KEY_CHECK, "key-check"),))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def raw(database):
    connection = Raw(database)
    yield connection
    connection.close()


def opened(database: str, create: bool = True):
    store = open_store(database, key_check(SEALER), StoreOptions(), create=create)
    store.close()


# -- a new database ------------------------------------------------------------------------


def test_a_new_database_records_each_migration_once_in_one_table_on_both_backends(database, raw, caplog):
    caplog.set_level("INFO", logger="totpd")
    opened(database)
    opened(database)
    assert "schema" not in caplog.text  # made, not upgraded: nothing to tell
    assert raw.record() == [1, 2] == list(range(1, schema.VERSION + 1))
    assert raw("SELECT count(*) FROM totpd_schema WHERE applied > 0") == [(2,)]
    if not raw.postgres:
        assert raw("PRAGMA user_version") == [(EARLIER_RELEASES_REFUSE,)]


def test_stores_opening_a_new_database_together_migrate_it_once(database, raw):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: opened(database), range(4)))
    assert raw.record() == [1, 2]


def test_a_database_without_totpd_tables_is_absent_when_it_is_not_to_be_created(database, raw):
    with pytest.raises(StoreAbsent, match="no totpd tables"):
        opened(database, create=False)
    assert raw(raw.dialect.tables) == []  # nothing made


# -- databases of earlier releases -------------------------------------------------------------


def test_a_schema_1_database_with_its_own_version_record_is_upgraded_keeping_its_replay_state(database, raw, caplog):
    caplog.set_level("INFO", logger="totpd")
    raw.earlier_release(1)
    secret = b"12345678901234567890"
    raw(
        'INSERT INTO accounts ("user", secret, last_step, failures, locked, created, confirmed)'
        " VALUES ('alice', ?, 123456, 4, TRUE, 1.0, 2.0)",
        (SEALER.seal(secret, secret_context("alice")),),
    )
    raw(
        'INSERT INTO accounts ("user", created, pending_secret, pending_algorithm, pending_digits, pending_period)'
        " VALUES ('carol', 3.0, ?, 'SHA256', 8, 60)",
        (b"sealed-pending",),
    )
    raw("""INSERT INTO recovery_codes ("user", id, hash) VALUES ('alice', 0, 'h0'), ('alice', 3, 'h3')""")
    store = open_store(database, key_check(SEALER), StoreOptions())
    try:
        alice, carol, codes = store.run(lambda tx: (tx.get("alice"), tx.get("carol"), tx.recovery_hashes("alice")))
    finally:
        store.close()
    assert (alice.failures, alice.locked, alice.confirmed) == (4, True, 2.0)
    (token,) = alice.tokens
    assert (token.name, token.type, token.last_step, token.added) == ("default", "totp", 123456, 2.0)
    assert SEALER.open(token.secret, secret_context("alice")) == secret
    assert codes == [(0, "h0"), (3, "h3")]
    assert not carol.active and carol.pending_secret == b"sealed-pending"
    assert (carol.pending_token, carol.pending_type, carol.pending_last_step, carol.pending_replaces) == ("default", "totp", -1, True)
    assert raw.record() == [1, 2]
    assert "upgrading the schema from version 1 to 2" in caplog.text


def test_a_schema_2_database_with_its_own_version_record_opens_as_it_is(database, raw):
    raw.earlier_release(2)
    raw("""INSERT INTO accounts ("user", created, confirmed) VALUES ('alice', 1.0, 2.0)""")
    raw(
        'INSERT INTO tokens ("user", name, type, secret, last_step, added) VALUES (?, ?, ?, ?, ?, ?)',
        ("alice", "key", "hotp", SEALER.seal(b"k" * 20, secret_context("alice")), 41, 2.0),
    )
    store = open_store(database, key_check(SEALER), StoreOptions())
    try:
        assert store.run(lambda tx: tx.advance_step("alice", "key", 41)) is False  # its replay state holds
        alice = store.run(lambda tx: tx.get("alice"))
    finally:
        store.close()
    assert [(token.name, token.type, token.last_step) for token in alice.tokens] == [("key", "hotp", 41)]
    assert raw.record() == [1, 2]
    assert raw("SELECT count(*) FROM totpd_schema WHERE applied = 0") == [(2,)]  # recorded before, not run again


def test_an_upgrade_that_fails_leaves_the_database_as_the_earlier_release_left_it(database, raw):
    raw.earlier_release(1)
    raw('CREATE TABLE tokens ("user" TEXT)')  # migration 2 cannot create its table
    with pytest.raises(StoreError, match="tokens"):
        opened(database)
    assert "secret" in {name for (name,) in raw(
        "SELECT name FROM pragma_table_info('accounts')" if not raw.postgres
        else "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'"
    )}
    if raw.postgres:
        assert raw.record() == [1]
    else:
        assert raw("PRAGMA user_version") == [(1,)] and "totpd_schema" not in {name for (name,) in raw(SQLITE.tables)}


# -- databases to refuse ---------------------------------------------------------------------


def test_a_newer_schema_is_refused_and_left_as_it_is(database, raw):
    opened(database)
    raw("INSERT INTO totpd_schema (version, applied) VALUES (99, 0)")
    with pytest.raises(StoreError, match=r"schema version 99, newer than this totpd \(2\); upgrade totpd"):
        opened(database)
    assert raw.record() == [1, 2, 99]


def test_a_database_whose_accounts_table_is_another_programs_is_refused(database, raw):
    raw('CREATE TABLE accounts (id INTEGER PRIMARY KEY, "user" TEXT)')
    with pytest.raises(StoreError, match="is not a totpd database: it holds tables but no totpd_schema"):
        opened(database)
    assert "totpd_schema" not in {name for (name,) in raw(raw.dialect.tables)}


def test_a_postgresql_database_may_hold_other_programs_tables_beside_totpds(postgres, pg_database):
    raw = Raw(postgres.dsn(pg_database))
    try:
        raw("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
        opened(postgres.dsn(pg_database))
        assert raw.record() == [1, 2]
    finally:
        raw.close()


def test_a_sqlite_file_holding_any_other_table_is_refused(tmp_path):
    raw = Raw(str(tmp_path / "state" / "totpd.db"))
    try:
        raw("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
        with pytest.raises(StoreError, match="this SQLite file is not a totpd database"):
            opened(str(tmp_path / "state" / "totpd.db"))
    finally:
        raw.close()


# -- the previous release's own code -----------------------------------------------------------

PREVIOUS_MAKES = """
import sys
from totpd.sealing import Sealer, key_check, secret_context
from totpd.store import StoreOptions, open_store
sealer = Sealer(bytes(range(32)))
store = open_store(sys.argv[1], key_check(sealer), StoreOptions())
def write(tx):
    tx.put_pending("alice", sealer.seal(b"s" * 20, secret_context("alice")), "SHA1", 6, 30, 1000.0)
    tx.activate_pending("alice", 1001.0)
    tx.advance_step("alice", "default", 7)
    tx.replace_recovery_codes("alice", ["h0", "h1"])
store.run(write)
store.close()
"""
PREVIOUS_OPENS = """
import sys
from totpd.sealing import Sealer, key_check
from totpd.store import StoreOptions, open_store
open_store(sys.argv[1], key_check(Sealer(bytes(range(32)))), StoreOptions()).close()
"""


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory) -> Path:
    """The tree of totpd/ at PREVIOUS_RELEASE."""
    tree = tmp_path_factory.mktemp("previous")
    git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
    if subprocess.run([*git, "cat-file", "-e", PREVIOUS_RELEASE + "^{commit}"], capture_output=True).returncode:
        # A shallow clone: bring that commit from where this one came from.
        subprocess.run([*git, "fetch", "--quiet", "origin", PREVIOUS_RELEASE], capture_output=True, check=True)
    archive = subprocess.run([*git, "archive", PREVIOUS_RELEASE, "totpd"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_previous(tree: Path, script: str, database: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    check = script + "\nimport totpd; assert totpd.__file__.startswith(sys.argv[2]), totpd.__file__\n"
    return subprocess.run(
        [sys.executable, "-c", check, database, str(tree)], env=env, cwd=tree, capture_output=True, text=True, timeout=60
    )


def test_a_database_the_previous_release_made_opens_here_with_its_accounts_and_replay_state(database, previous_release):
    made = run_previous(previous_release, PREVIOUS_MAKES, database)
    assert made.returncode == 0, made.stderr
    store = open_store(database, key_check(SEALER), StoreOptions())
    try:
        alice, codes = store.run(lambda tx: (tx.get("alice"), tx.recovery_hashes("alice")))
        assert store.run(lambda tx: tx.advance_step("alice", "default", 7)) is False
    finally:
        store.close()
    assert last(alice) == 7 and codes == [(0, "h0"), (1, "h1")]
    raw = Raw(database)
    try:
        assert raw.record() == [1, 2]
    finally:
        raw.close()


def test_the_previous_release_refuses_a_sqlite_file_this_one_wrote_as_a_newer_schema(tmp_path, previous_release):
    path = str(tmp_path / "state" / "totpd.db")
    store = open_store(path, key_check(SEALER), StoreOptions())
    store.run(lambda tx: enroll(tx, "alice"))
    store.close()
    refused = run_previous(previous_release, PREVIOUS_OPENS, path)
    assert refused.returncode != 0 and f"schema version {EARLIER_RELEASES_REFUSE}, newer than this totpd" in refused.stderr


def test_the_previous_release_still_opens_a_postgresql_database_this_one_wrote(postgres, pg_database, previous_release):
    dsn = postgres.dsn(pg_database)
    opened(dsn)
    reopened = run_previous(previous_release, PREVIOUS_OPENS, dsn)
    assert reopened.returncode == 0, reopened.stderr
