"""The embedded SQLite store (WAL, synchronous=FULL) with group commit.

One connection, used by the event loop's thread for its batches and reads, or by
the store's own thread for work submitted from anywhere else (start-up, tools),
never by both at once. A batch's units run in one transaction with no savepoint
each, and it commits once (one fsync for the whole batch) before any of them is
answered. A unit that raises has the batch rolled back and run again without it,
every other unit in a savepoint of its own this time, so that a second unit that
raises costs no third run. A commit that fails (full disk, I/O error) fails every
unit of the batch, so no reply ever claims state that was not written. A read is
one statement in SQLite's autocommit mode: no transaction, no commit.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import sqlite3
import stat
import threading
from typing import Callable, NamedTuple, TypeVar

from ..errors import StoreAbsent, StoreError, StoreUnavailable
from ..files import directory_problem, parent, private_file_problem
from . import Outcome, Reader, Settle, Store, Transaction, resolve, schema
from .sql import SQLITE, SQLReader, SQLTransaction, Statements

T = TypeVar("T")

log = logging.getLogger("totpd")

MAX_BATCH = 512
# A new write-ahead log is zero-filled to this many frames (wal_autocheckpoint's 1000
# pages, and room for the transaction that crosses it) of a 4 KiB page: _prefill_wal.
WAL_PREFILL_BYTES = 32 + 1100 * (4096 + 24)

SQL = Statements(SQLITE)
# Earlier releases kept the schema's version in PRAGMA user_version; once it is in the
# record (schema.py), user_version says a version none of them knows, so that one of
# them refuses the file ("newer than this totpd") instead of misreading it.
EARLIER_RELEASES_REFUSE = 1_000_000


def _full_hint(path: str, exc: sqlite3.Error) -> str:
    """Say that the disk is full when it is: SQLite reports some writes that found no
    space as a "disk I/O error"."""
    try:
        full = "full" not in str(exc) and os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0
    except OSError:
        return ""
    return "; the file system it is on is full" if full else ""


def _create_private_file(path: str) -> None:
    """Create the database file 0600 before SQLite does, so it is never briefly readable."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the database: {exc.strerror}") from None
    os.close(fd)


