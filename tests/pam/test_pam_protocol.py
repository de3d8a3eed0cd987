"""pam_totpd.so against a fake daemon: what it sends, how it maps every status,
what the person sees, and the options that change the conversation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fakedaemon import reply, standard_handler
from pamdriver import (
    PAM_AUTH_ERR, PAM_AUTHINFO_UNAVAIL, PAM_CONV_ERR, PAM_ERROR_MSG, PAM_MAXTRIES, PAM_PERM_DENIED,
    PAM_PROMPT_ECHO_OFF, PAM_SILENT, PAM_SUCCESS, PAM_TEXT_INFO, PAM_USER_UNKNOWN,
)

HERE = Path(__file__).resolve().parent

VECTOR_3_CHECK_ALICE_SUDO = bytes.fromhex(
    "5444 0100 0000 001e 636865636b0a757365723d616c6963650a736572766963653d7375646f0a".replace(" ", ""))
VECTOR_4_NEED_CODE = bytes.fromhex(
    "5444 0100 0000 0025 4e4545445f434f44450a70726f6d70743d566572696669636174696f6e"
    "20636f64653a200a".replace(" ", ""))

VECTOR_6_ENROLL = bytes.fromhex("5444 0100 0000 0007 454e524f4c4c0a".replace(" ", ""))
VECTOR_7_NEED_CODE_LINES = bytes.fromhex(
    "5444 0100 0000 002a 4e4545445f434f44450a696e666f3d5363616e3a0a71723d20e29688e296800a696e666f3d41"
    "4243440a".replace(" ", ""))

# ------------------------------------------------------------- what it sends

def test_check_request_matches_protocol_vector_3_byte_for_byte(stack, fake_daemon):
    server = fake_daemon(lambda request: reply("DENIED"))
    stack.service = "sudo"
    stack.write()
    stack.auth("123456", user="alice")
    assert server.received[0].raw == VECTOR_3_CHECK_ALICE_SUDO


def test_need_code_vector_4_prompts_and_correct_code_is_accepted(stack, fake_daemon):
    server = fake_daemon(standard_handler(check=VECTOR_4_NEED_CODE))
    result = stack.auth("492039", rhost="192.0.2.7", tty="ssh")
    assert result.retcode == PAM_SUCCESS
    assert result.messages == [(PAM_PROMPT_ECHO_OFF, "Verification code: ")]
    assert server.verbs == ["check", "verify"]


def test_verify_request_carries_user_service_rhost_tty_and_the_typed_code(stack, fake_daemon):
    server = fake_daemon()
    stack.auth("492039", user="alice", rhost="192.0.2.7", tty="ssh")
    check, verify = server.received
    assert check.keys == ["user", "service", "rhost", "tty"]
    assert check.fields == {"user": "alice", "service": stack.service, "rhost": "192.0.2.7",
                            "tty": "ssh"}
    assert verify.keys == ["user", "service", "rhost", "tty", "code"]
    assert verify.fields == {**check.fields, "code": "492039"}
    payload = f"verify\nuser=alice\nservice={stack.service}\nrhost=192.0.2.7\ntty=ssh\ncode=492039\n"
    assert verify.raw == b"TD\x01\x00" + len(payload).to_bytes(4, "big") + payload.encode()


def test_verify_goes_on_a_new_connection_when_the_daemon_closed_the_checks(stack, fake_daemon):
    server = fake_daemon()  # answers one request per connection, then closes it
    assert stack.auth("123456").retcode == PAM_SUCCESS
    assert server.per_connection == [["check"], ["verify"]]


def test_verify_goes_on_a_new_connection_even_when_the_daemon_keeps_the_checks_open(stack, fake_daemon):
    # No connection is held while a person types (docs/protocol.md, "check").
    server = fake_daemon(persistent=True)
    assert stack.auth("123456").retcode == PAM_SUCCESS
    assert server.per_connection == [["check"], ["verify"]]


def test_a_verify_the_daemon_drops_without_a_reply_is_never_sent_again(stack, fake_daemon):
    server = fake_daemon(lambda request: reply("NEED_CODE") if request.verb == "check" else b"")
    assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL
    assert server.per_connection == [["check"], ["verify"]]


CLOSED_STDIO_DRIVER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import pamdriver
    out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd in (0, 1, 2):
        os.close(fd)
    result = pamdriver.authenticate(sys.argv[3], "alice", sys.argv[4], "123456")
    os.write(out, json.dumps(result.retcode).encode())
    os._exit(0)
""")


