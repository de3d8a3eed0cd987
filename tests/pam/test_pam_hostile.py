"""pam_totpd.so fails closed: malformed replies, silent or missing daemons,
untrusted sockets and peers, and fuzzed replies, also under ASan/UBSan."""

from __future__ import annotations

import os
import pwd
import random
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pamdriver
from fakedaemon import (
    PAM_AUTHINFO_UNAVAIL, STATUS_TO_PAM, FakeDaemon, frame, reference_status, reply,
    standard_handler,
)
from pamdriver import PAM_AUTH_ERR, PAM_SUCCESS

NEED_CODE = reply("NEED_CODE", prompt="Verification code: ")

# Replies no conforming client may take for an answer; the last ones would
# read as ACCEPTED to a sloppy parser.
MALFORMED_REPLIES = {
    "garbage_bytes": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    "http_response": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nACCEPTED\n",
    "oversized_length": frame(b"ACCEPTED\n", length=4097),
    "huge_length": frame(b"ACCEPTED\n", length=0xFFFFFFFF),
    "zero_length": frame(b"", length=0),
    "truncated_header": b"TD\x01\x00\x00",
    "truncated_payload": frame(b"ACCEPTED\n", length=40),
    "bad_magic": frame(b"ACCEPTED\n", magic=b"XE"),
    "version_2": frame(b"ACCEPTED\n", version=2),
    "version_0": frame(b"ACCEPTED\n", version=0),
    "flags_set": frame(b"ACCEPTED\n", flags=1),
    "no_final_lf": frame(b"ACCEPTED"),
    "crlf": frame(b"ACCEPTED\r\n"),
    "lowercase_status": frame(b"accepted\n"),
    "status_with_digit": frame(b"ACCEPTED2\n"),
    "status_too_long": frame(b"A" * 33 + b"\n"),
    "empty_status": frame(b"\nmessage=hi\n"),
    "leading_space": frame(b" ACCEPTED\n"),
    "duplicate_message": frame(b"ACCEPTED\nmessage=a\nmessage=b\n"),
    "line_without_equals": frame(b"ACCEPTED\nmessage\n"),
    "empty_line": frame(b"ACCEPTED\n\n"),
    "uppercase_key": frame(b"ACCEPTED\nMessage=hi\n"),
    "empty_key": frame(b"ACCEPTED\n=hi\n"),
    "key_too_long": frame(b"ACCEPTED\n" + b"k" * 33 + b"=v\n"),
    "control_char_in_message": frame(b"ACCEPTED\nmessage=hi\x1b[2Jthere\n"),
    "nul_in_message": frame(b"ACCEPTED\nmessage=hi\x00there\n"),
    "del_in_message": frame(b"ACCEPTED\nmessage=hi\x7f\n"),
    "c1_control_in_message": frame("ACCEPTED\nmessage=hi\u009bthere\n".encode()),
    "cr_in_message": frame(b"ACCEPTED\nmessage=hi\rthere\n"),
    "invalid_utf8": frame(b"ACCEPTED\nmessage=\xff\xfe\n"),
    "overlong_utf8": frame(b"ACCEPTED\nmessage=\xc0\xaf\n"),
    "surrogate_utf8": frame(b"ACCEPTED\nmessage=\xed\xa0\x80\n"),
    "truncated_utf8": frame(b"ACCEPTED\nmessage=\xe2\x82\n"),
    "message_over_512": frame(b"ACCEPTED\nmessage=" + b"m" * 513 + b"\n"),
    "payload_4097": frame(b"ACCEPTED\nx=" + b"v" * (4097 - 12) + b"\n"),
    "nothing_then_close": b"",
}


def test_malformed_reply_catalogue_is_malformed_for_the_reference_parser():
    for name, data in MALFORMED_REPLIES.items():
        assert reference_status(data) is None, name
    assert reference_status(reply("ACCEPTED", message="m" * 512)) == "ACCEPTED"


