"""The tables: each schema migration written once for both backends, and the one record
of which are applied.

A migration's text names the few column types the backends spell differently by
their PostgreSQL names in braces ({blob}, {bigint}, {double}, {boolean}); the
backend's `Dialect` (sql.py) fills them in. The record is the table `totpd_schema`,
one row per migration applied, in every database of either backend. `upgrade` runs
in the backend's own transaction, so a database is migrated whole or not at all,
and by one process at a time.

Earlier releases kept SQLite's version in `PRAGMA user_version` (schemas 1 and 2):
the SQLite store reads it once, as `earlier`, and `upgrade` moves it into the record.
"""

from __future__ import annotations

import logging
import time

from ..errors import StoreAbsent, StoreError
from .sql import Connection, Dialect

log = logging.getLogger("totpd")

RECORD = "totpd_schema"

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value {blob} NOT NULL
        )""",
        """CREATE TABLE accounts (
            "user" TEXT PRIMARY KEY,
            secret {blob},
            algorithm TEXT NOT NULL DEFAULT 'SHA1',
            digits INTEGER NOT NULL DEFAULT 6,
            period INTEGER NOT NULL DEFAULT 30,
            last_step {bigint} NOT NULL DEFAULT -1,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until {double} NOT NULL DEFAULT 0,
            locked {boolean} NOT NULL DEFAULT FALSE,
            created {double} NOT NULL,
            confirmed {double},
            pending_secret {blob},
            pending_algorithm TEXT,
            pending_digits INTEGER,
            pending_period INTEGER
        )""",
        """CREATE TABLE recovery_codes (
            "user" TEXT NOT NULL REFERENCES accounts("user") ON DELETE CASCADE,
            id INTEGER NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY ("user", id)
        )""",
    ),
    2: (
        # Issue 20: an account holds tokens. Each account's one secret becomes its token
        # "default" with its replay state (last_step) unchanged: no used code works again.
        """CREATE TABLE tokens (
            "user" TEXT NOT NULL REFERENCES accounts("user") ON DELETE CASCADE,
            name TEXT NOT NULL,
            type TEXT NOT NULL DEFAULT 'totp',
            secret {blob} NOT NULL,
            algorithm TEXT NOT NULL DEFAULT 'SHA1',
            digits INTEGER NOT NULL DEFAULT 6,
            period INTEGER NOT NULL DEFAULT 30,
            last_step {bigint} NOT NULL DEFAULT -1,
            skew INTEGER NOT NULL DEFAULT 0,
            added {double} NOT NULL,
            last_used {double},
            PRIMARY KEY ("user", name)
        )""",
        """INSERT INTO tokens ("user", name, type, secret, algorithm, digits, period, last_step, skew, added)
            SELECT "user", 'default', 'totp', secret, algorithm, digits, period, last_step, 0, coalesce(confirmed, created)
            FROM accounts WHERE secret IS NOT NULL""",
        "ALTER TABLE accounts ADD COLUMN pending_token TEXT",
        "ALTER TABLE accounts ADD COLUMN pending_type TEXT",
        "ALTER TABLE accounts ADD COLUMN pending_last_step {bigint}",
        "ALTER TABLE accounts ADD COLUMN pending_replaces {boolean} NOT NULL DEFAULT FALSE",
        "UPDATE accounts SET pending_token = 'default', pending_type = 'totp', pending_last_step = -1,"
        " pending_replaces = TRUE WHERE pending_secret IS NOT NULL",
        "ALTER TABLE accounts DROP COLUMN secret",
        "ALTER TABLE accounts DROP COLUMN algorithm",
        "ALTER TABLE accounts DROP COLUMN digits",
        "ALTER TABLE accounts DROP COLUMN period",
        "ALTER TABLE accounts DROP COLUMN last_step",
    ),
}

VERSION = max(MIGRATIONS)
# The tables the migrations make: in a database others share, one of these names
# without a record means someone else's table, never one to migrate.
TABLES = frozenset({"meta", "accounts", "recovery_codes", "tokens", RECORD})


def migration(target: int, dialect: Dialect) -> list[str]:
    """The statements of migration `target` as `dialect` runs them."""
    return [dialect.sql(statement) for statement in MIGRATIONS[target]]


def upgrade(db: Connection, dialect: Dialect, where: str, create: bool = True, earlier: int = 0) -> None:
    """Bring the database to VERSION within the caller's transaction.

    `earlier`: the version an earlier release recorded its own way, read when there is
    no record (0: none). With create=False a database with no totpd tables raises
    StoreAbsent, and one of a newer schema always raises StoreError.
    """
    tables = {row[0] for row in db.execute(dialect.tables).fetchall()}
    if RECORD in tables:
        found = db.execute(f"SELECT coalesce(max(version), 0) FROM {RECORD}").fetchone()
        version = int(found[0]) if found else 0
    else:
        version = earlier
    if version > VERSION:
        raise StoreError(
            f"{where}: the database has schema version {version}, newer than this totpd ({VERSION}); upgrade totpd"
        )
    if RECORD not in tables:
        if not version and (tables & TABLES if dialect.shared else tables):
            raise StoreError(f"{where}: this {dialect.kind} is not a totpd database: it holds tables but no {RECORD}")
        if not version and not create:
            raise StoreAbsent(f"{where}: no totpd tables in this {dialect.kind}")
        db.execute(dialect.sql(f"CREATE TABLE {RECORD} (version INTEGER PRIMARY KEY, applied {{double}} NOT NULL)"))
        for target in range(1, version + 1):
            _record(db, dialect, target, 0.0)  # applied by an earlier release, when unknown
    if version and version < VERSION:  # an upgrade is news; a new database's making is not
        log.info("%s: upgrading the schema from version %d to %d", where, version, VERSION)
    for target in range(version + 1, VERSION + 1):
        for statement in migration(target, dialect):
            db.execute(statement)
        _record(db, dialect, target, time.time())


def _record(db: Connection, dialect: Dialect, version: int, applied: float) -> None:
    db.execute(dialect.sql(f"INSERT INTO {RECORD} (version, applied) VALUES (?, ?)"), (version, applied))
