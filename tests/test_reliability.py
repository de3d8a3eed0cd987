"""Reliability and security under stress: the real daemon, real sockets, real libpam.

Each test names the invariant of docs/security.md it holds: replay under contention
(1), durability across SIGKILL (4), fail closed on a full disk (5), refusing a bad
database or key at start-up (2), bounded resources under hostile clients (3), and
brute-force throttling across services (6).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyotp
import pytest

import wire
from daemonproc import wrong_code
from totpd.protocol import encode_request
from totpd.sealing import Sealer, load_key
from totpd.sealing import secret_context

import pamdriver  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PERIOD = 30


def step_now() -> int:
    return int(time.time()) // PERIOD


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret).at(step * PERIOD)


def verify(path: str, user: str, code: str, service: str = "sshd"):
    return wire.request(path, "verify", user=user, code=code, service=service, rhost="192.0.2.1")


def import_accounts(path: str, secrets: dict[str, str]) -> None:
    """Enroll many accounts at once through the bulk import (no argon2, one transaction)."""
    with wire.connect(path) as sock:
        for user, secret in secrets.items():
            sock.sendall(encode_request("import_add", {"user": user, "secret": secret}))
            assert wire.read_reply(sock).status == "OK"
        sock.sendall(encode_request("import_commit", {}))
        reply = wire.read_reply(sock)
        assert reply.status == "OK" and reply.fields["created"] == str(len(secrets)), reply


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def pam_module() -> str:
    subprocess.run(["make", "-s", "-C", str(REPO / "pam"), "pam_totpd.so"], check=True)
    return str(REPO / "pam" / "pam_totpd.so")


def pam_confdir(workdir: Path, module: str, socket_path: str, service: str = "sshd") -> str:
    return pamdriver.write_confdir(str(workdir / "pam.d"), service, f"auth required {module} socket={socket_path} timeout=5")


# -- invariant 1: a code is accepted at most once, under contention ----------------------


def test_two_hundred_simultaneous_socket_submissions_of_one_code_accept_exactly_one(daemon):
    secret = daemon.enroll("alice")
    good = code_at(secret, step_now())
    sockets = [wire.connect(daemon.socket_path, timeout=30) for _ in range(200)]
    start = threading.Barrier(200)

    def submit(index: int) -> str:
        sock = sockets[index]
        frame = encode_request("verify", {"user": "alice", "code": good, "service": ("sshd", "sudo")[index % 2]})
        start.wait()
        sock.sendall(frame)
        return wire.read_reply(sock).status

    try:
        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            statuses = list(pool.map(submit, range(200)))
    finally:
        for sock in sockets:
            sock.close()
    assert statuses.count("ACCEPTED") == 1, statuses
    assert statuses.count("REJECTED") == 199, set(statuses)


def test_two_hundred_simultaneous_pam_logins_with_one_code_succeed_exactly_once(daemon, pam_module, tmp_path):
    secret = daemon.enroll("alice")
    confdirs = {service: pam_confdir(tmp_path / service, pam_module, daemon.socket_path, service) for service in ("sshd", "sudo")}
    good = code_at(secret, step_now())
    start = threading.Barrier(200)

    def login(index: int) -> int:
        service = ("sshd", "sudo")[index % 2]
        start.wait()
        return pamdriver.authenticate(service, "alice", confdirs[service], good, rhost="192.0.2.9").retcode

    with concurrent.futures.ThreadPoolExecutor(200) as pool:  # ctypes drops the GIL inside libpam
        results = list(pool.map(login, range(200)))
    assert results.count(pamdriver.PAM_SUCCESS) == 1, results
    assert results.count(pamdriver.PAM_AUTH_ERR) == 199, {pamdriver.NAMES.get(r, r) for r in results}
    assert daemon.log().count("result=accepted") == 1


# -- invariant 4 (and 1): SIGKILL during load loses nothing acknowledged ----------------


class Load:
    """Verifications, enrollments and recovery-code uses against a daemon, recording every OK."""

    def __init__(self, path: str, accounts: dict[str, str], recovery: list[tuple[str, str]], tag: str) -> None:
        self.path = path
        self.accounts = accounts
        self.recovery = recovery  # (user, code) not used yet
        self.tag = tag
        self.stop = threading.Event()
        self.accepted: dict[str, int] = {}  # user -> highest step whose code got ACCEPTED
        self.enrolled: dict[str, str] = {}  # user -> secret, acknowledged OK
        self.recovery_used: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._next_step: dict[str, int] = {}

    def _verifier(self, users: list[str]) -> None:
        rng = random.Random(hash(users[0]))
        while not self.stop.is_set():
            user = rng.choice(users)
            current = step_now()
            step = max(self._next_step.get(user, current - 1), current - 1)
            if step > current + 1:
                continue
            self._next_step[user] = step + 1
            code = code_at(self.accounts[user], step) if rng.random() < 0.8 else wrong_code(self.accounts[user])
            try:
                reply = verify(self.path, user, code, service=rng.choice(("sshd", "sudo")))
            except (OSError, EOFError):
                continue  # killed mid-request: no answer, nothing promised
            if reply.status == "ACCEPTED":
                with self.lock:
                    self.accepted[user] = max(step, self.accepted.get(user, -1))

    def _enroller(self) -> None:
        index = 0
        while not self.stop.is_set():
            user, secret = f"new-{self.tag}-{index}", pyotp.random_base32(32)
            index += 1
            try:
                reply = wire.request(self.path, "enroll", user=user, secret=secret, activate=1)
            except (OSError, EOFError):
                continue
            if reply.status == "OK":
                with self.lock:
                    self.enrolled[user] = secret

    def _recoverer(self) -> None:
        while not self.stop.is_set() and self.recovery:
            user, code = self.recovery.pop()
            try:
                reply = verify(self.path, user, code, service="sudo")
            except (OSError, EOFError):
                continue  # unknown fate: neither counted used nor offered again
            if reply.status == "ACCEPTED":
                with self.lock:
                    self.recovery_used.append((user, code))

    def run_until_killed(self, daemon, settle: float) -> None:
        users = sorted(self.accounts)
        threads = [threading.Thread(target=self._verifier, args=(users[i::4],)) for i in range(4)]
        threads += [threading.Thread(target=self._enroller), threading.Thread(target=self._recoverer)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 10
            while not (self.accepted and self.enrolled) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(settle)
            daemon.stop(9)  # SIGKILL in the middle of the load
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()


def test_sigkill_during_load_never_loses_an_acknowledged_code_enrollment_or_recovery_use(make_daemon):
    daemon = make_daemon(recovery_codes=4, backoff_after=100, max_failures=100)
    accounts = {f"user{i:03d}": pyotp.random_base32(32) for i in range(300)}
    import_accounts(daemon.socket_path, accounts)
    recovery = []
    for i in range(6):
        out = wire.request(daemon.socket_path, "enroll", user=f"rescue{i}", activate=1)
        recovery += [(f"rescue{i}", code) for code in out.fields["recovery_codes"].split()]
    random.Random(7).shuffle(recovery)
    database = daemon.settings["database"]
    sealer = Sealer(load_key(daemon.settings["key_file"], create=False))
    totals = {"accepted": 0, "enrolled": 0, "recovery": 0}
    for kill in range(5):
        load = Load(daemon.socket_path, accounts, recovery, tag=str(kill))
        load.run_until_killed(daemon, settle=random.uniform(0.1, 0.5))
        # Dead daemon: the file on disk must be sound and hold everything acknowledged.
        db = sqlite3.connect(database)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            last = dict(db.execute("SELECT user, last_step FROM tokens").fetchall())
            for user, step in load.accepted.items():
                assert last[user] >= step, (user, step, last[user])
            for user, secret in load.enrolled.items():
                row = db.execute("SELECT secret FROM tokens WHERE user = ?", (user,)).fetchone()
                assert row is not None and row[0] is not None, user
                assert pyotp.TOTP(secret).byte_secret() == sealer.open(row[0], secret_context(user))
        finally:
            db.close()
        daemon.start()
        for user, step in load.accepted.items():  # a code that got an OK is never accepted again
            if step >= step_now() - 1:
                assert verify(daemon.socket_path, user, code_at(accounts[user], step)).status == "REJECTED", user
        for user, code in load.recovery_used:
            assert verify(daemon.socket_path, user, code).status == "REJECTED", user
        for user in load.enrolled:
            assert wire.request(daemon.socket_path, "status", user=user).fields["enrolled"] == "1", user
        totals["accepted"] += len(load.accepted)
        totals["enrolled"] += len(load.enrolled)
        totals["recovery"] += len(load.recovery_used)
    assert totals["accepted"] >= 25 and totals["enrolled"] >= 5 and totals["recovery"] >= 1, totals
    print(f"5 SIGKILLs under load: {totals}")


# -- invariant 5: a full disk fails closed, then the service resumes ---------------------


@pytest.fixture
def tiny_filesystem():
    """A 2 MiB tmpfs on a fresh temp dir (never under /dev), unmounted afterwards."""
    top = Path(tempfile.mkdtemp(prefix="totpd-fulldisk-"))
    mount = top / "state"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "totpd-test", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_fails_verifications_closed_with_a_clear_line_and_service_resumes(make_daemon, tiny_filesystem):
    daemon = make_daemon(database=str(tiny_filesystem / "totpd.db"))
    accounts = {f"user{i:02d}": pyotp.random_base32(32) for i in range(40)}
    import_accounts(daemon.socket_path, accounts)
    assert verify(daemon.socket_path, "user00", code_at(accounts["user00"], step_now())).status == "ACCEPTED"
    filler = fill(tiny_filesystem)
    statuses = {}
    for user in sorted(accounts)[1:]:
        statuses[user] = verify(daemon.socket_path, user, code_at(accounts[user], step_now())).status
    # Nothing is accepted once the WAL cannot grow; at most a frame's slack may still commit.
    assert list(statuses.values()).count("UNAVAILABLE") >= len(statuses) - 2, statuses
    assert set(statuses.values()) <= {"UNAVAILABLE", "ACCEPTED"}
    assert wire.request(daemon.socket_path, "ping").status == "OK"  # still serving
    log = daemon.log()
    assert "cannot decide verify" in log and "full" in log, log[-2000:]
    assert "result=unavailable" in log
    # PAM would map UNAVAILABLE to PAM_AUTHINFO_UNAVAIL (tests/pam): never a way in.
    filler.unlink()
    refused = [user for user, status in statuses.items() if status == "UNAVAILABLE"]
    for user in refused:  # space is back: the same codes, never acknowledged, now work
        assert verify(daemon.socket_path, user, code_at(accounts[user], step_now())).status == "ACCEPTED", user
    daemon.stop()
    assert_intact(daemon.settings["database"])


def assert_intact(database: str) -> None:
    db = sqlite3.connect(database)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()


def test_the_daemon_preallocates_its_write_ahead_log_and_commits_into_it_on_a_full_disk(make_daemon, tmp_path):
    """A new WAL is zero-filled (commits then sync blocks that exist: docs/performance.md);
    with it in place, a disk that fills up afterwards still takes acknowledged codes."""
    from totpd.store.sqlite import WAL_PREFILL_BYTES

    mount = tmp_path / "state"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "totpd-test", str(mount)], check=True)
    try:
        daemon = make_daemon(database=str(mount / "totpd.db"))
        wal = mount / "totpd.db-wal"
        info = wal.stat()
        assert info.st_size == WAL_PREFILL_BYTES and info.st_mode & 0o777 == 0o600
        accounts = {f"user{i:02d}": pyotp.random_base32(32) for i in range(20)}
        import_accounts(daemon.socket_path, accounts)
        filler = fill(mount)
        codes = {user: code_at(secret, step_now()) for user, secret in accounts.items()}
        for user, code in codes.items():
            assert verify(daemon.socket_path, user, code).status == "ACCEPTED", user
        daemon.stop(9)  # no checkpoint: the acknowledged steps live in the WAL alone
        filler.unlink()
        daemon.start()
        for user, code in codes.items():  # still inside the window: only the replay record refuses them
            assert verify(daemon.socket_path, user, code).status == "REJECTED", user
        daemon.stop()
        assert_intact(daemon.settings["database"])
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_too_full_to_preallocate_the_log_is_said_once_and_served_anyway(make_daemon, tiny_filesystem):
    daemon = make_daemon(database=str(tiny_filesystem / "totpd.db"))
    assert daemon.log().count("cannot preallocate the write-ahead log") == 1, daemon.log()[-2000:]
    accounts = {"alice": pyotp.random_base32(32)}
    import_accounts(daemon.socket_path, accounts)
    assert verify(daemon.socket_path, "alice", code_at(accounts["alice"], step_now())).status == "ACCEPTED"


# -- invariant 2: a bad database or key stops start-up with one clear line ---------------


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))
    path.chmod(0o600)


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()
    path.chmod(0o600)


def _newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("INSERT INTO totpd_schema (version, applied) VALUES (99, 0)")
    db.commit()
    db.close()


def _damaged_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 3 * page
    data[page + 100 : 3 * page] = os.urandom(2 * page - 100)  # b-tree pages 2 and 3, header kept
    path.write_bytes(bytes(data))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 1000])


@pytest.mark.parametrize(
    "damage, expect",
    [
        (_garbage, "cannot open the database: file is not a database"),
        (_foreign, "this SQLite file is not a totpd database"),
        (_newer_schema, "newer than this totpd"),
        (_damaged_pages, "the database is corrupt"),
        (_truncated, "cannot open the database: database disk image is malformed"),
        (lambda path: path.chmod(0o644), "the database is readable by others; chmod 600 it"),
    ],
)
def test_a_corrupt_or_foreign_database_stops_start_up_with_one_line(make_daemon, damage, expect):
    daemon = make_daemon()
    if damage not in (_garbage, _foreign):
        daemon.enroll("alice")
        import_accounts(daemon.socket_path, {f"bulk{i:03d}": pyotp.random_base32(32) for i in range(200)})
    daemon.stop()
    database = Path(daemon.settings["database"])
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    if damage in (_garbage, _foreign):
        database.unlink()
    damage(database)
    _assert_refuses_with_one_line(daemon, expect, str(database))


def _wrong_key(path: Path) -> None:
    path.write_bytes(os.urandom(32))


def _short_key(path: Path) -> None:
    path.write_bytes(os.urandom(31))


@pytest.mark.parametrize(
    "damage, expect",
    [
        (_wrong_key, "the master key does not open this database (wrong key file?)"),
        (_short_key, "the master key must be exactly 32 bytes, found 31"),
        (lambda path: path.chmod(0o644), "the master key is readable by others; chmod 600 it"),
        (lambda path: path.unlink(), "the master key is missing"),
    ],
)
def test_a_missing_or_wrong_key_stops_start_up_with_one_line(make_daemon, damage, expect):
    daemon = make_daemon()
    daemon.enroll("alice")
    daemon.stop()
    key = Path(daemon.settings["key_file"])
    damage(key)
    _assert_refuses_with_one_line(daemon, expect, None)


def _assert_refuses_with_one_line(daemon, expect: str, names: str | None) -> None:
    before = len(daemon.log())
    with pytest.raises(RuntimeError, match="exited with 1"):
        daemon.start(timeout=10)
    lines = daemon.log()[before:].strip().splitlines()
    errors = [line for line in lines if line.startswith("totpd: ERROR: ")]
    assert len(errors) == 1 and expect in errors[0], lines
    assert names is None or names in errors[0]
    assert not any("Traceback" in line for line in lines), lines
    assert not os.path.exists(daemon.socket_path) or not _listening(daemon.socket_path)


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def test_a_secret_never_opens_with_the_wrong_key_or_in_another_account(make_daemon):
    daemon = make_daemon()
    secrets = {"alice": daemon.enroll("alice"), "bob": daemon.enroll("bob")}
    daemon.stop()
    database = daemon.settings["database"]
    right = Sealer(load_key(daemon.settings["key_file"], create=False))
    wrong = Sealer(os.urandom(32))
    db = sqlite3.connect(database)
    rows = dict(db.execute("SELECT user, secret FROM tokens").fetchall())
    from totpd.errors import SealingError

    for user, sealed in rows.items():
        assert right.open(sealed, secret_context(user)) == pyotp.TOTP(secrets[user]).byte_secret()
        with pytest.raises(SealingError):
            wrong.open(sealed, secret_context(user))
    # A sealed secret moved into another account's row does not open there: the daemon
    # fails that verification closed (UNAVAILABLE, a log line), it never accepts.
    db.execute("UPDATE tokens SET secret = ? WHERE user = 'bob'", (rows["alice"],))
    db.commit()
    db.close()
    daemon.start()
    reply = verify(daemon.socket_path, "bob", code_at(secrets["alice"], step_now()))
    assert reply.status == "UNAVAILABLE", reply
    assert "does not open with this master key" in daemon.log()
    assert verify(daemon.socket_path, "alice", code_at(secrets["alice"], step_now())).status == "ACCEPTED"


# -- invariant 3: idle and hostile clients cannot starve a login, memory stays bounded ----


NOBODY = 65534


def _hostile_as_nobody(path: str, seconds: float) -> subprocess.Popen:
    """A local non-root user: 1,000 connections it leaves idle, and malformed frames."""
    script = f"""