@pytest.mark.parametrize("name", sorted(MALFORMED_REPLIES))
def test_malformed_check_reply_fails_closed(stack, fake_daemon, name):
    server = fake_daemon(lambda request: MALFORMED_REPLIES[name])
    result = stack.auth("123456")
    assert result.retcode == PAM_AUTHINFO_UNAVAIL
    assert result.prompts == []
    assert server.verbs == ["check"]


@pytest.mark.parametrize("name", sorted(MALFORMED_REPLIES))
def test_malformed_verify_reply_fails_closed(stack, fake_daemon, name):
    fake_daemon(standard_handler(verify=MALFORMED_REPLIES[name]))
    assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL


def test_largest_allowed_reply_is_accepted(stack, fake_daemon):
    payload = b"ACCEPTED\nmessage=" + b"m" * 512 + b"\npadding="
    payload += b"p" * (4096 - len(payload) - 1) + b"\n"
    assert len(payload) == 4096
    fake_daemon(standard_handler(verify=frame(payload)))
    assert stack.auth("123456").retcode == PAM_SUCCESS


@pytest.mark.parametrize("payload, expected", [
    (b"ACCEPTED\nextra=a\nextra=b\nprompt=x\nprompt=y\n", PAM_SUCCESS),
    (b"ACCEPTED\nextra=a\nextra=\x1b[2J\n", PAM_AUTHINFO_UNAVAIL),
])
def test_keys_the_module_does_not_read_may_repeat_but_are_still_checked(stack, fake_daemon, payload, expected):
    fake_daemon(standard_handler(verify=frame(payload)))
    assert stack.auth("123456").retcode == expected


def test_reply_with_many_distinct_keys_is_parsed(stack, fake_daemon):
    fields = {f"k{chr(97 + i // 26)}{chr(97 + i % 26)}": "" for i in range(500)}
    keyed = {key.replace("k", "x"): value for key, value in fields.items()}
    fake_daemon(standard_handler(verify=reply("ACCEPTED", **keyed)))
    assert stack.auth("123456").retcode == PAM_SUCCESS


def test_daemon_that_never_answers_times_out_after_timeout_option(stack, fake_daemon):
    fake_daemon(lambda request: None)
    stack.write("timeout=1")
    started = time.monotonic()
    result = stack.auth("123456")
    elapsed = time.monotonic() - started
    assert result.retcode == PAM_AUTHINFO_UNAVAIL
    assert 0.9 <= elapsed < 1.8, elapsed


def test_daemon_that_stalls_on_verify_times_out_too(stack, fake_daemon):
    fake_daemon(lambda request: NEED_CODE if request.verb == "check" else None)
    stack.write("timeout=1")
    started = time.monotonic()
    assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL
    assert time.monotonic() - started < 1.8


