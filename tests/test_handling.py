"""What the handlers share (totpd/handling.py): who may act on an account (against a
real daemon; the tests marked both_backends run on SQLite and on PostgreSQL), the
listeners of events, and a request's token fields."""

from __future__ import annotations

import asyncio
import pwd

import pytest

import wire
from daemon_fixtures import both_backends
from daemonproc import code_at as code
from totpd.authorization import Caller
from totpd.errors import ProtocolError
from totpd.config import Config
from totpd.handling import Directory, Events, door_of, token_fields
from totpd.policy import Policy
from totpd.protocol import Request
from totpd.workers import Worker


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


@both_backends
def test_a_non_root_caller_may_not_act_on_another_account(daemon):
    secret = daemon.enroll("alice")
    nobody = 65534
    refused = daemon.ctl("verify", "alice", code(secret), user=nobody)
    assert refused.returncode == 1 and "may not verify" in refused.stderr
    assert daemon.ctl("list", user=nobody).returncode == 1
    assert daemon.ctl("reset", "alice", user=nobody).returncode == 1
    assert daemon.ctl("enroll", "alice", "--no-confirm", user=nobody).returncode == 1
    assert "result=forbidden" in daemon.log()
    assert verify(daemon, "alice", code(secret)).status == "ACCEPTED"  # the refused try cost nothing


@both_backends
def test_a_user_may_verify_their_own_account_like_a_screen_locker(daemon):
    secret = daemon.enroll("nobody")
    assert daemon.ctl("verify", "nobody", code(secret), user=65534).returncode == 0
    assert daemon.ctl("status", "nobody", user=65534).returncode == 0


@both_backends
def test_a_member_of_the_admin_group_may_manage_any_account(make_daemon):
    daemon = make_daemon(admin_group="nogroup")
    daemon.enroll("alice")
    assert daemon.ctl("list", user=65534).returncode == 0  # nobody's primary group is nogroup


# -- in process -------------------------------------------------------------------------


def test_a_listener_that_fails_never_stops_the_others_nor_the_decision():
    events, heard = Events(), []

    def broken(event: str, fields: dict) -> None:
        raise RuntimeError("a bug in a listener")

    events.listeners += [broken, lambda event, fields: heard.append((event, fields))]
    events.emit("locked", user="alice", service="sshd")
    assert heard == [("locked", {"user": "alice", "service": "sshd"})]


@pytest.mark.parametrize("fields, complaint", [
    ({"token": "Not A Name"}, "'token'"),
    ({"token": ""}, "'token'"),
    ({"type": "sms"}, "'type'"),
    ({"type": "hotp", "counter": "-3"}, "'counter'"),
])
def test_a_token_name_type_and_counter_are_checked_before_use(fields, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        token_fields(Request("token_add", {"user": "alice", **fields}))
    assert token_fields(Request("token_add", {"user": "alice"})) == ("default", "totp", 0)


def test_a_code_checked_outside_a_login_is_audited_under_the_door_it_came_by():
    assert door_of(Caller(1, 0, 0)) == "totpctl"
    assert door_of(Caller(1, 1000, 1000)) == "totpctl"
    assert {door_of(Caller(1, 0, 0, granted=grant)) for grant in ("any", "own", "none")} == {"dbus"}


def test_whether_an_account_exists_is_the_identity_steps_answer_with_no_second_lookup(monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(pwd, "getpwnam", lambda name: asked.append(name) or (_ for _ in ()).throw(KeyError(name)))
    config = Config(check_accounts=True)
    nss = Worker("nss", 1, 8)
    directory = Directory(config, Policy(config), nss, lambda: 0.0)

    async def exists(uid: int | None) -> bool:
        return await directory.exists(Request("check", {"user": "alice"}, user_uid=uid))

    try:
        assert [asyncio.run(exists(1000)), asyncio.run(exists(-1))] == [True, False]
        assert asked == []  # the identity step already asked NSS
        assert asyncio.run(exists(None)) is False  # a request it did not see is looked up
        assert asked == ["alice"]
    finally:
        nss.close()
