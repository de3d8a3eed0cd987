"""pam_totpd.so against the real totpd (tests/conftest.py's `daemon`), through real libpam."""

from __future__ import annotations

import json
import re
import time

import pyotp
import pytest

from daemonproc import wrong_code
from pamconf import Stack
from pamdriver import (
    PAM_AUTH_ERR, PAM_AUTHINFO_UNAVAIL, PAM_MAXTRIES, PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON, PAM_SUCCESS,
    PAM_TEXT_INFO,
)


@pytest.fixture
def totp_stack(workdir, pam_module, daemon) -> Stack:
    return Stack(workdir / "pam.d", pam_module, daemon.socket_path).write("timeout=5")


def test_right_code_is_accepted(daemon, totp_stack):
    secret = daemon.enroll("alice")
    result = totp_stack.auth(pyotp.TOTP(secret).now(), user="alice", rhost="192.0.2.7", tty="ssh")
    assert result.retcode == PAM_SUCCESS
    assert result.messages == [(PAM_PROMPT_ECHO_OFF, "Verification code: ")]


def test_wrong_code_is_refused_with_a_message(daemon, totp_stack):
    secret = daemon.enroll("alice")
    result = totp_stack.auth(wrong_code(secret), user="alice")
    assert result.retcode == PAM_AUTH_ERR
    assert len(result.errors) == 1


def test_replayed_code_is_refused(daemon, totp_stack):
    secret = daemon.enroll("alice")
    code = pyotp.TOTP(secret).now()
    assert totp_stack.auth(code, user="alice").retcode == PAM_SUCCESS
    replay = totp_stack.auth(code, user="alice")
    assert replay.retcode == PAM_AUTH_ERR
    assert replay.errors and "already used" in replay.errors[0]


def test_replayed_code_is_refused_across_services(daemon, totp_stack, workdir, pam_module):
    secret = daemon.enroll("alice")
    code = pyotp.TOTP(secret).now()
    assert totp_stack.auth(code, user="alice").retcode == PAM_SUCCESS
    sudo = Stack(workdir / "pam.d", pam_module, daemon.socket_path)
    sudo.service = "sudo"
    sudo.write()
    assert sudo.auth(code, user="alice").retcode == PAM_AUTH_ERR


def test_replayed_code_is_refused_after_daemon_restart(daemon, totp_stack):
    secret = daemon.enroll("alice")
    code = pyotp.TOTP(secret).now()
    assert totp_stack.auth(code, user="alice").retcode == PAM_SUCCESS
    daemon.restart()
    assert totp_stack.auth(code, user="alice").retcode == PAM_AUTH_ERR


def test_unenrolled_account_is_refused_with_a_message_by_default(daemon, totp_stack):
    result = totp_stack.auth("123456", user="bob")
    assert result.retcode == PAM_AUTH_ERR
    assert result.prompts == []
    assert len(result.errors) == 1 and "totpctl enroll bob" in result.errors[0]


def test_unenrolled_account_is_let_through_to_the_rest_of_the_stack_when_policy_allows(
        make_daemon, workdir, pam_module):
    daemon = make_daemon(unenrolled="allow")
    stack = Stack(workdir / "pam.d", pam_module, daemon.socket_path)
    stack.write(after="auth required pam_permit.so")
    result = stack.auth("123456", user="bob")
    assert result.retcode == PAM_SUCCESS
    assert result.prompts == []
    stack.write(after="auth required pam_deny.so")
    assert stack.auth("123456", user="bob").retcode == PAM_AUTH_ERR


def test_recovery_code_is_accepted_once_with_a_notice(daemon, totp_stack):
    enrolled = daemon.ctl("enroll", "alice", "--no-confirm", "--json", "--secret-file", "-",
                          input=pyotp.random_base32(32) + "\n")
    assert enrolled.returncode == 0, enrolled.stderr
    recovery_code = json.loads(enrolled.stdout)["recovery_codes"][0]
    result = totp_stack.auth(recovery_code, user="alice")
    assert result.retcode == PAM_SUCCESS
    assert [style for style, _ in result.messages] == [PAM_PROMPT_ECHO_OFF, PAM_TEXT_INFO]
    assert totp_stack.auth(recovery_code, user="alice").retcode == PAM_AUTH_ERR