def test_a_process_with_its_standard_descriptors_closed_reaches_the_daemon_on_a_descriptor_above_2(
        stack, fake_daemon, workdir):
    # Were the socket 0, 1 or 2, the application's own reads and writes of its
    # standard descriptors would reach the daemon (SSSD's make_safe_fd).
    seen = []

    def handler(request):
        fds = os.listdir(f"/proc/{request.peer_pid}/fd")
        seen.append((request.verb, sorted({"0", "1", "2"} & set(fds))))
        return standard_handler()(request)

    fake_daemon(handler)
    out = workdir / "retcode.json"
    subprocess.run([sys.executable, "-c", CLOSED_STDIO_DRIVER, str(HERE.parent / "helpers"), str(out), stack.service,
                    str(stack.confdir)], check=True, timeout=60)
    assert json.loads(out.read_text()) == PAM_SUCCESS
    assert seen == [("check", []), ("verify", [])]


def test_absent_rhost_and_tty_are_left_out_of_the_request(stack, fake_daemon):
    server = fake_daemon()
    stack.auth("123456")
    assert server.received[0].keys == ["user", "service"]


def test_spaces_and_at_sign_in_user_names_are_passed_through(stack, fake_daemon):
    server = fake_daemon()
    assert stack.auth("123456", user="Jane Doe@example.org").retcode == PAM_SUCCESS
    assert server.received[0].fields["user"] == "Jane Doe@example.org"


def test_peer_credentials_seen_by_daemon_are_the_callers(stack, fake_daemon):
    server = fake_daemon()
    stack.auth("123456")
    assert server.received[0].peer_uid == os.getuid()


# -------------------------------------------------------- status mapping

@pytest.mark.parametrize("status, expected", [
    ("ACCEPTED", PAM_SUCCESS),
    ("IGNORE", PAM_PERM_DENIED),  # libpam's answer when every module of a stack ignored
    ("DENIED", PAM_AUTH_ERR),
    ("REJECTED", PAM_AUTH_ERR),
    ("LOCKED", PAM_MAXTRIES),
    ("UNKNOWN_USER", PAM_USER_UNKNOWN),
    ("BAD_REQUEST", PAM_AUTHINFO_UNAVAIL),
    ("FORBIDDEN", PAM_AUTHINFO_UNAVAIL),
    ("UNAVAILABLE", PAM_AUTHINFO_UNAVAIL),
    ("BUSY", PAM_AUTHINFO_UNAVAIL),
    ("OK", PAM_AUTHINFO_UNAVAIL),
    ("NOT_ENROLLED", PAM_AUTHINFO_UNAVAIL),
    ("SOMETHING_NEW", PAM_AUTHINFO_UNAVAIL),
])
def test_check_status_maps_to_pam_code_without_prompting(stack, fake_daemon, status, expected):
    server = fake_daemon(lambda request: reply(status))
    result = stack.auth("123456")
    assert result.retcode == expected
    assert result.prompts == []
    assert server.verbs == ["check"]


