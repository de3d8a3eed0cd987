"""The PostgreSQL store (fleet mode): many hosts, one database, the same interface.

Every unit of work is one PostgreSQL transaction (READ COMMITTED) on a connection
from a small pool, run in one of as many worker threads; its future resolves only
after COMMIT has returned. `get` locks the account's row (SELECT ... FOR UPDATE), so
the read-modify-write of a verification (failure counters, lockout, recovery-code
use) is atomic across every host, and `advance_step` is one conditional UPDATE
(... WHERE last_step < step) in that same transaction: of any number of hosts
judging one code at once, exactly one advances the step. A read (`Store.read`) is
its statements alone, in autocommit mode, without a row lock.

Every wait is bounded: connect, pool, lock and statement timeouts, and a watchdog
that answers a unit UNAVAILABLE once the server has left it unanswered for
`database_timeout` seconds, which also covers a server that stopped answering. Every
database failure becomes StoreUnavailable, so the service fails closed. A broken
connection is replaced by the pool; the daemon recovers by itself when the server
returns, and logs one line when it goes away and one when it is back.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import math
import os
import re
import threading
import time
from typing import Callable, TypeVar

import psycopg
import psycopg.conninfo
import psycopg_pool

from ..errors import StoreError, StoreUnavailable
from ..files import private_file_problem
from . import Reader, Store, StoreOptions, Transaction, resolve, schema
from .sql import POSTGRES, SQLReader, SQLTransaction, Statements

T = TypeVar("T")

log = logging.getLogger("totpd")

# pg_advisory_xact_lock key under which daemons migrate and check the key, one at a
# time: the bytes of "totpd" as a number.
MIGRATION_LOCK = int.from_bytes(b"totpd", "big")
STARTUP_TIMEOUT_MS = 60_000  # a migration on a big table may take a while
RECONNECT_GIVE_UP = 10.0  # pool reconnect attempts back off up to this, then start afresh on demand

SQL = Statements(POSTGRES)


class _Unit:
    """A unit of work in flight: its future, and when the server last answered it."""

    __slots__ = ("future", "answered")

    def __init__(self, future: concurrent.futures.Future) -> None:
        self.future = future
        self.answered = time.monotonic()

    def progress(self) -> None:
        self.answered = time.monotonic()


class _Tracked:
    """The connection as a unit sees it: every statement that returns is progress."""

    def __init__(self, conn: psycopg.Connection, unit: _Unit | None) -> None:
        self._conn = conn
        self._unit = unit

    def execute(self, query: str, params: tuple = ()) -> psycopg.Cursor:
        cursor = self._conn.execute(query, params or None)  # type: ignore[arg-type]
        if self._unit is not None:
            self._unit.progress()
        return cursor

    def executemany(self, query: str, rows: list[tuple]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(query, rows)  # type: ignore[arg-type]
        if self._unit is not None:
            self._unit.progress()


# -- connection settings ------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    return re.sub(r"\s+", " ", str(error)).strip() or type(error).__name__


def describe(params: dict[str, str]) -> str:
    """A one-line name of the server for log lines: never the password."""
    shown = [f"{key}={params[key]}" for key in ("host", "hostaddr", "port", "dbname", "user", "service") if params.get(key)]
    return "PostgreSQL " + (" ".join(shown) if shown else "(libpq defaults)")


def read_password_file(path: str) -> str:
    """The first line of `path`, which must not be readable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the database password: {exc.strerror}") from None
    try:
        if problem := private_file_problem(os.fstat(fd), "the database password file"):
            raise StoreError(f"{path}: {problem}")
        with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as handle:
            password = handle.readline().rstrip("\r\n")
    finally:
        os.close(fd)
    if not password:
        raise StoreError(f"{path}: the database password file is empty")
    return password


