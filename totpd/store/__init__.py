"""The store: every account's durable state, behind one small interface.

The service never writes SQL. It hands the store a function of a `Transaction`;
the backend runs it atomically and resolves the returned future only once the
transaction is durably committed (so a reply that depends on it, an OK above all,
can never go out before its state is safe). Both backends (SQLite, the embedded
default; PostgreSQL, fleet mode) implement the same `Transaction` methods.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
from typing import Callable, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Account:
    user: str
    secret: bytes | None  # sealed; None while only a pending enrollment exists
    algorithm: str
    digits: int
    period: int
    last_step: int
    failures: int
    locked_until: float  # backoff: no attempt is judged before this time
    locked: bool  # hard lock: only an admin's unlock lifts it
    created: float
    confirmed: float | None
    pending_secret: bytes | None
    pending_algorithm: str | None
    pending_digits: int | None
    pending_period: int | None

    @property
    def active(self) -> bool:
        return self.secret is not None


class Transaction(abc.ABC):
    """What a unit of work may do. Every method sees the transaction's own writes."""

    @abc.abstractmethod
    def get(self, user: str) -> Account | None: ...

    @abc.abstractmethod
    def put_pending(self, user: str, sealed: bytes, algorithm: str, digits: int, period: int, now: float) -> None:
        """Create the account if needed and set (or replace) its pending enrollment."""

    @abc.abstractmethod
    def activate_pending(self, user: str, now: float) -> bool:
        """Make the pending enrollment the active one; replay and failure state start afresh."""

    @abc.abstractmethod
    def advance_step(self, user: str, step: int) -> bool:
        """Record `step` as the last accepted one if and only if it is later. True if it was."""

    @abc.abstractmethod
    def set_failures(self, user: str, failures: int, locked_until: float, locked: bool) -> None: ...

    @abc.abstractmethod
    def delete(self, user: str) -> bool: ...

    @abc.abstractmethod
    def recovery_hashes(self, user: str) -> list[tuple[int, str]]: ...

    @abc.abstractmethod
    def replace_recovery_codes(self, user: str, hashes: list[str]) -> None: ...

    @abc.abstractmethod
    def use_recovery_code(self, user: str, code_id: int) -> bool:
        """Delete one recovery code; False if it was already gone (used concurrently)."""

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def get_meta(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: bytes) -> None: ...

    @abc.abstractmethod
    def page(self, offset: int, limit: int) -> list[tuple[Account, int]]:
        """Accounts ordered by name, each with its number of recovery codes left."""


class Store(abc.ABC):
    @abc.abstractmethod
    def submit(self, work: Callable[[Transaction], T]) -> concurrent.futures.Future[T]:
        """Run `work` in one transaction; the future resolves after the commit."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def run(self, work: Callable[[Transaction], T]) -> T:
        return self.submit(work).result()


def open_store(database: str, key_check: Callable[[Transaction], None]) -> Store:
    """Open the backend named by `database` and check the master key against it."""
    from .sqlite import SQLiteStore

    return SQLiteStore(database, key_check)