@pytest.mark.parametrize("status, expected", [
    ("ACCEPTED", PAM_SUCCESS),
    ("REJECTED", PAM_AUTH_ERR),
    ("DENIED", PAM_AUTH_ERR),
    ("LOCKED", PAM_MAXTRIES),
    ("IGNORE", PAM_PERM_DENIED),
    ("UNKNOWN_USER", PAM_USER_UNKNOWN),
    ("NEED_CODE", PAM_AUTHINFO_UNAVAIL),
    ("BAD_REQUEST", PAM_AUTHINFO_UNAVAIL),
    ("FORBIDDEN", PAM_AUTHINFO_UNAVAIL),
    ("UNAVAILABLE", PAM_AUTHINFO_UNAVAIL),
    ("BUSY", PAM_AUTHINFO_UNAVAIL),
    ("SOMETHING_NEW", PAM_AUTHINFO_UNAVAIL),
])
def test_verify_status_maps_to_pam_code(stack, fake_daemon, status, expected):
    server = fake_daemon(standard_handler(verify=reply(status)))
    assert stack.auth("123456").retcode == expected
    assert server.verbs == ["check", "verify"]


@pytest.mark.parametrize("next_module, expected", [
    ("pam_permit.so", PAM_SUCCESS), ("pam_deny.so", PAM_AUTH_ERR)])
def test_ignore_lets_the_rest_of_the_stack_decide(stack, fake_daemon, next_module, expected):
    fake_daemon(lambda request: reply("IGNORE"))
    stack.write(after=f"auth required {next_module}")
    result = stack.auth("123456")
    assert result.retcode == expected
    assert result.prompts == []


def test_unknown_reply_keys_are_ignored(stack, fake_daemon):
    fake_daemon(standard_handler(check=reply("NEED_CODE", prompt="Code: ", future_key="x"),
                                 verify=reply("ACCEPTED", remembered="0")))
    assert stack.auth("123456").retcode == PAM_SUCCESS


# ---------------------------------------------------------- what is shown

def test_rejected_code_shows_the_daemons_message_as_error(stack, fake_daemon):
    message = "Wrong or already used verification code."
    fake_daemon(standard_handler(verify=reply("REJECTED", message=message)))
    result = stack.auth("000000")
    assert result.retcode == PAM_AUTH_ERR
    assert result.messages[-1] == (PAM_ERROR_MSG, message)


def test_denied_check_shows_message_as_error_and_never_prompts(stack, fake_daemon):
    fake_daemon(lambda request: reply("DENIED", message="Enroll first: run totpctl enroll."))
    result = stack.auth("123456")
    assert result.retcode == PAM_AUTH_ERR
    assert result.messages == [(PAM_ERROR_MSG, "Enroll first: run totpctl enroll.")]


def test_locked_message_is_shown_as_error(stack, fake_daemon):
    fake_daemon(lambda request: reply("LOCKED", message="Too many failures; try again in 30 s."))
    result = stack.auth("123456")
    assert result.retcode == PAM_MAXTRIES
    assert result.errors == ["Too many failures; try again in 30 s."]


def test_accepted_message_is_shown_as_info(stack, fake_daemon):
    fake_daemon(standard_handler(verify=reply("ACCEPTED", message="3 recovery codes left.")))
    result = stack.auth("123456")
    assert result.retcode == PAM_SUCCESS
    assert result.messages[-1] == (PAM_TEXT_INFO, "3 recovery codes left.")


def test_silent_flag_hides_info_messages(stack, fake_daemon):
    fake_daemon(standard_handler(check=reply("NEED_CODE", prompt="Code: ", message="Hello."),
                                 verify=reply("ACCEPTED", message="Welcome.")))
    result = stack.auth("123456", flags=PAM_SILENT)
    assert result.retcode == PAM_SUCCESS
    assert result.messages == [(PAM_PROMPT_ECHO_OFF, "Verification code: ")]


def test_silent_flag_still_shows_refusals(stack, fake_daemon):
    fake_daemon(standard_handler(verify=reply("REJECTED", message="Wrong code.")))
    result = stack.auth("123456", flags=PAM_SILENT)
    assert result.retcode == PAM_AUTH_ERR
    assert result.errors == ["Wrong code."]