def test_repeated_wrong_codes_lock_the_account(make_daemon, workdir, pam_module):
    daemon = make_daemon(max_failures=3, backoff_after=3)
    stack = Stack(workdir / "pam.d", pam_module, daemon.socket_path).write()
    secret = daemon.enroll("alice")
    bad = wrong_code(secret)
    assert [stack.auth(bad, user="alice").retcode for _ in range(3)] == [
        PAM_AUTH_ERR, PAM_AUTH_ERR, PAM_MAXTRIES]
    locked = stack.auth(pyotp.TOTP(secret).now(), user="alice")
    assert locked.retcode == PAM_MAXTRIES
    assert locked.prompts == []  # check already says LOCKED: no prompt
    assert locked.errors and "totpctl unlock alice" in locked.errors[0]


def test_daemon_not_running_is_authinfo_unavail_quickly(daemon, totp_stack):
    daemon.enroll("alice")
    daemon.stop()
    started = time.monotonic()
    result = totp_stack.auth("123456", user="alice")
    assert result.retcode == PAM_AUTHINFO_UNAVAIL
    assert time.monotonic() - started < 0.5
    assert result.prompts == []


def test_forward_pass_against_the_real_daemon(daemon, totp_stack):
    secret = daemon.enroll("alice")
    totp_stack.write("forward_pass", control="requisite", after="auth required pam_permit.so")
    assert totp_stack.auth("pw" + pyotp.TOTP(secret).now(), user="alice").retcode == PAM_SUCCESS


# -- enroll_at_login ----------------------------------------------------------------

def _scan(prompt: str, directory) -> str:
    """The secret a phone that does not invert reads off the prompt's QR code (drawn in
    text), on a light and a dark theme alike."""
    import urllib.parse

    import terminal

    uri = terminal.read_on_every_theme(prompt, directory)
    return urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0]


@pytest.fixture
def enrolling(make_daemon, workdir, pam_module):
    """A daemon with enroll_at_login, and a stack whose first factor (pam_permit, requisite) precedes pam_totpd."""
    daemon = make_daemon(enroll_at_login=True)
    return daemon, Stack(workdir / "pam.d", pam_module, daemon.socket_path).write(
        "timeout=5", before="auth requisite pam_permit.so")


def test_an_unenrolled_account_enrolls_in_the_conversation_and_its_next_login_needs_a_code(enrolling, tmp_path):
    daemon, stack = enrolling
    found: dict[str, str] = {}

    def respond(prompt: str) -> str:
        if prompt.endswith("\nCode from the app: "):
            found["secret"] = _scan(prompt, tmp_path)
            return pyotp.TOTP(found["secret"]).now()
        found["codes"] = prompt
        return ""

    result = stack.auth(respond, user="bob", rhost="192.0.2.7", tty="ssh")
    assert result.retcode == PAM_SUCCESS, result
    assert [style for style, _ in result.messages] == [PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON]
    assert result.prompts[1].endswith("\nPress Enter to continue: ")
    codes = re.findall(r"\b[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}\b", found["codes"])
    assert len(codes) == 10 and found["codes"].isascii()  # the codes reach a terminal in any locale
    assert "rhost=192.0.2.7" in daemon.log() and found["secret"] not in daemon.log()
    again = stack.auth(pyotp.TOTP(found["secret"]).at(time.time() + 30), user="bob", rhost="192.0.2.7")
    assert again.retcode == PAM_SUCCESS and again.prompts == ["Verification code: "]
    assert stack.auth(codes[0], user="bob").retcode == PAM_SUCCESS  # a recovery code shown at enrollment


def test_a_wrong_first_code_fails_the_login_and_the_next_login_shows_the_same_qr_code(enrolling, tmp_path):
    _daemon, stack = enrolling
    shown: list[str] = []

    def wrong(prompt: str) -> str:
        shown.append(_scan(prompt, tmp_path))
        return wrong_code(shown[-1])

    refused = stack.auth(wrong, user="bob")
    assert refused.retcode == PAM_AUTH_ERR and refused.errors and "Wrong verification code" in refused.errors[0]
    assert stack.auth(None, user="bob").retcode != PAM_SUCCESS  # a conversation that fails enrolls nothing
    right = stack.auth(lambda prompt: pyotp.TOTP(_scan(prompt, tmp_path)).now() if "Code from" in prompt else "",
                       user="bob")
    assert right.retcode == PAM_SUCCESS
    assert _scan(right.prompts[0], tmp_path) == shown[0]  # one pending enrollment, shown again


def test_enrollment_at_login_is_refused_with_forward_pass(enrolling, workdir, pam_module):
    daemon, stack = enrolling
    stack.write("forward_pass", before="auth requisite pam_permit.so")
    result = stack.auth("123456", user="bob")
    assert result.retcode == PAM_AUTH_ERR and result.prompts == []
