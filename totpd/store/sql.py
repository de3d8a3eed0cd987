"""Every statement the stores run, written once, and the one Reader and Transaction
that run them over a backend's connection.

The backends differ only in their connection (anything with DB-API `execute` and
`executemany`), their placeholder, their row lock, their byte-order collation, the
names of a few column types and how to list tables: a `Dialect` names those (the
two are side by side below), and `Statements` builds each backend's SQL from it
once, at import; the schema (`schema.py`) is built from it the same way. Booleans go
in as Python bools (SQLite stores 0 and 1, as it always has).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Protocol, Sequence

from . import Account, Reader, Token, Transaction

ACCOUNT_COLUMNS = (
    '"user", failures, locked_until, locked, created, confirmed, pending_secret, pending_algorithm, pending_digits,'
    " pending_period, pending_token, pending_type, pending_last_step, pending_replaces"
)
TOKEN_COLUMNS = "name, type, secret, algorithm, digits, period, last_step, skew, added, last_used"
# An account and its tokens in one statement: one row per token (one with NULLs for none).
JOINED = (
    ", ".join(f'a.{column.strip()}' for column in ACCOUNT_COLUMNS.split(","))
    + ", "
    + ", ".join(f"t.{column.strip()}" for column in TOKEN_COLUMNS.split(","))
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
    kind: str  # what one database is called in an error: "SQLite file", "database"
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    lock_row: str  # appended to a transaction's read of an account (table alias a)
    byte_order: str  # appended to ORDER BY "user" so that names sort by their bytes
    # Column types, each named in the schema's text by its PostgreSQL name.
    blob: str
    bigint: str
    double: str
    boolean: str
    tables: str  # a query: the names of the tables that an unqualified name finds (PostgreSQL: its search_path)
    shared: bool  # others' tables may live beside totpd's (a PostgreSQL database may be shared)

    def sql(self, text: str) -> str:
        """`text` with its {fields} filled in from this dialect and its `?` placeholders made this backend's."""
        return text.format(**dataclasses.asdict(self)).replace("?", self.placeholder)


# A SQLite file is totpd's alone. BINARY, SQLite's default collation, is byte order;
# one writer at a time (BEGIN IMMEDIATE) makes a row lock needless.
SQLITE = Dialect(
    kind="SQLite file", placeholder="?", lock_row="", byte_order="",
    blob="BLOB", bigint="INTEGER", double="REAL", boolean="INTEGER",
    tables="SELECT name FROM sqlite_master WHERE type = 'table'", shared=False,
)
# FOR UPDATE: whatever a unit decides from an account's row, no other host decides
# from the same version of it before the unit's transaction ends. COLLATE "C": the
# same byte order as SQLite, whatever the database's locale.
POSTGRES = Dialect(
    kind="database", placeholder="%s", lock_row=" FOR UPDATE OF a", byte_order=' COLLATE "C"',
    blob="BYTEA", bigint="BIGINT", double="DOUBLE PRECISION", boolean="BOOLEAN",
    tables="SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND pg_table_is_visible(oid)"
    " AND relnamespace <> 'pg_catalog'::regnamespace",
    shared=True,
)