def test_need_code_message_is_shown_as_info_before_the_prompt(stack, fake_daemon):
    fake_daemon(standard_handler(check=reply("NEED_CODE", prompt="Code: ", message="Enroll by May 1.")))
    result = stack.auth("123456")
    assert result.messages[:2] == [(PAM_TEXT_INFO, "Enroll by May 1."), (PAM_PROMPT_ECHO_OFF, "Verification code: ")]


def test_unavailable_status_without_message_tells_the_person_what_to_do(stack, fake_daemon):
    fake_daemon(lambda request: reply("UNAVAILABLE"))
    result = stack.auth("123456")
    assert result.retcode == PAM_AUTHINFO_UNAVAIL
    assert len(result.errors) == 1 and "administrator" in result.errors[0]


# ---------------------------------------------------------------- prompts

def test_the_module_owns_the_prompt_whatever_the_daemon_sends(stack, fake_daemon):
    fake_daemon(standard_handler(check=reply("NEED_CODE", prompt="One-time code: ")))
    assert stack.auth("123456").prompts == ["Verification code: "]


def test_prompt_option_sets_the_prompt(stack, fake_daemon):
    fake_daemon(standard_handler(check=reply("NEED_CODE", prompt="One-time code: ")))
    stack.write("[prompt=Authenticator code: ]")
    assert stack.auth("123456").prompts == ["Authenticator code: "]


def test_default_prompt_when_daemon_sends_none(stack, fake_daemon):
    fake_daemon(standard_handler(check=reply("NEED_CODE")))
    assert stack.auth("123456").prompts == ["Verification code: "]


def test_failed_conversation_is_conv_err_and_nothing_is_verified(stack, fake_daemon):
    server = fake_daemon()
    assert stack.auth(None).retcode == PAM_CONV_ERR
    assert server.verbs == ["check"]


# ------------------------------------------------- input the module refuses

def test_empty_code_is_refused_without_asking_the_daemon(stack, fake_daemon):
    server = fake_daemon()
    assert stack.auth("").retcode == PAM_AUTH_ERR
    assert server.verbs == ["check"]


@pytest.mark.parametrize("code", ["123\n456", "123456\r", "\x1b[A", "12\x7f", "12\u0085"])
def test_code_with_control_character_is_refused_without_asking_the_daemon(stack, fake_daemon, code):
    server = fake_daemon()
    assert stack.auth(code).retcode == PAM_AUTH_ERR
    assert server.verbs == ["check"]


def test_overlong_code_is_refused_without_asking_the_daemon(stack, fake_daemon):
    server = fake_daemon()
    assert stack.auth("1" * 257).retcode == PAM_AUTH_ERR
    assert server.verbs == ["check"]


def test_recovery_code_shaped_answer_is_sent_as_typed(stack, fake_daemon):
    server = fake_daemon()
    assert stack.auth("abcd-efgh-2345").retcode == PAM_SUCCESS
    assert server.received[1].fields["code"] == "abcd-efgh-2345"


@pytest.mark.parametrize("user", ["al\nice", "alice\nuser=root", "al\x01ice", "a/b", ".", "..", "x" * 257])
def test_hostile_user_name_is_user_unknown_and_nothing_is_sent(stack, fake_daemon, user):
    server = fake_daemon()
    assert stack.auth("123456", user=user).retcode == PAM_USER_UNKNOWN
    assert server.received == []


@pytest.mark.parametrize("item", ["rhost", "tty"])
def test_rhost_or_tty_with_line_feed_fails_closed_and_nothing_is_sent(stack, fake_daemon, item):
    server = fake_daemon()
    result = stack.auth("123456", **{item: "host\ncode=000000"})
    assert result.retcode == PAM_AUTHINFO_UNAVAIL
    assert server.received == []


# -------------------------------------------------------- password options

def _authtok_recorder(workdir):
    """A pam_exec stage that writes the PAM_AUTHTOK it is given to a file."""
    out = workdir / "authtok.out"
    script = workdir / "record-authtok"
    script.write_text(f"#!/bin/sh\ncat > {out}\n")
    script.chmod(stat.S_IRWXU)
    return f"auth required pam_exec.so expose_authtok quiet {script}", out


