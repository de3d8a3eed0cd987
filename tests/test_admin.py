"""The administrator's verbs (totpd/admin.py): status, list, reset and unlock, through
totpctl against a real daemon; the tests marked both_backends run on SQLite and on
PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import json

import wire
from daemon_fixtures import both_backends
from daemonproc import code_at as code


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


@both_backends
def test_reset_removes_the_enrollment(daemon):
    secret = daemon.enroll("alice")
    assert daemon.ctl("reset", "alice").returncode == 0
    assert verify(daemon, "alice", code(secret)).status == "DENIED"
    missing = daemon.ctl("reset", "alice")
    assert missing.returncode == 1 and "not enrolled" in missing.stderr


@both_backends
def test_list_shows_every_account_as_a_table_and_as_json(daemon):
    for name in ("carol", "alice", "bob"):
        daemon.enroll(name)
    table = daemon.ctl("list").stdout
    assert table.index("alice") < table.index("bob") < table.index("carol") and "3 accounts" in table
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert [entry["user"] for entry in listed] == ["alice", "bob", "carol"]


@both_backends
def test_list_pages_through_more_accounts_than_one_reply_holds(daemon):
    # Pending enrollments list like any other and cost no recovery-code hashing.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: wire.request(daemon.socket_path, "enroll", user=f"user{i:04d}"), range(520)))
    assert {reply.status for reply in replies} == {"OK"}
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert [entry["user"] for entry in listed] == [f"user{i:04d}" for i in range(520)]
