"""Every statement the stores run, written once, and the one Reader and Transaction
that run them over a backend's connection.

The backends differ only in their connection (anything with DB-API `execute` and
`executemany`), their placeholder, their row lock and their byte-order collation:
a `Dialect` names those, and `Statements` builds each backend's SQL from it once, at
import. Booleans go in as Python bools (SQLite stores 0 and 1, as it always has).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Protocol, Sequence

from . import Account, Reader, Transaction

COLUMNS = (
    '"user", secret, algorithm, digits, period, last_step, failures, locked_until, locked, '
    "created, confirmed, pending_secret, pending_algorithm, pending_digits, pending_period"
)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Sequence | None: ...

    def fetchall(self) -> list: ...


class Connection(Protocol):
    def execute(self, query: str, params: Sequence[object] = ...) -> Cursor: ...

    def executemany(self, query: str, rows: Iterable[Sequence[object]]) -> object: ...


@dataclasses.dataclass(frozen=True)
class Dialect:
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    lock_row: str = ""  # appended to a transaction's read of an account
    byte_order: str = ""  # appended to ORDER BY "user" so that names sort by their bytes


class Statements:
    """One backend's SQL, from the text below with `?` placeholders."""

    def __init__(self, dialect: Dialect) -> None:
        def sql(text: str) -> str:
            return text.format(lock_row=dialect.lock_row, byte_order=dialect.byte_order).replace("?", dialect.placeholder)

        self.get = sql(f'SELECT {COLUMNS} FROM accounts WHERE "user" = ?')
        self.get_locked = sql(f'SELECT {COLUMNS} FROM accounts WHERE "user" = ?{{lock_row}}')
        self.put_pending = sql(
            'INSERT INTO accounts ("user", created, pending_secret, pending_algorithm, pending_digits, pending_period)'
            " VALUES (?, ?, ?, ?, ?, ?)"
            ' ON CONFLICT ("user") DO UPDATE SET pending_secret = excluded.pending_secret,'
            " pending_algorithm = excluded.pending_algorithm, pending_digits = excluded.pending_digits,"
            " pending_period = excluded.pending_period"
        )
        self.activate_pending = sql(
            "UPDATE accounts SET secret = pending_secret, algorithm = pending_algorithm, digits = pending_digits,"
            " period = pending_period, last_step = CASE WHEN ? THEN last_step ELSE -1 END, failures = 0,"
            " locked_until = 0, locked = FALSE, confirmed = ?, pending_secret = NULL,"
            " pending_algorithm = NULL, pending_digits = NULL, pending_period = NULL"
            ' WHERE "user" = ? AND pending_secret IS NOT NULL'
        )
        # The one conditional write that makes a code single-use (fleet-wide on PostgreSQL).
        self.advance_step = sql(
            'UPDATE accounts SET last_step = ?, failures = 0, locked_until = 0 WHERE "user" = ? AND last_step < ? AND NOT locked'
        )
        self.set_failures = sql('UPDATE accounts SET failures = ?, locked_until = ?, locked = ? WHERE "user" = ?')
        self.delete_account = sql('DELETE FROM accounts WHERE "user" = ?')
        self.delete_recovery_codes = sql('DELETE FROM recovery_codes WHERE "user" = ?')
        self.recovery_hashes = sql('SELECT id, hash FROM recovery_codes WHERE "user" = ? ORDER BY id')
        self.insert_recovery_code = sql('INSERT INTO recovery_codes ("user", id, hash) VALUES (?, ?, ?)')
        self.use_recovery_code = sql('DELETE FROM recovery_codes WHERE "user" = ? AND id = ?')
        self.count = sql("SELECT count(*) FROM accounts")
        self.page = sql(
            f'SELECT {COLUMNS}, (SELECT count(*) FROM recovery_codes r WHERE r."user" = a."user")'
            ' FROM accounts a ORDER BY "user"{byte_order} LIMIT ? OFFSET ?'
        )
        self.restore = sql(f"INSERT INTO accounts ({COLUMNS}) VALUES ({', '.join('?' * 15)})")
        self.get_meta = sql("SELECT value FROM meta WHERE key = ?")
        self.set_meta = sql("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")


class SQLReader(Reader):
    __slots__ = ("_db", "_sql")

    def __init__(self, db: Connection, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    def get(self, user: str) -> Account | None:
        row = self._db.execute(self._sql.get, (user,)).fetchone()
        return Account.from_row(row) if row else None

    def recovery_hashes(self, user: str) -> list[tuple[int, str]]:
        return [tuple(row) for row in self._db.execute(self._sql.recovery_hashes, (user,)).fetchall()]  # type: ignore[misc]

    def count(self) -> int:
        row = self._db.execute(self._sql.count).fetchone()
        return int(row[0]) if row else 0

    def page(self, offset: int, limit: int) -> list[tuple[Account, int]]:
        rows = self._db.execute(self._sql.page, (limit, offset)).fetchall()
        return [(Account.from_row(row), int(row[15])) for row in rows]

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute(self._sql.get_meta, (key,)).fetchone()
        return bytes(row[0]) if row else None


class SQLTransaction(SQLReader, Transaction):
    __slots__ = ()

    def get(self, user: str) -> Account | None:
        row = self._db.execute(self._sql.get_locked, (user,)).fetchone()
        return Account.from_row(row) if row else None

    def put_pending(self, user: str, sealed: bytes, algorithm: str, digits: int, period: int, now: float) -> None:
        self._db.execute(self._sql.put_pending, (user, now, sealed, algorithm, digits, period))

    def activate_pending(self, user: str, now: float, keep_replay_state: bool = False) -> bool:
        return self._db.execute(self._sql.activate_pending, (bool(keep_replay_state), now, user)).rowcount == 1

    def advance_step(self, user: str, step: int) -> bool:
        return self._db.execute(self._sql.advance_step, (step, user, step)).rowcount == 1

    def set_failures(self, user: str, failures: int, locked_until: float, locked: bool) -> None:
        self._db.execute(self._sql.set_failures, (failures, locked_until, bool(locked), user))

    def delete(self, user: str) -> bool:
        self._db.execute(self._sql.delete_recovery_codes, (user,))
        return self._db.execute(self._sql.delete_account, (user,)).rowcount == 1

    def replace_recovery_codes(self, user: str, hashes: list[str]) -> None:
        self._db.execute(self._sql.delete_recovery_codes, (user,))
        self._insert_recovery_codes(user, list(enumerate(hashes)))

    def use_recovery_code(self, user: str, code_id: int) -> bool:
        return self._db.execute(self._sql.use_recovery_code, (user, code_id)).rowcount == 1

    def set_meta(self, key: str, value: bytes) -> None:
        self._db.execute(self._sql.set_meta, (key, value))

    def restore(self, account: Account, recovery: list[tuple[int, str]]) -> None:
        self.delete(account.user)
        self._db.execute(self._sql.restore, account._replace(locked=bool(account.locked)))
        self._insert_recovery_codes(account.user, recovery)

    def _insert_recovery_codes(self, user: str, codes: list[tuple[int, str]]) -> None:
        if codes:
            self._db.executemany(self._sql.insert_recovery_code, [(user, code_id, value) for code_id, value in codes])
