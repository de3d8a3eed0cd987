"""The embedded SQLite store (WAL, synchronous=FULL) with group commit.

One thread owns the connection. Units of work queue up; the thread takes every one
that is waiting, runs each inside its own SAVEPOINT of a single transaction, commits
once (one fsync for the whole batch), and only then resolves their futures. A unit
that raises is rolled back alone; a commit that fails (full disk, I/O error) fails
every unit of the batch, so no reply ever claims state that was not written.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import sqlite3
import stat
import threading
from typing import Callable, TypeVar

from ..errors import StoreAbsent, StoreError, StoreUnavailable
from ..files import directory_problem, parent, private_file_problem
from . import SCHEMA_VERSION, Account, Outcome, Store, Transaction, resolve

T = TypeVar("T")

log = logging.getLogger("totpd")

MAX_BATCH = 512
# A new write-ahead log is zero-filled to this many frames (wal_autocheckpoint's 1000
# pages, and room for the transaction that crosses it) of a 4 KiB page: _prefill_wal.
WAL_PREFILL_BYTES = 32 + 1100 * (4096 + 24)

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value BLOB NOT NULL
        )""",
        """CREATE TABLE accounts (
            user TEXT PRIMARY KEY,
            secret BLOB,
            algorithm TEXT NOT NULL DEFAULT 'SHA1',
            digits INTEGER NOT NULL DEFAULT 6,
            period INTEGER NOT NULL DEFAULT 30,
            last_step INTEGER NOT NULL DEFAULT -1,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until REAL NOT NULL DEFAULT 0,
            locked INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            confirmed REAL,
            pending_secret BLOB,
            pending_algorithm TEXT,
            pending_digits INTEGER,
            pending_period INTEGER
        )""",
        """CREATE TABLE recovery_codes (
            user TEXT NOT NULL REFERENCES accounts(user) ON DELETE CASCADE,
            id INTEGER NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (user, id)
        )""",
    ],
}

_COLUMNS = (
    "user, secret, algorithm, digits, period, last_step, failures, locked_until, locked, "
    "created, confirmed, pending_secret, pending_algorithm, pending_digits, pending_period"
)


class SQLiteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._db = conn

    def get(self, user: str) -> Account | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM accounts WHERE user = ?", (user,)).fetchone()
        return Account.from_row(row) if row else None

    def put_pending(self, user: str, sealed: bytes, algorithm: str, digits: int, period: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO accounts (user, created, pending_secret, pending_algorithm, pending_digits, pending_period)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user) DO UPDATE SET pending_secret = excluded.pending_secret,"
            " pending_algorithm = excluded.pending_algorithm, pending_digits = excluded.pending_digits,"
            " pending_period = excluded.pending_period",
            (user, now, sealed, algorithm, digits, period),
        )

    def activate_pending(self, user: str, now: float, keep_replay_state: bool = False) -> bool:
        cursor = self._db.execute(
            "UPDATE accounts SET secret = pending_secret, algorithm = pending_algorithm,"
            " digits = pending_digits, period = pending_period, last_step = CASE WHEN ? THEN last_step ELSE -1 END, failures = 0,"
            " locked_until = 0, locked = 0, confirmed = ?, pending_secret = NULL,"
            " pending_algorithm = NULL, pending_digits = NULL, pending_period = NULL"
            " WHERE user = ? AND pending_secret IS NOT NULL",
            (int(keep_replay_state), now, user),
        )
        return cursor.rowcount == 1

    def advance_step(self, user: str, step: int) -> bool:
        cursor = self._db.execute(
            "UPDATE accounts SET last_step = ?, failures = 0, locked_until = 0"
            " WHERE user = ? AND last_step < ? AND locked = 0",
            (step, user, step),
        )
        return cursor.rowcount == 1

    def set_failures(self, user: str, failures: int, locked_until: float, locked: bool) -> None:
        self._db.execute(
            "UPDATE accounts SET failures = ?, locked_until = ?, locked = ? WHERE user = ?",
            (failures, locked_until, int(locked), user),
        )

    def delete(self, user: str) -> bool:
        self._db.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))
        return self._db.execute("DELETE FROM accounts WHERE user = ?", (user,)).rowcount == 1

    def recovery_hashes(self, user: str) -> list[tuple[int, str]]:
        return self._db.execute("SELECT id, hash FROM recovery_codes WHERE user = ? ORDER BY id", (user,)).fetchall()

    def replace_recovery_codes(self, user: str, hashes: list[str]) -> None:
        self._db.execute("DELETE FROM recovery_codes WHERE user = ?", (user,))
        self._db.executemany(
            "INSERT INTO recovery_codes (user, id, hash) VALUES (?, ?, ?)",
            [(user, index, value) for index, value in enumerate(hashes)],
        )

    def use_recovery_code(self, user: str, code_id: int) -> bool:
        cursor = self._db.execute("DELETE FROM recovery_codes WHERE user = ? AND id = ?", (user, code_id))
        return cursor.rowcount == 1

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM accounts").fetchone()[0]

    def page(self, offset: int, limit: int) -> list[tuple[Account, int]]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS}, (SELECT count(*) FROM recovery_codes r WHERE r.user = a.user)"
            " FROM accounts a ORDER BY user LIMIT ? OFFSET ?",
            (limit, offset),
        ).fetchall()
        return [(Account.from_row(row), row[15]) for row in rows]

    def restore(self, account: Account, recovery: list[tuple[int, str]]) -> None:
        self.delete(account.user)
        self._db.execute(
            f"INSERT INTO accounts ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",
            (
                account.user, account.secret, account.algorithm, account.digits, account.period, account.last_step,
                account.failures, account.locked_until, int(account.locked), account.created, account.confirmed,
                account.pending_secret, account.pending_algorithm, account.pending_digits, account.pending_period,
            ),
        )
        self._db.executemany(
            "INSERT INTO recovery_codes (user, id, hash) VALUES (?, ?, ?)",
            [(account.user, code_id, value) for code_id, value in recovery],
        )

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


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
    the file system's journal, twice the cost of syncing blocks that already exist
    (276 vs 139 us here, docs/performance.md). PostgreSQL zero-fills its WAL segments
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
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Who uses the connection: the store thread for its batches, or a run_here()
        # batch in the caller's thread, from its BEGIN to its COMMIT.
        self._conn_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(started, key_check), name="sqlite-store", daemon=True)
        self._thread.start()
        started.result()  # re-raises an error from opening, migrating or the key check

    # -- the store thread ------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}{_full_hint(self.path, exc)}") from None
        return conn

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

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreError(f"{self.path}: this SQLite file is not a totpd database")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: the database has schema version {version}, newer than this totpd ({SCHEMA_VERSION});"
                " upgrade totpd"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT (a full disk) has already rolled back
                    conn.execute("ROLLBACK")
                raise

    def _serve(self, started: concurrent.futures.Future[None], key_check: Callable[[Transaction], None]) -> None:
        try:
            conn = self._open()
            try:
                integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: the database is corrupt: {exc}") from None
            if integrity != "ok":
                raise StoreError(f"{self.path}: the database is corrupt: {integrity}")
            if self._prefill:
                self._start_wal(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of __init__
            started.set_exception(exc)
            return
        self._conn = conn
        self._run_batch(conn, [([key_check], lambda outcomes: resolve(started, *outcomes[0][1:]))])
        if started.exception() is not None:
            conn.close()
            return
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                batch, size = [item], len(item[0])
                while size < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._queue.put(None)
                        break
                    batch.append(item)
                    size += len(item[0])
                self._conn_lock.acquire()  # a run_here() batch holds it until its commit is done
                try:
                    self._run_batch(conn, batch)
                finally:
                    self._conn_lock.release()
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[tuple[list, Callable[[list[Outcome]], None]]]) -> None:
        """Run every unit of every item in one transaction, commit once, then answer each item."""
        if not self._begin(conn, batch):
            return
        self._commit(conn, batch, [self._run_units(conn, units) for units, _ in batch])

    def _begin(self, conn: sqlite3.Connection, batch: list[tuple[list, Callable[[list[Outcome]], None]]]) -> bool:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = StoreUnavailable(f"{self.path}: cannot start a transaction: {exc}")
            for units, done in batch:
                _answer(done, [(index, None, error) for index in range(len(units))])
            return False
        return True

    def _run_units(self, conn: sqlite3.Connection, units: list[Callable[[Transaction], object]]) -> list[Outcome]:
        """Each unit in its own savepoint: one that raises is rolled back alone."""
        tx = SQLiteTransaction(conn)
        outcomes: list[Outcome] = []
        for index, work in enumerate(units):
            try:
                conn.execute("SAVEPOINT unit")
                value = work(tx)
                conn.execute("RELEASE unit")
                outcomes.append((index, value, None))
            except BaseException as exc:  # noqa: BLE001 - each unit fails alone
                try:
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    exc = StoreUnavailable(f"{self.path}: {exc}")
                outcomes.append((index, None, exc))
        return outcomes

    def _commit(
        self,
        conn: sqlite3.Connection,
        batch: list[tuple[list, Callable[[list[Outcome]], None]]],
        answers: list[list[Outcome]],
    ) -> None:
        """Commit once (one fsync for the whole batch), then answer: never before."""
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = StoreUnavailable(f"{self.path}: cannot commit: {exc}")
            answers = [[(index, None, error) for index, _, _ in outcomes] for outcomes in answers]
        for (_, done), outcomes in zip(batch, answers):
            _answer(done, outcomes)

    def run_here(self, units: list[Callable[[Transaction], object]], done: Callable[[list[Outcome]], None]) -> bool:
        """Run the units and commit them in the calling thread, now; call `done` before returning.

        For the daemon's event loop: one batch per loop turn, run and committed
        without a thread hop. Handing the COMMIT to the store thread instead let the
        loop read the next requests during the fsync, but the two threads then passed
        the GIL back and forth around every system call; committing here measured
        10-25% more verifications per second at 16 and 64 clients, with a lower p99
        (docs/performance.md). Requests that arrive during the fsync wait in their
        sockets and form the next batch. A slow disk therefore stalls the whole loop
        (pings, accepts, D-Bus) for each fsync, where before only the requests
        waiting on the store did; a disk that hangs stops the watchdog's pings, and
        systemd restarts the daemon. False (nothing done) while the store thread
        holds the connection for work submitted from elsewhere; the caller retries.
        """
        if self._closed:
            error = StoreUnavailable("the store is closed")
            done([(index, None, error) for index in range(len(units))])
            return True
        if not self._conn_lock.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            assert conn is not None
            if self._begin(conn, [(units, done)]):
                self._commit(conn, [(units, done)], [self._run_units(conn, units)])
        finally:
            self._conn_lock.release()
        return True

    # -- the public side ---------------------------------------------------------------

    def submit(self, work: Callable[[Transaction], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.submit_batch([work], lambda outcomes: resolve(future, *outcomes[0][1:]))
        return future

    def submit_batch(self, units: list[Callable[[Transaction], object]], done: Callable[[list[Outcome]], None]) -> None:
        if self._closed:
            error = StoreUnavailable("the store is closed")
            done([(index, None, error) for index in range(len(units))])
            return
        self._queue.put((units, done))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
