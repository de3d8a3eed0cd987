"""A login's two verbs (totpd/login.py), `check` and `verify`, asked of a real daemon on
its socket; the tests marked both_backends run on SQLite and on PostgreSQL."""

from __future__ import annotations

import concurrent.futures

import pyotp

import wire
from daemon_fixtures import both_backends
from daemonproc import NOBODY, code_at as code


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


@both_backends
def test_right_code_is_accepted_wrong_code_rejected_replayed_code_rejected(daemon):
    secret = daemon.enroll("alice")
    good = code(secret)
    assert verify(daemon, "alice", good).status == "ACCEPTED"
    wrong = verify(daemon, "alice", "000000" if good != "000000" else "111111")
    assert wrong.status == "REJECTED" and wrong.message
    replay = verify(daemon, "alice", good, service="sudo")
    assert replay.status == "REJECTED" and "already used" in replay.message


@both_backends
def test_a_code_from_an_earlier_step_is_refused_once_a_later_one_was_used(daemon):
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", code(secret, +1)).status == "ACCEPTED"
    assert verify(daemon, "alice", code(secret, 0)).status == "REJECTED"


@both_backends
def test_codes_outside_the_window_are_refused(daemon):
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", code(secret, -3)).status == "REJECTED"
    assert verify(daemon, "alice", code(secret, +3)).status == "REJECTED"


@both_backends
def test_check_asks_for_a_code_for_enrolled_accounts_and_denies_unenrolled_ones(daemon):
    daemon.enroll("alice")
    reply = wire.request(daemon.socket_path, "check", user="alice", service="sshd")
    assert reply.status == "NEED_CODE" and reply.fields["prompt"] == "Verification code: "
    denied = wire.request(daemon.socket_path, "check", user="bob", service="sshd")
    assert denied.status == "DENIED" and "totpctl enroll bob" in denied.message


@both_backends
def test_unenrolled_accounts_pass_to_the_rest_of_the_stack_when_policy_allows(make_daemon):
    daemon = make_daemon(unenrolled="allow")
    assert wire.request(daemon.socket_path, "check", user="bob").status == "IGNORE"
    assert verify(daemon, "bob", "123456").status == "IGNORE"


@both_backends
def test_fifty_simultaneous_submissions_of_one_code_accept_exactly_one(daemon):
    secret = daemon.enroll("alice")
    good = code(secret)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: verify(daemon, "alice", good).status, range(50)))
    assert statuses.count("ACCEPTED") == 1, statuses
    assert set(statuses) == {"ACCEPTED", "REJECTED"}


@both_backends
def test_verify_command_exits_zero_only_when_accepted(daemon):
    secret = daemon.enroll("alice")
    good = code(secret)
    assert daemon.ctl("verify", "alice", good).returncode == 0
    assert daemon.ctl("verify", "alice", good).returncode == 1
    assert daemon.ctl("verify", "alice", "-", input=code(secret, 1) + "\n").returncode == 0


def test_a_non_root_verify_never_records_a_remembered_host(make_daemon):
    daemon = make_daemon(check_accounts=True, remember_host=3600)
    secret = daemon.enroll("nobody")
    status, _ = daemon.call_as(NOBODY, "verify", user="nobody", code=pyotp.TOTP(secret).now(), service="sshd", rhost="203.0.113.9")
    assert status == "ACCEPTED"
    check = wire.request(daemon.socket_path, "check", user="nobody", service="sshd", rhost="203.0.113.9")
    assert check.status == "NEED_CODE"  # the PAM module must still ask for a code


def test_a_root_login_with_a_code_is_remembered_for_its_host(make_daemon):
    daemon = make_daemon(remember_host=3600)
    secret = daemon.enroll("alice")
    reply = wire.request(daemon.socket_path, "verify", user="alice", code=pyotp.TOTP(secret).now(), service="sshd", rhost="203.0.113.9")
    assert reply.status == "ACCEPTED"
    assert wire.request(daemon.socket_path, "check", user="alice", service="sshd", rhost="203.0.113.9").status == "ACCEPTED"
