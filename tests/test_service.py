"""The service against callers who are not the PAM module: what they may make it do.

Each test starts a real daemon and speaks to it over its socket, as root (the PAM
module's view) or as an ordinary uid (anyone who can reach the socket).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyotp

import wire
from daemonproc import SYSTEM_PYTHON, wrong_code

sys.path.insert(0, str(Path(__file__).resolve().parent / "pam"))
import pamdriver  # noqa: E402

NOBODY = 65534  # an account every Debian system has ("nobody")
RECOVERY_SHAPED = "abcd-efgh-ijkm"

# Opens `count` connections at once, sends each one request, and reports the statuses.
# Only the standard library: it runs as another uid on the system Python.
FLOOD = r"""
import json, socket, struct, sys
path, requests = sys.argv[1], json.loads(sys.argv[2])
socks = []
for verb, fields in requests:
    payload = ("\n".join([verb] + [f"{k}={v}" for k, v in fields.items()]) + "\n").encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    sock.sendall(b"TD\x01\x00" + struct.pack(">I", len(payload)) + payload)
    socks.append(sock)
statuses = []
for sock in socks:
    data = b""
    while len(data) < 8 or len(data) < 8 + struct.unpack(">I", data[4:8])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    statuses.append(data[8:].split(b"\n", 1)[0].decode())
print(json.dumps(statuses))
"""


def flood_as(uid: int, socket_path: str, requests: list[tuple[str, dict]]) -> subprocess.Popen:
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-c", FLOOD, socket_path, json.dumps(requests)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=uid, group=uid, extra_groups=[], cwd="/",
    )


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def pam_login(daemon, tmp_path, user: str, code: str) -> int:
    module = Path(__file__).resolve().parent.parent / "pam" / "pam_totpd.so"
    confdir = str(tmp_path / "pam.d")
    pamdriver.write_confdir(confdir, "sshd", [f"auth required {module} socket={daemon.socket_path}"])
    return pamdriver.authenticate("sshd", user, confdir, code, rhost="192.0.2.1").retcode


# -- expensive work is bounded --------------------------------------------------------


def test_a_flood_of_argon2_shaped_requests_from_one_uid_does_not_delay_root_logins(make_daemon, tmp_path):
    daemon = make_daemon(check_accounts=True, unenrolled="allow", max_connections_per_uid=64)
    daemon.enroll("nobody")  # the attacker's own account, with recovery codes to try
    secret = daemon.enroll("root")

    def root_check() -> None:  # an unenrolled account: NSS lookups, the work logins share with argon2 today
        assert wire.request(daemon.socket_path, "check", user="daemon", service="sshd").status == "IGNORE"

    baseline = statistics.median(timed(root_check) for _ in range(7))
    hostile = [("confirm", {"user": "nobody", "code": "123456"})] * 16
    hostile += [("verify", {"user": "nobody", "code": RECOVERY_SHAPED})] * 16
    attack = flood_as(NOBODY, daemon.socket_path, hostile)
    time.sleep(0.05)  # the flood is in the daemon: 32 requests, each asking for argon2 work
    login = timed(lambda: _accepted_login(daemon, tmp_path, secret))
    during = [timed(root_check) for _ in range(5)]
    out, err = attack.communicate(timeout=120)
    assert attack.returncode == 0, err
    statuses = json.loads(out)
    assert set(statuses[:16]) == {"NOT_ENROLLED"}  # no pending enrollment: refused before any hashing
    assert set(statuses[16:]) <= {"REJECTED", "LOCKED", "BUSY"}
    assert max(during) - baseline < 0.1, (baseline, during)  # the worst, not a typical, delay
    assert login < 0.1 + baseline * 4, (baseline, login)


def _accepted_login(daemon, tmp_path, secret: str) -> None:
    assert pam_login(daemon, tmp_path, "root", pyotp.TOTP(secret).now()) == pamdriver.PAM_SUCCESS


def test_recovery_shaped_guesses_count_against_the_throttle_before_any_hashing(make_daemon):
    daemon = make_daemon(backoff_after=3, backoff_initial=60.0)
    daemon.enroll("alice")
    replies = [wire.request(daemon.socket_path, "verify", user="alice", code=RECOVERY_SHAPED).status for _ in range(5)]
    assert replies == ["REJECTED", "REJECTED", "REJECTED", "LOCKED", "LOCKED"]
    status = json.loads(daemon.ctl("status", "alice", "--json").stdout)
    assert status["failures"] == 3  # the two refused in backoff were never judged, nor hashed


def test_concurrent_recovery_guesses_are_hashed_only_as_far_as_the_throttle_admits(make_daemon):
    daemon = make_daemon(backoff_after=3, backoff_initial=60.0)
    codes = daemon.enroll_json("alice")["recovery_codes"]
    one_search = _cpu_of_one_recovery_search(codes)
    before = _cpu_seconds(daemon.process.pid)
    attack = flood_as(0, daemon.socket_path, [("verify", {"user": "alice", "code": RECOVERY_SHAPED})] * 16)
    out, err = attack.communicate(timeout=120)
    assert attack.returncode == 0, err
    assert sorted(json.loads(out)) == ["LOCKED"] * 13 + ["REJECTED"] * 3
    # Three guesses are admitted (the third starts the backoff); thirteen searches unrun.
    assert _cpu_seconds(daemon.process.pid) - before < 6 * one_search, one_search


def _cpu_of_one_recovery_search(codes: list[str]) -> float:
    from totpd import recovery

    hashes = list(enumerate(recovery.hash_codes(codes)))
    started = time.process_time()
    assert recovery.find(RECOVERY_SHAPED, hashes) is None
    return time.process_time() - started


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_right_recovery_code_still_works_and_clears_the_failures_charged_for_it(daemon):
    enrolled = daemon.enroll_json("alice")
    secret = enrolled["secret"]
    assert wire.request(daemon.socket_path, "verify", user="alice", code=wrong_code(secret)).status == "REJECTED"
    reply = wire.request(daemon.socket_path, "verify", user="alice", code=enrolled["recovery_codes"][0])
    assert reply.status == "ACCEPTED"
    assert json.loads(daemon.ctl("status", "alice", "--json").stdout)["failures"] == 0


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


# -- context a non-root caller supplies is never believed -----------------------------


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


def test_a_non_root_caller_cannot_pick_a_service_policy_nor_forge_the_audit_context(make_daemon):
    daemon = make_daemon(check_accounts=True, unenrolled="deny", services={"lenient": {"unenrolled": "allow"}})
    status, _ = daemon.call_as(NOBODY, "check", user="nobody", service="lenient", rhost="198.51.100.7")
    assert status == "DENIED"  # the global rule, not the one of the service it named
    line = next(line for line in daemon.log().splitlines() if "event=check" in line and "uid=65534" in line)
    assert "service=" not in line and "rhost=" not in line