def test_daemon_that_dribbles_bytes_cannot_extend_the_timeout(stack, socket_path):
    """One deadline covers connect, send and reply: a byte a second is no help."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1)

    def dribble():
        conn, _ = listener.accept()
        conn.recv(4096)
        for byte in NEED_CODE:
            try:
                conn.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
        conn.close()

    import threading
    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    stack.write("timeout=1")
    started = time.monotonic()
    try:
        assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL
        assert time.monotonic() - started < 1.8
    finally:
        listener.close()


def test_connected_but_not_accepting_daemon_times_out(stack, socket_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(0)  # never accept(): connect lands in the backlog, then silence
    stack.write("timeout=1")
    started = time.monotonic()
    try:
        assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL
        assert time.monotonic() - started < 1.8
    finally:
        listener.close()


def test_missing_socket_is_authinfo_unavail_quickly_with_a_message(stack):
    started = time.monotonic()
    result = stack.auth("123456")
    assert result.retcode == PAM_AUTHINFO_UNAVAIL
    assert time.monotonic() - started < 0.5
    assert result.prompts == []
    assert len(result.errors) == 1 and "unavailable" in result.errors[0]


def test_socket_file_without_listener_is_authinfo_unavail_quickly(stack, socket_path):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(socket_path)
    dead.close()  # the file stays, nobody listens: ECONNREFUSED
    started = time.monotonic()
    assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL
    assert time.monotonic() - started < 0.5


def test_regular_file_at_socket_path_is_refused(stack, socket_path):
    with open(socket_path, "w") as f:
        f.write("ACCEPTED\n")
    assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL


def test_symlink_at_socket_path_is_refused(stack, workdir, socket_path):
    real = str(workdir / "real.sock")
    server = FakeDaemon(real, standard_handler())
    try:
        os.symlink(real, socket_path)
        assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL
        assert server.received == []
    finally:
        server.stop()


def test_relative_or_overlong_socket_option_is_refused(stack, fake_daemon):
    fake_daemon()
    for bad in ("totpd.sock", "/" + "x" * 200):
        stack.socket_path = bad
        stack.write()
        assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL


def test_socket_owned_by_another_user_is_refused(stack, fake_daemon, socket_path):
    server = fake_daemon()
    nobody = pwd.getpwnam("nobody")
    os.chown(socket_path, nobody.pw_uid, nobody.pw_gid)
    result = stack.auth("123456")
    assert result.retcode == PAM_AUTHINFO_UNAVAIL
    assert server.received == []


def test_socket_owned_by_daemon_user_is_trusted(stack, fake_daemon, socket_path):
    fake_daemon()
    nobody = pwd.getpwnam("nobody")
    os.chown(socket_path, nobody.pw_uid, nobody.pw_gid)
    stack.write("daemon_user=nobody")
    assert stack.auth("123456").retcode == PAM_SUCCESS


def test_nonexistent_daemon_user_trusts_only_root(stack, fake_daemon, socket_path):
    fake_daemon()
    stack.write("daemon_user=no-such-user-totpd")
    assert stack.auth("123456").retcode == PAM_SUCCESS  # root-owned socket, root peer
    nobody = pwd.getpwnam("nobody")
    os.chown(socket_path, nobody.pw_uid, nobody.pw_gid)
    assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL


PEER_AS_NOBODY = textwrap.dedent("""
    import os, socket, struct, sys
    path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)                      # the file is owned by root ...
    os.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)
    s.listen(8)                       # ... but SO_PEERCRED is taken at listen(): nobody
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        try:
            if c.recv(4096):
                payload = b"ACCEPTED\\n"
                c.sendall(b"TD\\x01\\x00" + struct.pack(">I", len(payload)) + payload)
        except OSError:
            pass
        c.close()