import socket, time, os
path, until = {path!r}, time.monotonic() + {seconds}
held, busy = [], 0
for _ in range(1000):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError:
        busy += 1; s.close(); continue
    held.append(s)
time.sleep(0.5)
admitted = 0
for s in held:  # the daemon answers BUSY and hangs up on every connection over the cap
    s.setblocking(False)
    try:
        refused = b"BUSY" in s.recv(64)
    except BlockingIOError:
        refused = False
    admitted += not refused
sent = 0
while time.monotonic() < until:
    for junk in (os.urandom(64), b"TD\\x01\\x00\\xff\\xff\\xff\\xff", b"TD\\x01\\x00\\x00\\x00\\x10\\x00" + b"x" * 4096):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path); s.sendall(junk); s.recv(100)
            sent += 1
        except OSError:
            pass
        s.close()
print(admitted, sent, flush=True)
time.sleep(0.5)
"""
    return subprocess.Popen(["/usr/bin/python3", "-c", script], user=NOBODY, group=NOBODY, extra_groups=[],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


def test_idle_connections_and_a_flood_of_malformed_frames_do_not_starve_a_login(make_daemon, pam_module, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The daemon starts with systemd's usual soft limit of 1024 and lifts it itself.
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        daemon = make_daemon(read_timeout=5.0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pid = daemon.process.pid
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert any(line.startswith("Max open files") and line.split()[3] == line.split()[4] for line in limits.splitlines()), limits
    accounts = {f"user{i:02d}": pyotp.random_base32(32) for i in range(30)}
    import_accounts(daemon.socket_path, accounts)
    confdir = pam_confdir(tmp_path, pam_module, daemon.socket_path)
    users = iter(sorted(accounts))

    def login() -> float:
        user = next(users)
        started = time.monotonic()
        result = pamdriver.authenticate("sshd", user, confdir, code_at(accounts[user], step_now()))
        assert result.retcode == pamdriver.PAM_SUCCESS, (user, result.name, result.errors)
        return time.monotonic() - started

    baseline = sorted(login() for _ in range(5))[2]
    rss_before = rss_kib(pid)
    # 900 idle connections from root (stuck clients; root is capped only by the total) ...
    idle = []
    for _ in range(900):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(daemon.socket_path)
        idle.append(sock)
    for sock in idle[:300]:  # ... a third of them mid-frame, holding a partial payload
        sock.sendall(wire.frame(b"x" * 4000, length=4096)[:4008])
    hostile = _hostile_as_nobody(daemon.socket_path, seconds=3.0)
    # ... and root's own flood of malformed and pipelined frames.
    stop = threading.Event()
    flooded = [0]

    def flood() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, EOFError):
                with wire.connect(daemon.socket_path) as sock:
                    sock.sendall(wire.frame(b"explode\n") + wire.frame(b"ping\n", magic=b"XX"))
                    wire.read_reply(sock)
                    flooded[0] += 1

    samples = [rss_before]

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_kib(pid))
            time.sleep(0.05)

    flooders = [threading.Thread(target=flood) for _ in range(2)] + [threading.Thread(target=sample)]
    for thread in flooders:
        thread.start()
    try:
        time.sleep(0.5)
        under_load = [login() for _ in range(10)]
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
    rss_peak = max(samples)
    out, err = hostile.communicate(timeout=30)
    held, sent = map(int, out.split()) if out.strip() else (None, None)
    assert held is not None and held <= 32, (out, err)  # the per-uid cap: the rest got BUSY
    assert sent and sent > 50 and flooded[0] > 50
    # Idle connections are closed by the daemon once read_timeout passes: none lingers.
    deadline = time.monotonic() + 8
    for sock in idle:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        assert wire.closed(sock)
        sock.close()
    assert max(under_load) < max(1.0, 20 * baseline), (baseline, under_load)
    assert rss_peak - rss_before < 64 * 1024, (rss_before, rss_peak)  # KiB
    assert "cannot accept connections" not in daemon.log()  # never ran out of descriptors
    print(f"login median {baseline * 1000:.1f} ms idle; under load max {max(under_load) * 1000:.1f} ms;"
          f" VmRSS {rss_before} -> {rss_peak} KiB; nobody held {held}, junk frames {sent}+{flooded[0]}")


# -- invariant 6: throttling per account across services ---------------------------------


def test_failures_count_per_account_across_services_with_backoff_then_a_hard_lock(make_daemon):
    daemon = make_daemon(max_failures=6, backoff_after=3, backoff_initial=0.3, backoff_max=1.0)
    secret = daemon.enroll("alice")
    bad = wrong_code(secret)
    path = daemon.socket_path
    services = iter(["sshd", "sudo"] * 20)

    def attempt(value: str) -> str:
        return verify(path, "alice", value, service=next(services)).status

    def failures() -> int:
        return int(wire.request(path, "status", user="alice").fields["failures"])

    assert [attempt(bad), attempt(bad)] == ["REJECTED", "REJECTED"]  # sshd, sudo: no wait yet
    assert failures() == 2
    assert attempt(bad) == "REJECTED"  # the third failure starts a 0.3 s backoff
    waits = [0.3, 0.6, 1.0]  # doubling, capped at backoff_max
    for number, wait in zip((4, 5, 6), waits):
        right_now = code_at(secret, step_now())
        refused = verify(path, "alice", right_now, service="sudo")  # even the right code waits
        assert refused.status == "LOCKED" and "try again in" in refused.message
        assert failures() == number - 1  # attempts during a backoff are refused unjudged
        time.sleep(wait + 0.05)
        assert attempt(bad) == ("LOCKED" if number == 6 else "REJECTED")
    # The sixth consecutive failure locked the account for every service.
    assert failures() == 6
    status = wire.request(path, "status", user="alice").fields
    assert status["locked"] == "1"
    for service in ("sshd", "sudo", "login"):
        locked = verify(path, "alice", code_at(secret, step_now()), service=service)
        assert locked.status == "LOCKED" and "totpctl unlock alice" in locked.message
        assert wire.request(path, "check", user="alice", service=service).status == "LOCKED"
    assert failures() == 6
    assert daemon.ctl("unlock", "alice").returncode == 0
    assert verify(path, "alice", code_at(secret, step_now()), service="sudo").status == "ACCEPTED"
    assert failures() == 0


def test_a_burst_of_concurrent_guesses_is_judged_no_further_than_the_schedule_allows(make_daemon):
    daemon = make_daemon(max_failures=5, backoff_after=3, backoff_initial=60, backoff_max=60)
    secret = daemon.enroll("alice")
    near = {code_at(secret, step_now() + k) for k in range(-12, 13)}
    bad = [code for code in (f"{n:06d}" for n in range(200)) if code not in near][:100]
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(lambda i: verify(daemon.socket_path, "alice", bad[i], ("sshd", "sudo")[i % 2]).status, range(100)))
    # Three guesses were judged (then a 60 s backoff began); the other 97 were refused unjudged.
    assert statuses.count("REJECTED") == 3 and statuses.count("LOCKED") == 97, statuses
    assert wire.request(daemon.socket_path, "status", user="alice").fields["failures"] == "3"
    assert daemon.log().count("result=rejected") == 3
