"""Enrollment (totpd/enrollment.py): `enroll`, `token_add` and `confirm`, through totpctl
and the socket of a real daemon; the tests marked both_backends run on SQLite and on
PostgreSQL."""

from __future__ import annotations

import base64
import json
import time

import pyotp

import wire
from daemon_fixtures import both_backends
from daemonproc import NOBODY, code_at as code, flood_as, wrong_code


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


@both_backends
def test_enrollment_stays_pending_until_a_first_code_confirms_it(daemon):
    secret = pyotp.random_base32(32)
    result = daemon.ctl("enroll", "alice", "--json", "--secret-file", "-", input=secret + "\n\n")
    assert result.returncode == 1, result.stderr  # no code typed: stays pending
    assert "pending" in result.stdout + result.stderr
    assert verify(daemon, "alice", code(secret)).status == "DENIED"
    status = json.loads(daemon.ctl("status", "alice", "--json").stdout)
    assert status["pending"] is True and status["enrolled"] is False

    assert daemon.ctl("confirm", "alice", "000000").returncode == 1
    first = code(secret, -1)
    confirmed = daemon.ctl("confirm", "alice", first, "--json")
    assert confirmed.returncode == 0, confirmed.stderr
    assert len(json.loads(confirmed.stdout)["recovery_codes"]) == 10
    # The confirming code's step is spent; the next one logs in.
    assert verify(daemon, "alice", first).status == "REJECTED"
    assert verify(daemon, "alice", code(secret)).status == "ACCEPTED"


@both_backends
def test_enroll_with_a_first_code_typed_at_the_prompt_prints_recovery_codes_once(daemon):
    secret = pyotp.random_base32(32)
    first = code(secret)
    result = daemon.ctl("enroll", "alice", "--secret-file", "-", input=f"{secret}\n{first}\n")
    assert result.returncode == 0, result.stderr
    assert "otpauth://totp/" in result.stdout
    assert " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)) in result.stdout
    assert "▀" in result.stdout or "▄" in result.stdout  # the QR code, drawn with half blocks
    assert max(len(line) for line in result.stdout.splitlines() if not line.startswith("URI: ")) <= 80
    assert result.stdout.count("-") >= 20  # ten recovery codes xxxx-xxxx-xxxx
    assert "recovery_codes" not in daemon.ctl("status", "alice").stdout


@both_backends
def test_enroll_json_reports_uri_secret_and_recovery_codes(daemon):
    out = daemon.enroll_json("alice", "--issuer", "Example Corp")
    assert out["uri"].startswith("otpauth://totp/Example%20Corp:alice?secret=")
    assert "issuer=Example%20Corp" in out["uri"]
    assert "algorithm" not in out["uri"] and "digits" not in out["uri"] and "period" not in out["uri"]
    assert len(base64.b32decode(out["secret"] + "=" * (-len(out["secret"]) % 8))) == 20
    assert len(out["recovery_codes"]) == 10 and len(set(out["recovery_codes"])) == 10


@both_backends
def test_enroll_with_non_default_parameters_puts_them_in_the_uri_and_verifies(daemon):
    out = daemon.enroll_json("alice", "--digits", "8", "--algorithm", "sha256", "--period", "60")
    assert "algorithm=SHA256" in out["uri"] and "digits=8" in out["uri"] and "period=60" in out["uri"]
    totp = pyotp.TOTP(out["secret"], digits=8, digest="sha256", interval=60)
    assert verify(daemon, "alice", totp.now()).status == "ACCEPTED"


@both_backends
def test_enrolling_an_enrolled_account_needs_force(daemon):
    daemon.enroll("alice")
    again = daemon.ctl("enroll", "alice", "--no-confirm", "--json")
    assert again.returncode == 1 and "--force" in again.stderr
    new_secret = daemon.enroll("alice", None, "--force")
    assert verify(daemon, "alice", code(new_secret)).status == "ACCEPTED"


@both_backends
def test_a_secret_is_never_taken_from_the_command_line(daemon):
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--secret", "JBSWY3DPEHPK3PXPJBSWY3DP")
    assert result.returncode == 2


@both_backends
def test_a_malformed_provisioned_secret_gets_a_clear_error(daemon):
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--secret-file", "-", input="not base32 at all!\n")
    assert result.returncode == 1 and "base32" in result.stderr


@both_backends
def test_only_existing_accounts_can_be_enrolled_when_check_accounts_is_on(make_daemon):
    daemon = make_daemon(check_accounts=True)
    assert daemon.ctl("enroll", "root", "--no-confirm", "--json").returncode == 0
    missing = daemon.ctl("enroll", "no-such-user-xyz", "--no-confirm")
    assert missing.returncode == 1 and "no-such-user-xyz" in missing.stderr
    assert wire.request(daemon.socket_path, "check", user="no-such-user-xyz").status == "UNKNOWN_USER"


@both_backends
def test_re_enrolling_with_the_same_secret_does_not_revive_a_used_code(daemon):
    secret = daemon.enroll("alice")
    used = code(secret)
    assert verify(daemon, "alice", used).status == "ACCEPTED"
    assert daemon.enroll("alice", secret, "--force") == secret  # an admin re-enrolls, same seed
    assert verify(daemon, "alice", used).status == "REJECTED"
    assert verify(daemon, "alice", code(secret, 1)).status == "ACCEPTED"  # the next code still works


def test_confirm_without_a_pending_enrollment_is_refused_at_once(make_daemon):
    daemon = make_daemon(check_accounts=True)
    attack = flood_as(NOBODY, daemon.socket_path, [("confirm", {"user": "nobody", "code": "123456"})] * 32)
    started = time.perf_counter()
    out, err = attack.communicate(timeout=60)
    assert attack.returncode == 0, err
    assert json.loads(out) == ["NOT_ENROLLED"] * 32
    assert time.perf_counter() - started < 5  # 320 argon2 hashes would take longer on any machine here
    assert "result=no_pending" in daemon.log()


def test_a_wrong_first_code_costs_no_recovery_codes(daemon):
    pending = wire.request(daemon.socket_path, "enroll", user="alice")
    assert pending.fields["pending"] == "1"
    secret = pending.fields["secret"]
    reply = wire.request(daemon.socket_path, "confirm", user="alice", code=wrong_code(secret))
    assert reply.status == "REJECTED"
    reply = wire.request(daemon.socket_path, "confirm", user="alice", code=pyotp.TOTP(secret).now())
    assert reply.status == "OK" and len(reply.fields["recovery_codes"].split()) == 10