""")


def test_peer_not_running_as_root_or_daemon_user_is_refused(stack, socket_path):
    nobody = pwd.getpwnam("nobody")
    proc = subprocess.Popen([sys.executable, "-c", PEER_AS_NOBODY, socket_path,
                             str(nobody.pw_uid), str(nobody.pw_gid)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert os.stat(socket_path).st_uid == 0
        assert stack.auth("123456").retcode == PAM_AUTHINFO_UNAVAIL
        stack.write("daemon_user=nobody")
        assert stack.auth("123456").retcode == PAM_SUCCESS  # the same peer, now trusted
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------ under ASan

ASAN_CASES = ["garbage_bytes", "oversized_length", "huge_length", "truncated_payload",
              "truncated_header", "bad_magic", "version_2", "flags_set", "zero_length",
              "no_final_lf", "duplicate_message", "control_char_in_message", "invalid_utf8",
              "truncated_utf8", "message_over_512", "payload_4097", "nothing_then_close"]

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                     "SUMMARY: UndefinedBehaviorSanitizer")


def _assert_no_sanitizer_report(stderr: str) -> None:
    for marker in SANITIZER_MARKERS:
        assert marker not in stderr, stderr[-4000:]


def test_asan_harness_reports_a_planted_bug(tmp_path, asan_env):
    """The ASan runs below prove something only if a bug would show up."""
    source = tmp_path / "pam_planted.c"
    source.write_text(textwrap.dedent("""
        #include <stdlib.h>
        #include <string.h>
        #include <security/pam_modules.h>
        int pam_sm_authenticate(pam_handle_t *h, int f, int c, const char **v) {
            (void)h; (void)f; (void)c; (void)v;
            char *p = malloc(8); volatile int n = 9; memset(p, 0, n); free(p);
            return PAM_AUTH_ERR;
        }
        int pam_sm_setcred(pam_handle_t *h, int f, int c, const char **v) {
            (void)h; (void)f; (void)c; (void)v; return PAM_SUCCESS; }
    """))
    module = tmp_path / "pam_planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-fsanitize=address,undefined", "-g", "-o",
                    str(module), str(source), "-lpam"], check=True)
    confdir = tmp_path / "pam.d"
    pamdriver.write_confdir(str(confdir), "planted", f"auth required {module}")
    with pytest.raises(RuntimeError, match="heap-buffer-overflow"):
        pamdriver.run_isolated("planted", "alice", str(confdir), "x", env=asan_env)


@pytest.mark.parametrize("phase", ["check", "verify"])
def test_malformed_replies_under_asan_never_succeed_and_report_nothing(
        stack, fake_daemon, pam_module_asan, asan_env, phase):
    users = {f"asan{i}": MALFORMED_REPLIES[name] for i, name in enumerate(ASAN_CASES)}

    def handler(request):
        bad = users[request.fields["user"]]
        if phase == "check":
            return bad
        return NEED_CODE if request.verb == "check" else bad

    fake_daemon(handler)
    stack.write("timeout=2 debug", module=pam_module_asan)
    requests = [{"service": stack.service, "user": user, "confdir": str(stack.confdir),
                 "answer": "123456"} for user in users]
    results = pamdriver.run_isolated_batch(requests, env=asan_env)
    assert [r.retcode for r in results] == [PAM_AUTHINFO_UNAVAIL] * len(users)
    _assert_no_sanitizer_report(results[0].stderr)


def test_full_flow_and_hostile_input_under_asan(stack, fake_daemon, pam_module_asan, asan_env, workdir):
    fake_daemon(standard_handler(check=reply("NEED_CODE", prompt="Code: ", message="hi"),
                                 verify=reply("ACCEPTED", message="ok")))
    stack.write("timeout=2 debug [prompt=Your code: ]", module=pam_module_asan)
    base = {"service": stack.service, "confdir": str(stack.confdir)}
    requests = [
        {**base, "user": "alice", "answer": "123456", "rhost": "192.0.2.7", "tty": "ssh"},
        {**base, "user": "alice", "answer": ""},
        {**base, "user": "alice", "answer": "9" * 5000},
        {**base, "user": "alice", "answer": "12\x1b34"},
        {**base, "user": "al\nice", "answer": "123456"},
        {**base, "user": "x" * 5000, "answer": "123456"},
        {**base, "user": "alice", "answer": "123456", "rhost": "r" * 5000},
        {**base, "user": "alice", "answer": None},
    ]
    results = pamdriver.run_isolated_batch(requests, env=asan_env)
    assert results[0].retcode == PAM_SUCCESS
    assert all(r.retcode != PAM_SUCCESS for r in results[1:])
    _assert_no_sanitizer_report(results[0].stderr)

    after = f"auth required pam_exec.so expose_authtok quiet /bin/true"
    stack.write("forward_pass", module=pam_module_asan, control="requisite", after=after)
    results = pamdriver.run_isolated_batch([
        {**base, "user": "alice", "answer": "password123456"},
        {**base, "user": "alice", "answer": "12345"},
        {**base, "user": "alice", "answer": "p" * 3000 + "123456"},
    ], env=asan_env)
    assert [r.retcode for r in results][:2] == [PAM_SUCCESS, PAM_AUTH_ERR]
    _assert_no_sanitizer_report(results[0].stderr)


# ------------------------------------------------------------------ fuzz

def _expected(check_reply: bytes, verify_reply: bytes) -> int:
    """What docs/protocol.md says the module returns, from the reference parser."""
    status = reference_status(check_reply)
    if status == "ENROLL":  # login_enroll, then login_confirm, both get verify_reply: only a refusal keeps its code
        status = reference_status(verify_reply, enrolling=True)
        return STATUS_TO_PAM[status] if status in ("REJECTED", "DENIED", "LOCKED", "UNKNOWN_USER") else PAM_AUTHINFO_UNAVAIL
    if status == "NEED_CODE":
        status = reference_status(verify_reply)
        if status == "NEED_CODE":
            return PAM_AUTHINFO_UNAVAIL
    code = STATUS_TO_PAM.get(status, PAM_AUTHINFO_UNAVAIL)
    # pam_totpd is alone in the stack: libpam reports an all-ignored stack as PAM_PERM_DENIED
    return pamdriver.PAM_PERM_DENIED if code == pamdriver.PAM_IGNORE else code


STATUSES = ["ACCEPTED", "NEED_CODE", "REJECTED", "DENIED", "LOCKED", "IGNORE", "UNKNOWN_USER", "ENROLL",
            "BUSY", "OK", "accepted", "ACCEPTED ", "", "ACCEPTED\x00", "A" * 33, "ÄCCEPTED"]
KEYS = ["message", "prompt", "version", "x", "", "Message", "k" * 33, "a-b", "message ", "info", "qr"]
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["ok", "", " ", "m" * 512, "m" * 513, "\x1b", "\u0085", "\u00e9", "\r"]),
)


@st.composite
def structured_reply(draw) -> bytes:
    status = draw(st.sampled_from(STATUSES))
    lines = [status] + [f"{draw(st.sampled_from(KEYS))}={draw(VALUES)}"
                        for _ in range(draw(st.integers(0, 4)))]
    payload = ("\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))).encode(
        "utf-8", "surrogatepass")
    if draw(st.booleans()):
        payload = payload.replace(b"\xc3\xa9", draw(st.sampled_from([b"\xc3", b"\xff", b"\xc3\xa9"])))
    magic = draw(st.sampled_from([b"TD", b"TD", b"TD", b"DT", b"\x00\x00"]))
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 255]))
    flags = draw(st.sampled_from([0, 0, 0, 1, 128]))
    length = draw(st.sampled_from([None, None, None, 0, 4097, len(payload) + 1,
                                   max(len(payload) - 1, 0), 0xFFFFFFFF]))
    return frame(payload, magic=magic, version=version, flags=flags, length=length)


REPLIES = st.one_of(structured_reply(), st.binary(max_size=64),
                    st.just(reply("ACCEPTED")), st.just(NEED_CODE), st.just(reply("ENROLL")))


class _FuzzServer:
    """A fake daemon whose replies a hypothesis example can swap."""

    def __init__(self, path):
        self.check_reply = NEED_CODE
        self.verify_reply = reply("ACCEPTED")
        self.server = FakeDaemon(path, self._handle)

    def _handle(self, request):
        return self.check_reply if request.verb == "check" else self.verify_reply


@pytest.fixture
def fuzz_server(stack):
    stack.write("timeout=1")
    server = _FuzzServer(stack.socket_path)
    yield server
    server.server.stop()


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(check_reply=REPLIES, verify_reply=REPLIES)
def test_fuzzed_replies_map_exactly_as_the_protocol_says(stack, fuzz_server, check_reply, verify_reply):
    """Never PAM_SUCCESS unless the reply is an exact, well-formed ACCEPTED; and every
    other outcome is the one docs/protocol.md's table gives (differential test)."""
    fuzz_server.check_reply = check_reply
    fuzz_server.verify_reply = verify_reply
    result = stack.auth("123456")
    assert result.retcode == _expected(check_reply, verify_reply), (check_reply, verify_reply)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        choice = rng.random()
        if choice < 0.2 and len(data) > 8:  # often keeps the frame valid: a printable byte
            data[rng.randrange(8, len(data))] = rng.choice(b"AZaz_=09 ")
        elif choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6 and data:
            start = rng.randrange(len(data))
            del data[start:start + rng.randint(1, 8)]
        elif choice < 0.8:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data[8:8] = rng.choice([b"message=x\n", b"\n", b"=", b"\xc2\x85", b"\x00"])
    return bytes(data)