def test_forward_pass_splits_password_and_code_and_forwards_the_password(stack, fake_daemon, workdir):
    server = fake_daemon()
    after, out = _authtok_recorder(workdir)
    stack.write("forward_pass", control="requisite", after=after)
    result = stack.auth("hunter2 secret654321")
    assert result.retcode == PAM_SUCCESS
    assert result.prompts == ["Password & verification code: "]
    assert server.received[1].fields["code"] == "654321"
    assert out.read_bytes().rstrip(b"\x00") == b"hunter2 secret"


def test_forward_pass_with_eight_digits(stack, fake_daemon, workdir):
    server = fake_daemon()
    after, out = _authtok_recorder(workdir)
    stack.write("forward_pass digits=8", control="requisite", after=after)
    assert stack.auth("pw12345678").retcode == PAM_SUCCESS
    assert server.received[1].fields["code"] == "12345678"
    assert out.read_bytes().rstrip(b"\x00") == b"pw"


def test_forward_pass_answer_without_trailing_digits_is_refused(stack, fake_daemon):
    server = fake_daemon()
    stack.write("forward_pass")
    assert stack.auth("hunter2").retcode == PAM_AUTH_ERR
    assert server.verbs == ["check"]


def test_use_first_pass_takes_the_code_from_an_earlier_module(stack, fake_daemon):
    server = fake_daemon()
    # pam_unix prompts for (and stores) a password even for an unknown user
    stack.write("use_first_pass", before="auth optional pam_unix.so")
    result = stack.auth("314159", user="nosuchuser-totpd")
    assert result.prompts == ["Password: "]
    assert server.received[1].fields["code"] == "314159"
    assert result.retcode == PAM_SUCCESS


def test_use_first_pass_without_earlier_password_fails_without_prompting(stack, fake_daemon):
    server = fake_daemon()
    stack.write("use_first_pass")
    result = stack.auth("123456")
    assert result.retcode == PAM_AUTH_ERR
    assert result.prompts == []
    assert server.verbs == ["check"]


def test_try_first_pass_prompts_when_no_earlier_password(stack, fake_daemon):
    fake_daemon()
    stack.write("try_first_pass")
    result = stack.auth("123456")
    assert result.retcode == PAM_SUCCESS
    assert result.prompts == ["Verification code: "]


def test_unknown_and_invalid_options_are_ignored(stack, fake_daemon):
    fake_daemon()
    stack.write("frobnicate timeout=abc digits=7 debug")
    assert stack.auth("123456").retcode == PAM_SUCCESS


def test_setcred_succeeds(stack, fake_daemon):
    # pam_authenticate is what matters; pam_setcred must simply not get in the way
    import ctypes
    lib = ctypes.CDLL(stack.module)
    assert lib.pam_sm_setcred(None, 0, 0, None) == PAM_SUCCESS


def test_enroll_vector_6_then_vector_7_shows_its_lines_in_the_code_prompt(stack, fake_daemon):
    answers = {"check": VECTOR_6_ENROLL, "login_enroll": VECTOR_7_NEED_CODE_LINES,
               "login_confirm": reply("REJECTED", message="Wrong verification code.")}
    server = fake_daemon(lambda request: answers[request.verb])
    result = stack.auth("492039", rhost="192.0.2.7", tty="ssh")
    assert result.retcode == PAM_AUTH_ERR
    assert result.messages[0] == (PAM_PROMPT_ECHO_OFF, "Scan:\n \u2588\u2580\nABCD\nCode from the app: ")
    assert server.verbs == ["check", "login_enroll", "login_confirm"]
    enroll, confirm = server.received[1:]
    assert enroll.keys == ["user", "service", "rhost", "tty"]
    assert confirm.fields == {**enroll.fields, "code": "492039"}