class Statements:
    """One backend's SQL, from the text below with `?` placeholders."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.sql

        self.get = sql(
            f'SELECT {JOINED} FROM accounts a LEFT JOIN tokens t ON t."user" = a."user"'
            ' WHERE a."user" = ? ORDER BY t.added, t.name'
        )
        self.get_locked = sql(self.get + "{lock_row}")
        self.put_pending = sql(
            'INSERT INTO accounts ("user", created, pending_secret, pending_algorithm, pending_digits, pending_period,'
            " pending_token, pending_type, pending_last_step, pending_replaces) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ' ON CONFLICT ("user") DO UPDATE SET pending_secret = excluded.pending_secret,'
            " pending_algorithm = excluded.pending_algorithm, pending_digits = excluded.pending_digits,"
            " pending_period = excluded.pending_period, pending_token = excluded.pending_token,"
            " pending_type = excluded.pending_type, pending_last_step = excluded.pending_last_step,"
            " pending_replaces = excluded.pending_replaces"
        )
        # Activation: drop the tokens a replacing enrollment replaces, write the pending
        # token (its replay state at least the floor given), then clear the pending one.
        self.drop_replaced = sql(
            'DELETE FROM tokens WHERE "user" = ? AND EXISTS (SELECT 1 FROM accounts a WHERE a."user" = tokens."user"'
            " AND a.pending_secret IS NOT NULL AND a.pending_replaces AND a.pending_token <> tokens.name)"
        )
        self.insert_pending = sql(
            f'INSERT INTO tokens ("user", {TOKEN_COLUMNS}) SELECT "user", pending_token, pending_type, pending_secret,'
            " pending_algorithm, pending_digits, pending_period,"
            " CASE WHEN pending_last_step < ? THEN ? ELSE pending_last_step END, 0, ?, NULL"
            ' FROM accounts WHERE "user" = ? AND pending_secret IS NOT NULL'
            ' ON CONFLICT ("user", name) DO UPDATE SET type = excluded.type, secret = excluded.secret,'
            " algorithm = excluded.algorithm, digits = excluded.digits, period = excluded.period,"
            " last_step = excluded.last_step, skew = 0, added = excluded.added, last_used = NULL"
        )
        self.activate_pending = sql(
            "UPDATE accounts SET failures = 0, locked_until = 0, locked = FALSE, confirmed = ?, pending_secret = NULL,"
            " pending_algorithm = NULL, pending_digits = NULL, pending_period = NULL, pending_token = NULL,"
            " pending_type = NULL, pending_last_step = NULL, pending_replaces = FALSE"
            ' WHERE "user" = ? AND pending_secret IS NOT NULL'
        )
        # The one conditional write that makes a code single-use per token (fleet-wide on
        # PostgreSQL); the judging transaction holds the account's row meanwhile.
        self.advance_step = sql(
            'UPDATE tokens SET last_step = ?, skew = ?, last_used = ? WHERE "user" = ? AND name = ? AND last_step < ?'
            ' AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a."user" = tokens."user" AND a.locked)'
        )
        self.set_failures = sql('UPDATE accounts SET failures = ?, locked_until = ?, locked = ? WHERE "user" = ?')
        self.delete_account = sql('DELETE FROM accounts WHERE "user" = ?')
        self.delete_tokens = sql('DELETE FROM tokens WHERE "user" = ?')
        self.delete_token = sql('DELETE FROM tokens WHERE "user" = ? AND name = ?')
        self.put_token = sql(
            f'INSERT INTO tokens ("user", {TOKEN_COLUMNS}) VALUES ({", ".join("?" * 11)})'
            ' ON CONFLICT ("user", name) DO UPDATE SET type = excluded.type, secret = excluded.secret,'
            " algorithm = excluded.algorithm, digits = excluded.digits, period = excluded.period,"
            " last_step = excluded.last_step, skew = excluded.skew, added = excluded.added, last_used = excluded.last_used"
        )
        self.delete_recovery_codes = sql('DELETE FROM recovery_codes WHERE "user" = ?')
        self.recovery_hashes = sql('SELECT id, hash FROM recovery_codes WHERE "user" = ? ORDER BY id')
        self.insert_recovery_code = sql('INSERT INTO recovery_codes ("user", id, hash) VALUES (?, ?, ?)')
        self.use_recovery_code = sql('DELETE FROM recovery_codes WHERE "user" = ? AND id = ?')
        self.count = sql("SELECT count(*) FROM accounts")
        self.page = sql(
            f'SELECT {JOINED}, (SELECT count(*) FROM recovery_codes r WHERE r."user" = a."user")'
            f' FROM (SELECT * FROM accounts ORDER BY "user"{{byte_order}} LIMIT ? OFFSET ?) a'
            ' LEFT JOIN tokens t ON t."user" = a."user" ORDER BY a."user"{byte_order}, t.added, t.name'
        )
        self.restore = sql(f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ({', '.join('?' * 14)})")
        self.get_meta = sql("SELECT value FROM meta WHERE key = ?")
        self.set_meta = sql("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")


class SQLReader(Reader):
    __slots__ = ("_db", "_sql")

    def __init__(self, db: Connection, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    def get(self, user: str) -> Account | None:
        rows = self._db.execute(self._sql.get, (user,)).fetchall()
        return Account.from_rows(rows) if rows else None

    def recovery_hashes(self, user: str) -> list[tuple[int, str]]:
        return [tuple(row) for row in self._db.execute(self._sql.recovery_hashes, (user,)).fetchall()]  # type: ignore[misc]

    def count(self) -> int:
        row = self._db.execute(self._sql.count).fetchone()
        return int(row[0]) if row else 0

    def page(self, offset: int, limit: int) -> list[tuple[Account, int]]:
        rows = self._db.execute(self._sql.page, (limit, offset)).fetchall()
        accounts: list[tuple[Account, int]] = []
        first = 0
        for index in range(1, len(rows) + 1):
            if index == len(rows) or rows[index][0] != rows[first][0]:
                accounts.append((Account.from_rows(rows[first:index]), int(rows[first][-1])))
                first = index
        return accounts

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute(self._sql.get_meta, (key,)).fetchone()
        return bytes(row[0]) if row else None


class SQLTransaction(SQLReader, Transaction):
    __slots__ = ()

    def get(self, user: str) -> Account | None:
        rows = self._db.execute(self._sql.get_locked, (user,)).fetchall()
        return Account.from_rows(rows) if rows else None

    def put_pending(
        self, user: str, sealed: bytes, algorithm: str, digits: int, period: int, now: float,
        token: str = "default", kind: str = "totp", last_step: int = -1, replaces: bool = True,
    ) -> None:
        self._db.execute(
            self._sql.put_pending, (user, now, sealed, algorithm, digits, period, token, kind, last_step, bool(replaces))
        )

    def activate_pending(self, user: str, now: float, replay_floor: int = -1) -> bool:
        self._db.execute(self._sql.drop_replaced, (user,))
        self._db.execute(self._sql.insert_pending, (replay_floor, replay_floor, now, user))
        return self._db.execute(self._sql.activate_pending, (now, user)).rowcount == 1

    def advance_step(self, user: str, token: str, step: int, skew: int = 0, now: float = 0.0) -> bool:
        return self._db.execute(self._sql.advance_step, (step, skew, now or None, user, token, step)).rowcount == 1

    def add_token(self, user: str, token: Token) -> None:
        self._db.execute(self._sql.put_token, (user, *token))

    def remove_token(self, user: str, name: str) -> bool:
        return self._db.execute(self._sql.delete_token, (user, name)).rowcount == 1

    def set_failures(self, user: str, failures: int, locked_until: float, locked: bool) -> None:
        self._db.execute(self._sql.set_failures, (failures, locked_until, bool(locked), user))

    def delete(self, user: str) -> bool:
        self._db.execute(self._sql.delete_recovery_codes, (user,))
        self._db.execute(self._sql.delete_tokens, (user,))
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
        self._db.execute(self._sql.restore, tuple(account._replace(locked=bool(account.locked)))[:-1])
        for token in account.tokens:
            self.add_token(account.user, token)
        self._insert_recovery_codes(account.user, recovery)

    def _insert_recovery_codes(self, user: str, codes: list[tuple[int, str]]) -> None:
        if codes:
            self._db.executemany(self._sql.insert_recovery_code, [(user, code_id, value) for code_id, value in codes])