def test_mutated_replies_under_asan_never_succeed_unless_well_formed(
        stack, fake_daemon, pam_module_asan, asan_env):
    rng = random.Random(20240601)
    seeds = [reply("ACCEPTED"), reply("ACCEPTED", message="ok"), NEED_CODE,
             reply("REJECTED", message="Wrong or already used verification code.")]
    cases = {}
    for i in range(300):
        check = _mutate(rng, rng.choice(seeds)) if rng.random() < 0.4 else NEED_CODE
        verify = _mutate(rng, rng.choice(seeds)) if rng.random() < 0.9 else rng.choice(seeds)
        cases[f"fuzz{i}"] = (check, verify)

    def handler(request):
        check, verify = cases[request.fields["user"]]
        return check if request.verb == "check" else verify

    fake_daemon(handler)
    stack.write("timeout=1", module=pam_module_asan)
    requests = [{"service": stack.service, "user": user, "confdir": str(stack.confdir),
                 "answer": "123456"} for user in cases]
    results = pamdriver.run_isolated_batch(requests, env=asan_env, timeout=600)
    _assert_no_sanitizer_report(results[0].stderr)
    for (user, (check, verify)), result in zip(cases.items(), results):
        assert result.retcode == _expected(check, verify), (user, check, verify)
    assert any(r.retcode == PAM_SUCCESS for r in results)  # the oracle is not vacuous
    assert any(r.retcode != PAM_SUCCESS for r in results)