def connection_settings(database: str, options: StoreOptions) -> tuple[dict[str, str], dict[str, object]]:
    """(the parsed connection string, the keyword arguments every connection adds to it).

    A password in the connection string is refused: configuration files get copied,
    shown and backed up. It comes from `database_password_file` or libpq's own
    PGPASSFILE / ~/.pgpass.
    """
    try:
        params = psycopg.conninfo.conninfo_to_dict(database)
    except psycopg.Error as exc:
        raise StoreError(f"key 'database' is not a valid PostgreSQL connection string: {_one_line(exc)}") from None
    if params.get("password"):
        raise StoreError(
            "key 'database' holds a password in clear; remove it and put it in the file named by"
            " 'database_password_file' (or in a PGPASSFILE)"
        )
    timeout_ms = max(1, int(options.timeout * 1000))
    server_options = " ".join(
        filter(
            None,
            [
                str(params.get("options") or ""),
                f"-c statement_timeout={timeout_ms}",
                f"-c lock_timeout={timeout_ms}",
                # A daemon that hangs mid-transaction must not hold an account's row for long.
                f"-c idle_in_transaction_session_timeout={max(10_000, 5 * timeout_ms)}",
            ],
        )
    )
    kwargs: dict[str, object] = {
        "connect_timeout": max(2, math.ceil(options.timeout)),  # libpq's smallest useful value is 2
        "options": server_options,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
    }
    if not params.get("application_name"):
        kwargs["application_name"] = "totpd"
    if options.password_file:
        kwargs["password"] = read_password_file(options.password_file)
    return params, kwargs


def _startup_kwargs(kwargs: dict[str, object]) -> dict[str, object]:
    startup = dict(kwargs)
    startup["options"] = re.sub(r"(statement_timeout|lock_timeout)=\d+", rf"\1={STARTUP_TIMEOUT_MS}", str(kwargs["options"]))
    return startup


# -- deadlines ------------------------------------------------------------------------


