"""sudo_grace: the pure decision, the session's anchor over a process tree, the records,
and the same facts read from real processes in real audit sessions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pyotp
import pytest

import wire
from daemonproc import SYSTEM_PYTHON

from totpd import grace
from totpd.config import parse
from totpd.grace import UNSET, Grace, Graces, Process, anchor_of, candidates, granted, read_process
from totpd.workers import Worker

UID = 65534  # the account's uid in these trees: nobody, so NSS knows it

# An SSH login as /proc shows it (tests/e2e/test_sudo_grace.py checks the real shape):
# init, the sshd listener, the per-connection monitor that opened session 7, its
# unprivileged child, a shell, and sudo in that shell (set-uid: its real uid is the
# account's); the [pam] child that authenticated before the session opened; a second
# SSH session (8) of the account.
TREE = {
    1: Process(1, 0, 10, UNSET, UNSET, 0),
    100: Process(100, 1, 500, UNSET, UNSET, 0),
    200: Process(200, 100, 9000, 7, UID, 0),
    201: Process(201, 200, 9100, 7, UID, UID),
    202: Process(202, 201, 9200, 7, UID, UID),
    203: Process(203, 202, 9300, 7, UID, UID),
    210: Process(210, 200, 8900, UNSET, UNSET, 0),
    300: Process(300, 100, 9500, 8, UID, 0),
    303: Process(303, 300, 9600, 8, UID, UID),
}
# The same while [pam] authenticates: the monitor has not opened the session yet.
AT_LOGIN = {**TREE, 200: Process(200, 100, 9000, UNSET, UNSET, 0)}


def tree_read(tree: dict[int, Process]):
    return tree.get


def test_the_anchor_is_the_topmost_ancestor_in_the_same_session():
    assert anchor_of(203, tree_read(TREE)) == (200, 9000)
    assert anchor_of(200, tree_read(TREE)) == (200, 9000)
    assert anchor_of(303, tree_read(TREE)) == (300, 9500)


def test_a_process_outside_any_session_has_no_anchor():
    assert anchor_of(210, tree_read(TREE)) is None
    assert anchor_of(100, tree_read(TREE)) is None


def test_an_unreadable_process_or_ancestor_has_no_anchor():
    hidden = {pid: p for pid, p in TREE.items() if pid != 201}
    assert anchor_of(203, tree_read(hidden)) is None
    assert anchor_of(999, tree_read(TREE)) is None


def test_a_code_accepted_before_the_session_binds_to_the_authenticating_process_and_its_parent():
    assert candidates(210, tree_read(AT_LOGIN)) == ((210, 8900), (200, 9000))
    assert candidates(210, tree_read(TREE)) == ((210, 8900),)  # a parent in a session opens no other


def test_init_is_never_a_candidate_anchor():
    # `login` authenticates in the process getty became, a child of init.
    tree = {**TREE, 400: Process(400, 1, 9800, UNSET, UNSET, 0)}
    assert candidates(400, tree_read(tree)) == ((400, 9800),)


def test_a_code_accepted_inside_a_session_binds_to_that_sessions_anchor():
    assert candidates(203, tree_read(TREE)) == ((200, 9000),)


def test_sudo_in_the_same_session_inside_the_grace_is_granted():
    graces = [Grace(candidates(210, tree_read(AT_LOGIN)), 1000.0)]
    assert granted(60, graces, TREE[203], anchor_of(203, tree_read(TREE)), UID, 1060.0)


def test_sudo_after_the_grace_is_refused():
    graces = [Grace(((200, 9000),), 1000.0)]
    assert not granted(60, graces, TREE[203], (200, 9000), UID, 1060.5)


def test_sudo_in_another_session_of_the_same_account_is_refused():
    graces = [Grace(((200, 9000),), 1000.0)]
    assert not granted(60, graces, TREE[303], anchor_of(303, tree_read(TREE)), UID, 1001.0)


def test_a_reused_pid_with_another_start_time_is_refused():
    # The session ended; a new session's monitor got pid 200 again, later.
    reused = {**TREE, 200: Process(200, 100, 12000, 9, UID, 0), 203: Process(203, 200, 12100, 9, UID, UID)}
    graces = [Grace(((200, 9000),), 1000.0)]
    anchor = anchor_of(203, tree_read(reused))
    assert anchor == (200, 12000)
    assert not granted(60, graces, reused[203], anchor, UID, 1001.0)


def test_a_process_that_outlived_its_session_is_refused():
    # The monitor is gone: the orphaned shell was adopted by init and is its own anchor.
    orphaned = {pid: p for pid, p in TREE.items() if pid not in (200, 201)}
    orphaned[202] = Process(202, 1, 9200, 7, UID, UID)
    graces = [Grace(((200, 9000),), 1000.0)]
    assert not granted(60, graces, orphaned[203], anchor_of(203, tree_read(orphaned)), UID, 1001.0)


def test_another_accounts_login_session_is_refused():
    graces = [Grace(((200, 9000),), 1000.0)]
    assert not granted(60, graces, TREE[203], (200, 9000), UID + 1, 1001.0)


def test_a_login_authenticated_by_root_inside_the_session_is_refused():
    # An sshd started by hand from inside the session: its [pam] child inherits the
    # session and its loginuid, but authenticates as root, not as a program the account ran.
    inherited = {**TREE, 220: Process(220, 203, 9700, 7, UID, 0)}
    graces = [Grace(((200, 9000),), 1000.0)]
    assert not granted(60, graces, inherited[220], anchor_of(220, tree_read(inherited)), UID, 1001.0)


def test_roots_account_never_gets_a_grace():
    as_root = {pid: Process(p.pid, p.ppid, p.start, p.session, 0, 0) for pid, p in TREE.items()}
    graces = [Grace(((200, 9000),), 1000.0)]
    assert not granted(60, graces, as_root[203], anchor_of(203, tree_read(as_root)), 0, 1001.0)


def test_nothing_known_is_refused():
    graces = [Grace(((200, 9000),), 1000.0)]
    assert not granted(0, graces, TREE[203], (200, 9000), UID, 1001.0)  # off for this service
    assert not granted(60, graces, None, (200, 9000), UID, 1001.0)  # caller unreadable
    assert not granted(60, graces, TREE[203], None, UID, 1001.0)  # no anchor
    assert not granted(60, graces, TREE[203], (200, 9000), None, 1001.0)  # account unknown to NSS
    assert not granted(60, graces, TREE[210], (200, 9000), UID, 1001.0)  # caller outside any session
    assert not granted(60, graces, TREE[203], (200, 9000), UID, 999.0)  # the clock went back


def test_the_longest_grace_of_any_service_bounds_the_records():
    config = parse({"sudo_grace": 60, "services": {"sudo": {"sudo_grace": 300}, "sshd": {"remember_host": 5}}}, "t")
    assert grace.longest(config) == 300
    assert config.services["sshd"].sudo_grace is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def nss():
    worker = Worker("nss", 1, 4)
    yield worker
    worker.close()


def test_records_grant_in_their_session_and_end_on_forget(nss):
    clock, tree = FakeClock(), dict(AT_LOGIN)
    graces = Graces(clock, 60, tree_read(tree))
    graces.record("nobody", 210)
    tree.update(TREE)  # the login went on: its monitor opened the session
    assert asyncio.run(graces.grants("nobody", 203, 60, nss))
    assert not asyncio.run(graces.grants("nobody", 303, 60, nss))
    assert not asyncio.run(graces.grants("nobody", 203, 0, nss))
    assert graces.active("nobody") == (1, 1060.0)
    graces.forget("nobody")
    assert not asyncio.run(graces.grants("nobody", 203, 60, nss))
    assert graces.active("nobody") == (0, 0.0)


def test_a_grace_answer_does_not_extend_the_grace(nss):
    clock, tree = FakeClock(), dict(TREE)
    graces = Graces(clock, 60, tree_read(tree))
    graces.record("nobody", 203)
    clock.now = 1050.0
    assert asyncio.run(graces.grants("nobody", 203, 60, nss))
    clock.now = 1061.0
    assert not asyncio.run(graces.grants("nobody", 203, 60, nss))
    assert graces.active("nobody") == (0, 0.0)


def test_an_account_keeps_its_newest_graces_only(nss):
    clock = FakeClock()
    tree = {**TREE, **{pid: Process(pid, 1, pid, UNSET, UNSET, 0) for pid in range(1000, 1000 + Graces.MAX_PER_ACCOUNT)}}
    graces = Graces(clock, 60, tree_read(tree))
    graces.record("nobody", 203)
    for pid in range(1000, 1000 + Graces.MAX_PER_ACCOUNT):
        clock.now += 0.01
        graces.record("nobody", pid)
    assert graces.active("nobody")[0] == Graces.MAX_PER_ACCOUNT  # the oldest, 203's session, went
    assert not asyncio.run(graces.grants("nobody", 203, 60, nss))


def test_nothing_is_recorded_while_every_grace_is_off(nss):
    graces = Graces(FakeClock(), 0, tree_read(AT_LOGIN))
    graces.record("nobody", 210)
    assert graces.active("nobody") == (0, 0.0)


def test_a_grace_whose_session_ended_is_not_shown_as_active(nss):
    tree = dict(TREE)
    graces = Graces(FakeClock(), 60, tree_read(tree))
    graces.record("nobody", 203)
    del tree[200]
    assert graces.active("nobody") == (0, 0.0)


# -- real processes in real audit sessions (root writes a fresh loginuid) -----------

SESSION_LEADER = """
import os, subprocess, sys
with open("/proc/self/loginuid", "w") as handle:
    handle.write(sys.argv[1])
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.read()
child.communicate(b"")
"""


@pytest.fixture
def session():
    """A process that opened its own audit session (as pam_loginuid does) and its child."""
    if os.geteuid() != 0:
        pytest.fail("opening an audit session needs root")
    leader = subprocess.Popen([sys.executable, "-c", SESSION_LEADER, str(UID)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    yield leader.pid, child
    leader.communicate("")


def test_proc_shows_a_real_sessions_leader_as_the_anchor_of_its_child(session):
    leader, child = session
    process = read_process(child)
    assert process is not None and process.ppid == leader and process.loginuid == UID
    assert process.session not in (UNSET, read_process(os.getpid()).session)  # type: ignore[union-attr]
    assert anchor_of(child) == read_process(leader).anchor  # type: ignore[union-attr]


def test_proc_shows_this_test_outside_the_session(session):
    leader, _child = session
    assert anchor_of(os.getpid()) != read_process(leader).anchor  # type: ignore[union-attr]


def test_a_process_that_is_gone_reads_as_nothing():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert read_process(int(done.stdout)) is None


# -- through the daemon: only root's PAM requests start or use a grace -------------------

NOBODY = 65534

IN_SESSION = """
import json, subprocess, sys
with open("/proc/self/loginuid", "w") as handle:
    handle.write(sys.argv[1])