def test_code_typed_is_never_accepted_without_a_daemon_reply(stack):
    assert stack.auth("123456").retcode != PAM_SUCCESS
    assert stack.auth("").retcode in (PAM_AUTH_ERR, PAM_AUTHINFO_UNAVAIL)


# ------------------------------------------------------- enrollment at login

def _lines_reply(status: str, lines: list[tuple[str, str]]) -> bytes:
    return frame(("\n".join([status] + [f"{key}={value}" for key, value in lines]) + "\n").encode())


QR_ROWS = [("info", "Scan this:"), ("qr", "  \u2588\u2580\u2584 \u2588  "), ("info", "  ABCD EFGH")]
CODES = [("info", "Recovery codes:"), ("info", "  abcd-efgh-ijkm")]


def _enroll_handler(enroll: bytes, confirm: bytes = _lines_reply("ACCEPTED", CODES)):
    def handler(request):
        return {"check": reply("ENROLL"), "login_enroll": enroll, "login_confirm": confirm}.get(request.verb, b"")
    return handler


def test_enrollment_shows_the_lines_in_the_code_prompt_and_the_recovery_codes_in_a_last_one(stack, fake_daemon):
    server = fake_daemon(_enroll_handler(_lines_reply("NEED_CODE", QR_ROWS)))
    result = stack.auth(["123456", ""], user="alice", rhost="192.0.2.7")
    assert result.retcode == PAM_SUCCESS
    assert result.messages == [
        (pamdriver.PAM_PROMPT_ECHO_OFF, "Scan this:\n  \u2588\u2580\u2584 \u2588  \n  ABCD EFGH\nCode from the app: "),
        (pamdriver.PAM_PROMPT_ECHO_ON, "Recovery codes:\n  abcd-efgh-ijkm\nPress Enter to continue: "),
    ]
    assert server.verbs == ["check", "login_enroll", "login_confirm"]
    assert server.received[2].fields["code"] == "123456" and server.received[2].fields["rhost"] == "192.0.2.7"


@pytest.mark.parametrize("name, enroll", [
    ("escape_in_a_qr_row", _lines_reply("NEED_CODE", [("qr", "\x1b[2J\u2588")])),
    ("c1_control_in_a_line", _lines_reply("NEED_CODE", [("info", "a\u009bb")])),
    ("line_over_512_bytes", _lines_reply("NEED_CODE", [("info", "x" * 513)])),
    ("65_lines", _lines_reply("NEED_CODE", [("info", "x")] * 65)),
    ("over_16384_bytes", _lines_reply("NEED_CODE", [("info", "x" * 500)] * 33)),
    ("accepted_without_a_code", _lines_reply("ACCEPTED", CODES)),
    ("ignore_without_a_code", reply("IGNORE")),
])
def test_a_bad_login_enroll_reply_fails_closed_without_a_prompt(stack, fake_daemon, name, enroll):
    fake_daemon(_enroll_handler(enroll))
    result = stack.auth("123456")
    assert result.retcode == PAM_AUTHINFO_UNAVAIL, name
    assert result.prompts == []


