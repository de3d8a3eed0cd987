"""The store: every account's durable state, behind one small interface.

The service never writes SQL. It hands the store (through the `Batcher`) a
function of a `Transaction`; the backend runs it atomically and resolves the
returned future only once the transaction is durably committed (so a reply that
depends on it, an OK above all, can never go out before its state is safe), or a
function of a `Reader`, run with no transaction at all. Both backends (SQLite, the
embedded default; PostgreSQL, fleet mode) run the same SQL (`sql.py`) on the same
tables (`schema.py`) behind the same `Store` interface, and the same tests run
against both.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import re
from typing import TYPE_CHECKING, Callable, NamedTuple, TypeVar

from ..errors import BackendMissing, StoreAbsent, StoreError

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")


class Token(NamedTuple):
    """One token of an account: its own secret, parameters and replay state."""

    name: str
    type: str  # "totp" or "hotp"
    secret: bytes  # sealed
    algorithm: str
    digits: int
    period: int  # TOTP only
    # The last accepted moving factor: the time step (TOTP) or the counter value (HOTP);
    # anything at or below it is a replay. -1: none yet.
    last_step: int
    skew: int  # TOTP: the learned clock offset, in steps
    added: float
    last_used: float | None


TOKEN_FIELDS = len(Token._fields)


class Account(NamedTuple):
    """One account as stored: a named tuple, the cheapest record to build, since every
    verification builds one (docs/performance.md). Throttling, lockout and recovery
    codes are the account's; secrets and replay state are its tokens'."""

    user: str
    failures: int
    locked_until: float  # backoff: no attempt is judged before this time
    locked: bool  # hard lock: only an admin's unlock lifts it
    created: float
    confirmed: float | None
    pending_secret: bytes | None  # a token waiting for its first code (enroll, token add)
    pending_algorithm: str | None
    pending_digits: int | None
    pending_period: int | None
    pending_token: str | None
    pending_type: str | None
    pending_last_step: int | None
    pending_replaces: bool  # confirming the pending token replaces every other (enroll)
    tokens: tuple[Token, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.tokens)

    def token(self, name: str) -> Token | None:
        return next((token for token in self.tokens if token.name == name), None)

    @classmethod
    def from_rows(cls, rows: list) -> "Account":
        """An account from the rows of the join both backends select: the account's
        columns, then one token's (NULL for an account with none)."""
        row = rows[0]
        tokens = tuple(Token._make(r[ACCOUNT_FIELDS : ACCOUNT_FIELDS + TOKEN_FIELDS]) for r in rows if r[ACCOUNT_FIELDS] is not None)
        return cls._make((*row[:3], bool(row[3]), *row[4:13], bool(row[13]), tokens))


ACCOUNT_FIELDS = len(Account._fields) - 1