def _prefill_wal(path: str) -> None:
    """Zero-fill a missing or empty write-ahead log.

    SQLite appends to its log until a checkpoint lets it start over at the front, and
    deletes the log when the last connection closes, so a daemon starts with an empty
    one. An append changes the file's size: each commit's fdatasync then also commits
    the file system's journal, about twice the cost of syncing blocks that already
    exist (docs/performance.md, "Second round"). PostgreSQL zero-fills its WAL segments
    for the same reason. With the log empty (no frames, as after a TRUNCATE
    checkpoint), SQLite's next transaction writes a new header at the front and its
    frames after it, over the zeros, which never pass as frames (they fail the
    header's salt and checksum). A log that holds frames is SQLite's and is never
    touched; a full disk leaves the log empty, as before.
    """
    wal = path + "-wal"
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(wal, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            info = os.lstat(wal)
            if info.st_size != 0 or not stat.S_ISREG(info.st_mode):
                return
            fd = os.open(wal, flags)
        except OSError:
            return  # SQLite reports what is wrong with it
    except OSError:
        return
    try:
        zeros = bytes(1 << 20)
        left = WAL_PREFILL_BYTES
        while left > 0:
            left -= os.write(fd, zeros[: min(left, len(zeros))])
        os.fsync(fd)
    except OSError as exc:
        log.warning("%s: cannot preallocate the write-ahead log (%s); commits will cost more", wal, exc.strerror)
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
    finally:
        os.close(fd)


class _Job(NamedTuple):
    """Work for the store's thread: a batch of units, or one read (`units` of one)."""

    units: list[Callable]
    done: Callable[[list[Outcome]], None]
    read: bool = False


class _Failed(Exception):
    """The batch's transaction is gone (BEGIN, COMMIT or SQLite itself rolled it back):
    every unit gets `error`."""

    def __init__(self, error: StoreUnavailable) -> None:
        self.error = error


def _resolving(future: concurrent.futures.Future) -> Callable[[list[Outcome]], None]:
    """A job's `done` that settles `future` with its one unit's outcome."""
    return lambda outcomes: resolve(future, *outcomes[0][1:])


def _answer(done: Callable[[list[Outcome]], None], outcomes: list[Outcome]) -> None:
    try:
        done(outcomes)
    except Exception:  # a caller's callback must not stop the store thread
        log.exception("a store caller's callback failed")


class SQLiteStore(Store):
    def __init__(
        self, path: str, key_check: Callable[[Transaction], None], create: bool = True, prefill_wal: bool = False
    ) -> None:
        """`prefill_wal`: for the daemon, which commits for as long as it runs (_prefill_wal)."""
        self.path = path
        self._prefill = prefill_wal
        if not create and not os.path.exists(path):
            raise StoreAbsent(f"{path}: no such database")
        if problem := directory_problem(parent(path), "the database"):
            raise StoreError(problem)
        _create_private_file(path)
        if problem := private_file_problem(os.stat(path), "the database"):
            raise StoreError(f"{path}: {problem}")
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Held by whoever uses the connection: the store thread for a job, or the
        # loop's thread for a batch (from its BEGIN to its COMMIT) or a read.
        self._conn_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started, key_check, create), name="sqlite-store", daemon=True
        )
        self._thread.start()
        started.result()  # re-raises an error from opening, migrating or the key check

    # -- opening -------------------------------------------------------------------------

    def _open(self, create: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            self._check_integrity(conn)
            self._migrate(conn, create)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}{_full_hint(self.path, exc)}") from None
        return conn

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """Before anything is read from the tables: the schema's record above all."""
        try:
            integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.OperationalError:
            raise  # cannot read it at all (a full disk, an I/O error): _open says which
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: the database is corrupt: {exc}") from None
        if integrity != "ok":
            raise StoreError(f"{self.path}: the database is corrupt: {integrity}")

    def _start_wal(self, conn: sqlite3.Connection) -> None:
        """Checkpoint everything into the database, empty the log, then preallocate it
        (_prefill_wal). Done here rather than before connecting: SQLite deletes a log
        it finds beside a database that is not yet in WAL mode (a new one)."""
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return
        if not busy:
            _prefill_wal(self.path)

    def _migrate(self, conn: sqlite3.Connection, create: bool) -> None:
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; another waits, then finds it done
        try:
            earlier = conn.execute("PRAGMA user_version").fetchone()[0]
            schema.upgrade(conn, SQLITE, self.path, create, earlier=earlier)
            if earlier != EARLIER_RELEASES_REFUSE:
                conn.execute(f"PRAGMA user_version = {EARLIER_RELEASES_REFUSE}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT (a full disk) has already rolled back
                conn.execute("ROLLBACK")
            raise

    # -- the store thread ------------------------------------------------------------

    def _serve(
        self, started: concurrent.futures.Future[None], key_check: Callable[[Transaction], None], create: bool
    ) -> None:
        try:
            conn = self._open(create)
            if self._prefill:
                self._start_wal(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of __init__
            started.set_exception(exc)
            return
        self._conn = conn
        resolve(started, *self._execute(conn, [key_check])[0][1:])
        if started.exception() is not None:
            conn.close()
            return
        try:
            while (job := self._queue.get()) is not None:
                jobs, size = [job], len(job.units)
                while size < MAX_BATCH:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        self._queue.put(None)
                        break
                    jobs.append(job)
                    size += len(job.units)
                with self._conn_lock:  # a batch or read of the loop's thread holds it until it is done
                    self._run_jobs(conn, jobs)
        finally:
            conn.close()

    def _run_jobs(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        """Every batch's units in one transaction, each answered after the commit; then the
        reads, which so see every write queued before them."""
        batches = [job for job in jobs if not job.read]
        if batches:
            outcomes = self._execute(conn, [work for job in batches for work in job.units])
            first = 0
            for job in batches:
                mine = outcomes[first : first + len(job.units)]
                _answer(job.done, [(index - first, value, error) for index, value, error in mine])
                first += len(job.units)
        for job in jobs:
            if job.read:
                _answer(job.done, [(0, *self._read(conn, job.units[0]))])

    # -- a batch, a read ----------------------------------------------------------------

    def _execute(self, conn: sqlite3.Connection, units: list[Callable[[Transaction], object]]) -> list[Outcome]:
        """Run the units in one transaction and commit once: every unit's outcome."""
        failed: dict[int, BaseException] = {}
        try:
            values = self._attempt(conn, units, failed, savepoints=False)
            if values is None:  # a unit raised: once more without it (the module's docstring)
                values = self._attempt(conn, units, failed, savepoints=True)
                assert values is not None
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise _Failed(StoreUnavailable(f"{self.path}: cannot commit: {exc}")) from None
        except _Failed as failure:
            return [(index, None, failure.error) for index in range(len(units))]
        return [(index, None, failed[index]) if index in failed else (index, values[index], None) for index in range(len(units))]

    def _attempt(
        self,
        conn: sqlite3.Connection,
        units: list[Callable[[Transaction], object]],
        failed: dict[int, BaseException],
        savepoints: bool,
    ) -> dict[int, object] | None:
        """One run of the units not `failed` yet, in a new transaction left open for the
        COMMIT: their values, or None once one raised (added to `failed`, the transaction
        rolled back). With `savepoints`, one that raises is rolled back alone instead."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _Failed(StoreUnavailable(f"{self.path}: cannot start a transaction: {exc}")) from None
        tx = SQLTransaction(conn, SQL)
        values: dict[int, object] = {}
        for index, work in enumerate(units):
            if index in failed:
                continue
            try:
                if savepoints:
                    conn.execute("SAVEPOINT unit")
                values[index] = work(tx)
                if savepoints:
                    conn.execute("RELEASE unit")
            except BaseException as exc:  # noqa: BLE001 - handed to the unit's caller
                failed[index] = StoreUnavailable(f"{self.path}: {exc}") if isinstance(exc, sqlite3.Error) else exc
                if not conn.in_transaction:  # SQLite rolled it all back itself (a full disk, an I/O error)
                    raise _Failed(StoreUnavailable(f"{self.path}: {exc}")) from None
                if not savepoints:
                    self._rollback(conn)
                    return None
                try:
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                except sqlite3.Error as error:
                    self._rollback(conn)
                    raise _Failed(StoreUnavailable(f"{self.path}: {error}")) from None
        return values

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction left to roll back

    def _read(self, conn: sqlite3.Connection, work: Callable[[Reader], object]) -> tuple[object, BaseException | None]:
        try:
            return work(SQLReader(conn, SQL)), None
        except sqlite3.Error as exc:
            return None, StoreUnavailable(f"{self.path}: {exc}")
        except BaseException as exc:  # noqa: BLE001 - handed to the read's caller
            return None, exc

    # -- the interface ----------------------------------------------------------------------

    def run_batch_here(self, units: list[Callable[[Transaction], object]], done: Callable[[list[Outcome]], None]) -> bool:
        """For the daemon's event loop: the batch runs and commits in its thread, without a
        thread hop or the GIL passed around every system call; requests that arrive during
        the fsync wait in their sockets and form the next batch (docs/performance.md). A
        disk that hangs therefore stalls the loop, its watchdog pings with it, and systemd
        restarts the daemon. False while the store thread holds the connection."""
        if self._closed:
            error = StoreUnavailable("the store is closed")
            done([(index, None, error) for index in range(len(units))])
            return True
        if not self._conn_lock.acquire(blocking=False):
            return False
        try:
            assert self._conn is not None
            outcomes = self._execute(self._conn, units)
        finally:
            self._conn_lock.release()
        done(outcomes)
        return True

    def read_here(self, work: Callable[[Reader], object], done: Settle) -> bool:
        if self._closed:
            done(None, StoreUnavailable("the store is closed"))
            return True
        if not self._conn_lock.acquire(blocking=False):
            return False
        try:
            assert self._conn is not None
            value, error = self._read(self._conn, work)
        finally:
            self._conn_lock.release()
        done(value, error)
        return True

    def submit(self, work: Callable[[Transaction], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_Job([work], _resolving(future)))
        return future

    def submit_batch(self, units: list[Callable[[Transaction], object]], done: Callable[[list[Outcome]], None]) -> None:
        self._put(_Job(units, done))

    def read(self, work: Callable[[Reader], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_Job([work], _resolving(future), read=True))
        return future

    def _put(self, job: _Job) -> None:
        if self._closed:
            error = StoreUnavailable("the store is closed")
            job.done([(index, None, error) for index in range(len(job.units))])
        else:
            self._queue.put(job)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