@pytest.mark.parametrize("confirm, retcode, shown", [
    (reply("REJECTED", message="Wrong code."), PAM_AUTH_ERR, "Wrong code."),
    (reply("LOCKED", message="Locked."), pamdriver.PAM_MAXTRIES, "Locked."),
    (reply("NEED_CODE", message="Again?"), PAM_AUTHINFO_UNAVAIL, "Again?"),
    (reply("IGNORE", message="Carry on."), PAM_AUTHINFO_UNAVAIL, "administrator"),
])
def test_a_login_confirm_reply_other_than_accepted_ends_the_login_showing_a_refusal_or_the_unavailable_text(
        stack, fake_daemon, confirm, retcode, shown):
    """A refusal keeps its code and message; a status that leads nowhere is unavailable with its
    message; a yes out of turn is unavailable with the module's own text, never the daemon's."""
    fake_daemon(_enroll_handler(_lines_reply("NEED_CODE", QR_ROWS), confirm))
    result = stack.auth(["123456", ""])
    assert result.retcode == retcode
    assert len(result.prompts) == 1 and len(result.errors) == 1 and shown in result.errors[0]


def test_the_largest_enrollment_reply_is_shown(stack, fake_daemon):
    lines = [("info", "x" * 500)] * 32
    payload_len = len(_lines_reply("NEED_CODE", lines)) - 8
    lines.append(("info", "y" * (16384 - payload_len - len("\ninfo="))))
    enroll = _lines_reply("NEED_CODE", lines)
    assert len(enroll) - 8 == 16384
    fake_daemon(_enroll_handler(enroll))
    assert stack.auth(["123456", ""]).retcode == PAM_SUCCESS


@pytest.mark.parametrize("confirm, expected", [
    (reply("REJECTED", message="Wrong verification code."), PAM_AUTH_ERR),
    (reply("IGNORE"), PAM_AUTHINFO_UNAVAIL),
    (reply("NEED_CODE"), PAM_AUTHINFO_UNAVAIL),
    (_lines_reply("ACCEPTED", [("info", "\x07")]), PAM_AUTHINFO_UNAVAIL),
])
def test_only_an_accepted_first_code_lets_the_login_on(stack, fake_daemon, confirm, expected):
    fake_daemon(_enroll_handler(_lines_reply("NEED_CODE", QR_ROWS), confirm))
    result = stack.auth(["123456", ""])
    assert result.retcode == expected
    assert len(result.prompts) == 1


def test_enrollment_flow_and_hostile_lines_under_asan(stack, fake_daemon, pam_module_asan, asan_env):
    cases = {
        "ok": (_lines_reply("NEED_CODE", QR_ROWS), _lines_reply("ACCEPTED", CODES)),
        "huge": (_lines_reply("NEED_CODE", [("qr", "\u2588" * 170)] * 30), _lines_reply("ACCEPTED", CODES * 32)),
        "toomany": (_lines_reply("NEED_CODE", [("info", "")] * 65), reply("ACCEPTED")),
        "bad": (frame(b"NEED_CODE\nqr=\xe2\x96\x88\xff\n"), reply("ACCEPTED")),
    }

    def handler(request):
        enroll, confirm = cases[request.fields["user"]]
        return {"check": reply("ENROLL"), "login_enroll": enroll, "login_confirm": confirm}[request.verb]

    fake_daemon(handler)
    stack.write("timeout=2", module=pam_module_asan)
    results = pamdriver.run_isolated_batch(
        [{"service": stack.service, "user": user, "confdir": str(stack.confdir), "answer": "123456"} for user in cases],
        env=asan_env)
    _assert_no_sanitizer_report(results[0].stderr)
    assert [r.retcode for r in results] == [PAM_SUCCESS, PAM_SUCCESS, PAM_AUTHINFO_UNAVAIL, PAM_AUTHINFO_UNAVAIL]