class Reader(abc.ABC):
    """What a read-only unit may do (`Store.read`): each read sees the latest commit."""

    __slots__ = ()

    @abc.abstractmethod
    def get(self, user: str) -> Account | None: ...

    @abc.abstractmethod
    def recovery_hashes(self, user: str) -> list[tuple[int, str]]: ...

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def get_meta(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def page(self, offset: int, limit: int) -> list[tuple[Account, int]]:
        """Accounts ordered by name, with their tokens, each with its number of recovery codes left."""


class Transaction(Reader):
    """What a unit of work may do. Every method sees the transaction's own writes, and
    `get` holds the account's row until the commit (PostgreSQL: FOR UPDATE)."""

    __slots__ = ()

    @abc.abstractmethod
    def put_pending(
        self, user: str, sealed: bytes, algorithm: str, digits: int, period: int, now: float,
        token: str = "default", kind: str = "totp", last_step: int = -1, replaces: bool = True,
    ) -> None:
        """Create the account if needed and set (or replace) its pending token: `replaces`,
        it will replace every token (enroll); else it is added beside them (token add)."""

    @abc.abstractmethod
    def activate_pending(self, user: str, now: float, replay_floor: int = -1) -> bool:
        """Make the pending token active (replacing the others if it was to); failure
        state starts afresh. Its replay state starts at `replay_floor` if that is later
        (the same secret enrolled again: its used codes stay used)."""

    @abc.abstractmethod
    def advance_step(self, user: str, token: str, step: int, skew: int = 0, now: float = 0.0) -> bool:
        """Record `step` as the token's last accepted one if and only if it is later
        (and its clock offset `skew`, and when it was used). True if it was."""

    @abc.abstractmethod
    def add_token(self, user: str, token: Token) -> None:
        """Write one token as given, replacing any of that name (import, restore)."""

    @abc.abstractmethod
    def remove_token(self, user: str, name: str) -> bool: ...

    @abc.abstractmethod
    def set_failures(self, user: str, failures: int, locked_until: float, locked: bool) -> None: ...

    @abc.abstractmethod
    def delete(self, user: str) -> bool: ...

    @abc.abstractmethod
    def replace_recovery_codes(self, user: str, hashes: list[str]) -> None: ...

    @abc.abstractmethod
    def use_recovery_code(self, user: str, code_id: int) -> bool:
        """Delete one recovery code; False if it was already gone (used concurrently)."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: bytes) -> None: ...

    @abc.abstractmethod
    def restore(self, account: Account, recovery: list[tuple[int, str]]) -> None:
        """Write an account exactly as given, with its recovery-code hashes, replacing any
        existing one (`totpctl migrate` between stores; never used by the service)."""


# (index of the unit in its batch, its value, or the exception it raised)
Outcome = tuple[int, object, BaseException | None]
# Where a read's value, or the exception it raised (then None), goes.
Settle = Callable[[object, BaseException | None], None]


class Store(abc.ABC):
    """One backend. A unit of work is a function of a `Transaction` (or, for `read`, of a
    `Reader`) with no effect outside it: a batch may run a unit more than once, and only
    the run that is committed counts."""

    @abc.abstractmethod
    def submit(self, work: Callable[[Transaction], T]) -> concurrent.futures.Future[T]:
        """Run `work` in one transaction; the future resolves after the commit."""

    def submit_batch(self, units: list[Callable[[Transaction], object]], done: Callable[[list[Outcome]], None]) -> None:
        """Run each unit as `submit` would and report through `done`, from any thread.

        `done` receives (index, value, error) triples, all at once or in several calls,
        each only after its unit's commit. This default answers unit by unit; the SQLite
        store runs a whole batch in one transaction and answers it with one call.
        """
        for index, work in enumerate(units):
            self.submit(work).add_done_callback(lambda future, index=index: done([_outcome(index, future)]))

    def run_batch_here(self, units: list[Callable[[Transaction], object]], done: Callable[[list[Outcome]], None]) -> bool:
        """Run and commit the batch in the calling thread and call `done` before returning
        True; False (nothing done) if this store cannot now, and the caller uses
        `submit_batch`. This default never can."""
        return False

    @abc.abstractmethod
    def read(self, work: Callable[[Reader], T]) -> concurrent.futures.Future[T]:
        """Run read-only `work` outside any write transaction, with no commit."""

    def read_here(self, work: Callable[[Reader], object], done: Settle) -> bool:
        """Run read-only `work` in the calling thread and call `done` before returning True;
        False (nothing done) if this store cannot now, and the caller uses `read`. This
        default never can."""
        return False

    @abc.abstractmethod
    def close(self) -> None: ...

    def run(self, work: Callable[[Transaction], T]) -> T:
        return self.submit(work).result()


def resolve(future: concurrent.futures.Future | asyncio.Future, value: object, error: BaseException | None) -> None:
    """Settle a future (of either kind) with a unit's value or the exception it raised,
    unless it is settled already: cancelled by its caller, or answered by a deadline."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:  # another thread settled it meanwhile
        pass


def _outcome(index: int, future: concurrent.futures.Future) -> Outcome:
    error = future.exception()
    return (index, None if error else future.result(), error)


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """The config keys `database_*` (PostgreSQL only), and how long-lived the store is."""

    password_file: str = ""
    pool_size: int = 4
    timeout: float = 2.0
    # SQLite: zero-fill a new write-ahead log (the daemon, which commits for as long
    # as it runs; a short-lived tool would only pay for it).
    prefill_wal: bool = False


_LIBPQ_KEYWORD = re.compile(r"^\s*(host|hostaddr|port|dbname|user|service|sslmode|options|application_name)\s*=")


def is_postgres(database: str) -> bool:
    """Whether `database` names PostgreSQL (a URI or libpq keywords) rather than a SQLite path."""
    if database.startswith(("postgresql://", "postgres://")):
        return True
    return bool(_LIBPQ_KEYWORD.match(database))


def open_store(
    database: str,
    key_check: Callable[[Transaction], None],
    options: StoreOptions | None = None,
    create: bool = True,
) -> Store:
    """Open the backend named by `database` and check the master key against it.

    `key_check` runs as the first unit of work, once migrations are applied (for
    PostgreSQL, under the same advisory lock, so daemons starting together agree on
    the key). With create=False a missing store raises StoreAbsent instead of being made.
    psycopg is imported only here and only for PostgreSQL: SQLite installs need none.
    """
    if is_postgres(database):
        return _postgres_store()(database, key_check, options or StoreOptions(), create=create)
    from .sqlite import SQLiteStore

    return SQLiteStore(database, key_check, create=create, prefill_wal=(options or StoreOptions()).prefill_wal)


def check_backend(database: str) -> None:
    """Raise BackendMissing now if `database` needs a driver that is not installed, before
    anything is created for it (a master key above all)."""
    if is_postgres(database):
        _postgres_store()


def _postgres_store() -> type[Store]:
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        # A module of psycopg's missing, or psycopg itself refusing (no libpq): never
        # an unrelated ImportError, which is a bug and keeps its traceback.
        if exc.name and not exc.name.startswith("psycopg"):
            raise
        raise BackendMissing(
            f"database is PostgreSQL, which needs psycopg and psycopg_pool ({exc}):"
            " apt install python3-psycopg python3-psycopg-pool"
        ) from None
    return PostgresStore


from .batcher import Batcher  # noqa: E402  (built on the interface above)