class _Deadlines:
    """One thread that fails a unit with StoreUnavailable once the server has not answered
    it for `timeout` seconds (counted from submission, then from each statement that
    returned: a bulk import of many statements runs on while the server keeps answering).

    The worker may still be blocked on a server that stopped answering; the request
    is answered (UNAVAILABLE, fail closed) regardless. Should that transaction commit
    later, the reply already said no: a code can be spent, never granted twice.
    """

    def __init__(self, timeout: float, expired: Callable[[], StoreUnavailable]) -> None:
        self._timeout = timeout
        self._expired = expired
        self._heap: list[tuple[float, int, _Unit]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pg-deadlines", daemon=True)
        self._thread.start()

    def add(self, unit: _Unit) -> None:
        with self._cond:
            heapq.heappush(self._heap, (unit.answered + self._timeout, next(self._order), unit))
            if self._heap[0][2] is unit:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, _, unit = heapq.heappop(self._heap)
                if unit.future.done():
                    continue
                due = unit.answered + self._timeout
                if due > time.monotonic():  # answered since: wait on
                    heapq.heappush(self._heap, (due, next(self._order), unit))
                    continue
            resolve(unit.future, None, self._expired())


# -- the store -------------------------------------------------------------------------


class PostgresStore(Store):
    def __init__(
        self,
        database: str,
        key_check: Callable[[Transaction], None],
        options: StoreOptions,
        create: bool = True,
    ) -> None:
        self.options = options
        params, self._kwargs = connection_settings(database, options)
        self.name = describe(params)
        self._conninfo = database
        self._closed = False
        self._healthy = True
        self._health_lock = threading.Lock()
        self._connect_error = ""  # why the pool's last connection attempt failed, for the log line
        self._start(key_check, create)
        self._pool = psycopg_pool.ConnectionPool(
            database,
            connection_class=self._connection_class(),
            kwargs=self._kwargs,
            min_size=1,
            max_size=options.pool_size,
            open=False,
            configure=_configure,
            name="totpd",
            timeout=options.timeout,
            reconnect_timeout=RECONNECT_GIVE_UP,
        )
        # The pool's own warnings repeat on every reconnect attempt; the store logs
        # one line when the server goes away and one when it is back.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self._pool.open(wait=False)
        log.info("store: %s (up to %d connections, %g s timeout)", self.name, options.pool_size, options.timeout)
        self._workers = concurrent.futures.ThreadPoolExecutor(options.pool_size, thread_name_prefix="pg-store")
        self._deadlines = _Deadlines(
            options.timeout,
            lambda: self._unavailable(f"no answer within {self.options.timeout:g} s (key 'database_timeout')"),
        )

    def _connection_class(self) -> type[psycopg.Connection]:
        store = self

        class Connection(psycopg.Connection):  # type: ignore[type-arg]
            @classmethod
            def connect(cls, *args, **kwargs):  # type: ignore[no-untyped-def, override]
                try:
                    conn = super().connect(*args, **kwargs)
                except psycopg.Error as exc:
                    store._connect_error = _one_line(exc)
                    raise
                store._connect_error = ""
                return conn

        return Connection

    # -- start-up: migrations and the key check, one daemon at a time ------------------

    def _start(self, key_check: Callable[[Transaction], None], create: bool) -> None:
        try:
            conn = psycopg.connect(self._conninfo, **_startup_kwargs(self._kwargs))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreUnavailable(f"{self.name}: cannot connect: {_one_line(exc)}") from None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                schema.upgrade(_Tracked(conn, None), POSTGRES, self.name, create)
                key_check(SQLTransaction(_Tracked(conn, None), SQL))
            self._warn_about_durability(conn)
        except psycopg.Error as exc:
            raise StoreError(f"{self.name}: cannot prepare the database: {_one_line(exc)}") from None
        finally:
            conn.close()

    def _warn_about_durability(self, conn: psycopg.Connection) -> None:
        """An acknowledged code use must survive a crash: say so when the server won't."""
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')").fetchall())
        if settings.get("fsync") == "off" or settings.get("synchronous_commit") in ("off", "local"):
            log.warning(
                "%s runs with fsync=%s, synchronous_commit=%s: a crash or failover can lose acknowledged code uses"
                " and let a code work twice; see docs/fleet.md",
                self.name, settings.get("fsync"), settings.get("synchronous_commit"),
            )

    # -- units of work --------------------------------------------------------------------

    def submit(self, work: Callable[[Transaction], T]) -> concurrent.futures.Future[T]:
        return self._start_unit(work, read=False)

    def read(self, work: Callable[[Reader], T]) -> concurrent.futures.Future[T]:
        return self._start_unit(work, read=True)

    def _start_unit(self, work: Callable, read: bool) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._closed:
            future.set_exception(StoreUnavailable("the store is closed"))
            return future
        unit = _Unit(future)
        self._deadlines.add(unit)
        self._workers.submit(self._run, work, unit, read)
        return future

    def _run(self, work: Callable, unit: _Unit, read: bool) -> None:
        future = unit.future
        if future.done():  # answered UNAVAILABLE while it waited for a worker: not run at all
            return
        try:
            value = self._attempt(work, unit, read)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
            resolve(future, None, exc)
        else:
            self._mark(healthy=True)
            resolve(future, value, None)

    def _attempt(self, work: Callable, unit: _Unit, read: bool) -> object:
        # A connection that died while idle in the pool (server restarted) fails on its
        # first statement, before anything was committed: the unit is then retried on
        # another connection. A failure during COMMIT is never retried (its outcome is
        # unknown); it is reported, and the request fails closed.
        for _ in range(self.options.pool_size + 2):
            remaining = unit.answered + self.options.timeout - time.monotonic()
            if remaining <= 0 or unit.future.done():
                break
            try:
                conn = self._pool.getconn(timeout=remaining)
            except psycopg_pool.PoolTimeout:
                why = f"cannot connect: {self._connect_error}" if self._connect_error else "no free connection"
                raise self._unavailable(f"{why} (within {self.options.timeout:g} s)") from None
            committing = False
            try:
                unit.progress()
                if read:
                    # Autocommit: each statement one round trip, where BEGIN and COMMIT
                    # (or a READ ONLY transaction) would add two of their own.
                    conn.autocommit = True
                    return work(SQLReader(_Tracked(conn, unit), SQL))
                value = work(SQLTransaction(_Tracked(conn, unit), SQL))
                committing = True
                conn.commit()
                return value
            except psycopg.Error as exc:
                if conn.broken and not committing:
                    continue  # the finally returns the dead connection; the pool replaces it
                what = "the commit failed, so the request fails closed" if committing else "the transaction failed"
                raise self._unavailable(f"{what}: {_one_line(exc)}") from None
            finally:
                self._release(conn)
        raise self._unavailable(f"no answer within {self.options.timeout:g} s (key 'database_timeout')")

    def _release(self, conn: psycopg.Connection) -> None:
        """Back to the pool idle and out of autocommit, or closed (the pool replaces it)."""
        if not conn.broken:
            try:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                if conn.autocommit:
                    conn.autocommit = False
            except psycopg.Error:
                conn.close()
        self._pool.putconn(conn)

    def _unavailable(self, reason: str) -> StoreUnavailable:
        self._mark(healthy=False, reason=reason)
        return StoreUnavailable(f"{self.name}: {reason}")

    def _mark(self, healthy: bool, reason: str = "") -> None:
        with self._health_lock:
            if healthy == self._healthy:
                return
            self._healthy = healthy
        if healthy:
            log.info("%s answers again: verifications are decided normally", self.name)
        else:
            log.error("%s is unavailable (%s): every verification fails closed until it answers", self.name, reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._workers.shutdown(wait=True)
        self._deadlines.close()
        self._pool.close(timeout=self.options.timeout)


def _configure(conn: psycopg.Connection) -> None:
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