for line in sys.stdin:
    done = subprocess.run(json.loads(line), capture_output=True, text=True)
    print(json.dumps([done.returncode, done.stdout, done.stderr]), flush=True)
"""

CALL = """
import json, sys
from totpd.client import Client
reply = Client(sys.argv[1]).call(sys.argv[2], **json.loads(sys.argv[3]))
print(reply.status)
"""


# How a request's process runs inside the session: root as sshd authenticates, a
# set-uid root program the account started (sudo), or the account itself.
AS_ROOT: list[str] = []
AS_SUDO = ["setpriv", f"--ruid={NOBODY}"]
AS_USER = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


class AuditSession:
    """A process that opened an audit session for `loginuid`, running requests from its
    children (as sudo runs inside a login session)."""

    def __init__(self, daemon, loginuid: int) -> None:
        self.daemon = daemon
        self.leader = subprocess.Popen([sys.executable, "-c", IN_SESSION, str(loginuid)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)

    def call(self, how: list[str], verb: str, **fields: str) -> str:
        package = self.daemon._public_package()  # readable by any uid
        argv = [*how, SYSTEM_PYTHON, "-c", f"import sys; sys.path.insert(0, {str(package)!r})\n" + CALL,
                self.daemon.socket_path, verb, json.dumps(fields)]
        assert self.leader.stdin and self.leader.stdout
        self.leader.stdin.write(json.dumps(argv) + "\n")
        self.leader.stdin.flush()
        returncode, stdout, stderr = json.loads(self.leader.stdout.readline())
        assert returncode == 0, stderr
        return stdout.strip()

    def close(self) -> None:
        self.leader.communicate("")


def test_only_roots_pam_requests_in_the_session_start_a_grace_and_only_sudo_uses_it(make_daemon):
    daemon = make_daemon(check_accounts=True, sudo_grace=300)
    totp = pyotp.TOTP(daemon.enroll("nobody"))
    session = AuditSession(daemon, NOBODY)
    try:
        assert session.call(AS_USER, "verify", user="nobody", code=totp.now(), service="sshd") == "ACCEPTED"
        assert session.call(AS_SUDO, "check", user="nobody", service="sudo") == "NEED_CODE"  # a user's own verify starts none
        assert session.call(AS_ROOT, "verify", user="nobody", code=totp.at(time.time() + 30), service="sshd") == "ACCEPTED"
        assert session.call(AS_SUDO, "check", user="nobody", service="sudo") == "ACCEPTED"
        assert session.call(AS_USER, "check", user="nobody", service="sudo") == "NEED_CODE"  # not the PAM module
        assert session.call(AS_ROOT, "check", user="nobody", service="sshd") == "NEED_CODE"  # a login, not sudo
        assert wire.request(daemon.socket_path, "check", user="nobody", service="sudo").status == "NEED_CODE"
    finally:
        session.close()
    assert "result=accepted_grace" in daemon.log()
