"""The daemon as a real process on a real socket: the Core feature list."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import select
import shutil
import sqlite3
import stat
import time

import pyotp
import pytest

import wire
from totpd.protocol import encode_request


# Every test in this file runs twice: on the embedded SQLite store and on PostgreSQL
# (fleet mode; conftest's make_daemon gives each test a fresh database).
@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


def code(secret: str, steps_from_now: int = 0, **params) -> str:
    totp = pyotp.TOTP(secret, **params)
    return totp.at(time.time() + steps_from_now * totp.interval)


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


# -- enrollment ---------------------------------------------------------------------


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


def test_enroll_json_reports_uri_secret_and_recovery_codes(daemon):
    out = daemon.enroll_json("alice", "--issuer", "Example Corp")
    assert out["uri"].startswith("otpauth://totp/Example%20Corp:alice?secret=")
    assert "issuer=Example%20Corp" in out["uri"]
    assert "algorithm" not in out["uri"] and "digits" not in out["uri"] and "period" not in out["uri"]
    assert len(base64.b32decode(out["secret"] + "=" * (-len(out["secret"]) % 8))) == 20
    assert len(out["recovery_codes"]) == 10 and len(set(out["recovery_codes"])) == 10


def test_enroll_with_non_default_parameters_puts_them_in_the_uri_and_verifies(daemon):
    out = daemon.enroll_json("alice", "--digits", "8", "--algorithm", "sha256", "--period", "60")
    assert "algorithm=SHA256" in out["uri"] and "digits=8" in out["uri"] and "period=60" in out["uri"]
    totp = pyotp.TOTP(out["secret"], digits=8, digest="sha256", interval=60)
    assert verify(daemon, "alice", totp.now()).status == "ACCEPTED"


def test_enrolling_an_enrolled_account_needs_force(daemon):
    daemon.enroll("alice")
    again = daemon.ctl("enroll", "alice", "--no-confirm", "--json")
    assert again.returncode == 1 and "--force" in again.stderr
    new_secret = daemon.enroll("alice", None, "--force")
    assert verify(daemon, "alice", code(new_secret)).status == "ACCEPTED"


def test_a_secret_is_never_taken_from_the_command_line(daemon):
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--secret", "JBSWY3DPEHPK3PXPJBSWY3DP")
    assert result.returncode == 2


def test_a_malformed_provisioned_secret_gets_a_clear_error(daemon):
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--secret-file", "-", input="not base32 at all!\n")
    assert result.returncode == 1 and "base32" in result.stderr


def test_only_existing_accounts_can_be_enrolled_when_check_accounts_is_on(make_daemon):
    daemon = make_daemon(check_accounts=True)
    assert daemon.ctl("enroll", "root", "--no-confirm", "--json").returncode == 0
    missing = daemon.ctl("enroll", "no-such-user-xyz", "--no-confirm")
    assert missing.returncode == 1 and "no-such-user-xyz" in missing.stderr
    assert wire.request(daemon.socket_path, "check", user="no-such-user-xyz").status == "UNKNOWN_USER"


# -- verification -------------------------------------------------------------------


def test_right_code_is_accepted_wrong_code_rejected_replayed_code_rejected(daemon):
    secret = daemon.enroll("alice")
    good = code(secret)
    assert verify(daemon, "alice", good).status == "ACCEPTED"
    wrong = verify(daemon, "alice", "000000" if good != "000000" else "111111")
    assert wrong.status == "REJECTED" and wrong.message
    replay = verify(daemon, "alice", good, service="sudo")
    assert replay.status == "REJECTED" and "already used" in replay.message


def test_a_code_from_an_earlier_step_is_refused_once_a_later_one_was_used(daemon):
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", code(secret, +1)).status == "ACCEPTED"
    assert verify(daemon, "alice", code(secret, 0)).status == "REJECTED"


def test_codes_outside_the_window_are_refused(daemon):
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", code(secret, -3)).status == "REJECTED"
    assert verify(daemon, "alice", code(secret, +3)).status == "REJECTED"


def test_check_asks_for_a_code_for_enrolled_accounts_and_denies_unenrolled_ones(daemon):
    daemon.enroll("alice")
    reply = wire.request(daemon.socket_path, "check", user="alice", service="sshd")
    assert reply.status == "NEED_CODE" and reply.fields["prompt"] == "Verification code: "
    denied = wire.request(daemon.socket_path, "check", user="bob", service="sshd")
    assert denied.status == "DENIED" and "totpctl enroll bob" in denied.message


def test_unenrolled_accounts_pass_to_the_rest_of_the_stack_when_policy_allows(make_daemon):
    daemon = make_daemon(unenrolled="allow")
    assert wire.request(daemon.socket_path, "check", user="bob").status == "IGNORE"
    assert verify(daemon, "bob", "123456").status == "IGNORE"


def test_fifty_simultaneous_submissions_of_one_code_accept_exactly_one(daemon):
    secret = daemon.enroll("alice")
    good = code(secret)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: verify(daemon, "alice", good).status, range(50)))
    assert statuses.count("ACCEPTED") == 1, statuses
    assert set(statuses) == {"ACCEPTED", "REJECTED"}


def test_verify_command_exits_zero_only_when_accepted(daemon):
    secret = daemon.enroll("alice")
    good = code(secret)
    assert daemon.ctl("verify", "alice", good).returncode == 0
    assert daemon.ctl("verify", "alice", good).returncode == 1
    assert daemon.ctl("verify", "alice", "-", input=code(secret, 1) + "\n").returncode == 0


# -- throttling ---------------------------------------------------------------------


def test_consecutive_failures_lock_the_account_until_an_admin_unlocks_it(make_daemon):
    daemon = make_daemon(max_failures=5, backoff_after=5)
    secret = daemon.enroll("alice")
    statuses = [verify(daemon, "alice", "000001", service=("sshd", "sudo")[i % 2]).status for i in range(5)]
    assert statuses == ["REJECTED"] * 4 + ["LOCKED"]
    locked = verify(daemon, "alice", code(secret))
    assert locked.status == "LOCKED" and "totpctl unlock alice" in locked.message
    assert wire.request(daemon.socket_path, "check", user="alice").status == "LOCKED"
    assert json.loads(daemon.ctl("status", "alice", "--json").stdout)["locked"] is True
    assert daemon.ctl("unlock", "alice").returncode == 0
    assert verify(daemon, "alice", code(secret)).status == "ACCEPTED"


def test_failures_back_off_exponentially_and_a_success_resets_the_count(make_daemon):
    daemon = make_daemon(backoff_after=2, backoff_initial=1.0, max_failures=50)
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", "000001").status == "REJECTED"
    assert verify(daemon, "alice", "000001").status == "REJECTED"  # second failure: 1 s backoff starts
    waiting = verify(daemon, "alice", code(secret))
    assert waiting.status == "LOCKED" and "try again in 1 second" in waiting.message
    time.sleep(1.1)
    assert verify(daemon, "alice", "000001").status == "REJECTED"  # third failure: 2 s
    assert "try again in 2 seconds" in verify(daemon, "alice", code(secret)).message
    time.sleep(2.1)
    assert verify(daemon, "alice", code(secret)).status == "ACCEPTED"
    assert json.loads(daemon.ctl("status", "alice", "--json").stdout)["failures"] == 0


def test_lock_and_backoff_survive_a_restart(make_daemon):
    daemon = make_daemon(max_failures=3, backoff_after=3)
    secret = daemon.enroll("alice")
    for _ in range(3):
        verify(daemon, "alice", "000001")
    daemon.restart()
    assert verify(daemon, "alice", code(secret)).status == "LOCKED"


# -- recovery codes -----------------------------------------------------------------


def test_a_recovery_code_works_once_in_place_of_a_code(daemon):
    codes = daemon.enroll_json("alice")["recovery_codes"]
    first = verify(daemon, "alice", codes[0].upper().replace("-", " "))
    assert first.status == "ACCEPTED" and "recovery code" in first.message
    assert verify(daemon, "alice", codes[0]).status == "REJECTED"
    assert json.loads(daemon.ctl("status", "alice", "--json").stdout)["recovery_codes_left"] == 9
    assert "recovery_code_used" in daemon.log()


def test_regenerated_recovery_codes_replace_the_old_ones(daemon):
    old = daemon.enroll_json("alice")["recovery_codes"]
    result = daemon.ctl("recovery-codes", "alice", "--regenerate", "--json")
    new = json.loads(result.stdout)["recovery_codes"]
    assert len(new) == 10 and not set(new) & set(old)
    assert verify(daemon, "alice", old[1]).status == "REJECTED"
    assert verify(daemon, "alice", new[1]).status == "ACCEPTED"


# -- durability and state -----------------------------------------------------------


def test_a_restart_keeps_enrollments_replay_state_and_recovery_code_use(daemon):
    out = daemon.enroll_json("alice")
    good = code(out["secret"])
    assert verify(daemon, "alice", good).status == "ACCEPTED"
    assert verify(daemon, "alice", out["recovery_codes"][0]).status == "ACCEPTED"
    daemon.restart()
    assert verify(daemon, "alice", good).status == "REJECTED"
    assert verify(daemon, "alice", out["recovery_codes"][0]).status == "REJECTED"
    assert verify(daemon, "alice", code(out["secret"], 1)).status == "ACCEPTED"


def test_reset_removes_the_enrollment(daemon):
    secret = daemon.enroll("alice")
    assert daemon.ctl("reset", "alice").returncode == 0
    assert verify(daemon, "alice", code(secret)).status == "DENIED"
    missing = daemon.ctl("reset", "alice")
    assert missing.returncode == 1 and "not enrolled" in missing.stderr


def test_list_shows_every_account_as_a_table_and_as_json(daemon):
    for name in ("carol", "alice", "bob"):
        daemon.enroll(name)
    table = daemon.ctl("list").stdout
    assert table.index("alice") < table.index("bob") < table.index("carol") and "3 accounts" in table
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert [entry["user"] for entry in listed] == ["alice", "bob", "carol"]


def test_list_pages_through_more_accounts_than_one_reply_holds(daemon):
    # Pending enrollments list like any other and cost no recovery-code hashing.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: wire.request(daemon.socket_path, "enroll", user=f"user{i:04d}"), range(520)))
    assert {reply.status for reply in replies} == {"OK"}
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert [entry["user"] for entry in listed] == [f"user{i:04d}" for i in range(520)]


# -- secrets at rest ----------------------------------------------------------------


def test_secrets_are_sealed_and_state_files_are_private(daemon, backend):
    secret = daemon.enroll("alice")
    state = os.path.dirname(daemon.settings["key_file"])  # with SQLite, the database is beside the key
    raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    for name in os.listdir(state):
        path = os.path.join(state, name)
        with open(path, "rb") as handle:
            data = handle.read()
        assert raw not in data and secret.encode() not in data, path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    # Every value of every row, whichever the store: the secret appears in none of them.
    if backend == "sqlite":
        db = sqlite3.connect(os.path.join(state, "totpd.db"))
        query = db.execute
    else:
        import psycopg

        db = psycopg.connect(daemon.settings["database"], autocommit=True)
        query = db.execute
    for table in ("accounts", "recovery_codes", "meta"):
        for row in query(f"SELECT * FROM {table}").fetchall():
            for value in row:
                data = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                assert raw not in data and secret.encode() not in data and raw.hex().encode() not in data, table
    rows = query("SELECT hash FROM recovery_codes").fetchall()
    db.close()
    assert rows and all(row[0].startswith("$argon2id$") for row in rows)


def test_a_database_copied_without_its_key_yields_no_secret(make_daemon, backend):
    first = make_daemon()
    first.enroll("alice")
    first.stop()
    other = make_daemon(start=False)
    other.write_config(key_file=str(other.workdir / "state" / "master.key"))  # its own key, not first's
    if backend == "sqlite":
        (other.workdir / "state").mkdir()
        shutil.copy(first.workdir / "state" / "totpd.db", other.workdir / "state" / "totpd.db")
    # (PostgreSQL: `other` is a host whose key differs from the fleet's, on the same database.)
    # SQLite: the key is missing beside an existing database and none is made up for it.
    expect = "master key is missing" if backend == "sqlite" else "master key does not open this database"
    with pytest.raises(RuntimeError, match=expect):
        other.start()


def test_nothing_secret_reaches_the_log(daemon):
    out = daemon.enroll_json("alice")
    good = code(out["secret"])
    verify(daemon, "alice", good)
    verify(daemon, "alice", "987654")
    verify(daemon, "alice", out["recovery_codes"][0])
    log = daemon.log()
    assert "event=verify" in log
    for needle in [out["secret"], good, "987654", *out["recovery_codes"], out["recovery_codes"][0].replace("-", "")]:
        assert needle not in log


# -- callers ------------------------------------------------------------------------


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


def test_a_user_may_verify_their_own_account_like_a_screen_locker(daemon):
    secret = daemon.enroll("nobody")
    assert daemon.ctl("verify", "nobody", code(secret), user=65534).returncode == 0
    assert daemon.ctl("status", "nobody", user=65534).returncode == 0


def test_a_member_of_the_admin_group_may_manage_any_account(make_daemon):
    daemon = make_daemon(admin_group="nogroup")
    daemon.enroll("alice")
    assert daemon.ctl("list", user=65534).returncode == 0  # nobody's primary group is nogroup


# -- process lifecycle --------------------------------------------------------------


def test_sigterm_stops_cleanly_and_removes_the_socket(daemon):
    assert daemon.stop(15) == 0
    assert not os.path.exists(daemon.socket_path)
    assert "stopped" in daemon.log()


def test_sigint_stops_like_sigterm(daemon):
    assert daemon.stop(2) == 0
    assert not os.path.exists(daemon.socket_path)


def test_start_up_and_shut_down_say_each_step_once_in_order(daemon):
    assert daemon.stop(15) == 0
    steps = ["listening on " + daemon.socket_path, "stopping: finishing requests in flight", "stopped"]
    lines = [line for line in daemon.log().splitlines() if line.startswith("totpd: INFO:")]
    found = [index for step in steps for index, line in enumerate(lines) if step in line]
    assert len(found) == len(steps) and found == sorted(found), lines


def test_a_request_in_flight_at_sigterm_is_answered_before_the_daemon_stops(make_daemon):
    daemon = make_daemon(recovery_codes=50)  # fifty argon2 hashes: the answer takes a while
    with wire.connect(daemon.socket_path, timeout=30) as sock:
        sock.sendall(encode_request("enroll", {"user": "alice", "activate": "1"}))
        time.sleep(0.2)
        assert not select.select([sock], [], [], 0)[0], "answered before the signal: nothing was in flight"
        daemon.process.send_signal(15)
        reply = wire.read_reply(sock)
        assert reply.status == "OK" and len(reply.fields["recovery_codes"].split()) == 50
        assert wire.closed(sock)  # then the connection is closed
    assert daemon.process.wait(15) == 0
    assert "stopped" in daemon.log()


def test_a_stale_socket_from_a_killed_daemon_is_replaced(daemon):
    daemon.stop(9)
    assert os.path.exists(daemon.socket_path)
    daemon.start()
    assert wire.request(daemon.socket_path, "ping").status == "OK"


def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon, make_daemon, tmp_path):
    second = make_daemon(start=False, socket=daemon.socket_path)
    with pytest.raises(RuntimeError, match="already listening"):
        second.start()


def test_totpctl_names_the_socket_when_the_daemon_is_not_running(tmp_path):
    from daemonproc import DaemonProcess

    idle = DaemonProcess(tmp_path / "none")
    result = idle.ctl("status", "alice")
    assert result.returncode == 3
    assert idle.socket_path in result.stderr and "is totpd running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_re_enrolling_with_the_same_secret_does_not_revive_a_used_code(daemon):
    secret = daemon.enroll("alice")
    used = code(secret)
    assert verify(daemon, "alice", used).status == "ACCEPTED"
    assert daemon.enroll("alice", secret, "--force") == secret  # an admin re-enrolls, same seed
    assert verify(daemon, "alice", used).status == "REJECTED"
    assert verify(daemon, "alice", code(secret, 1)).status == "ACCEPTED"  # the next code still works
