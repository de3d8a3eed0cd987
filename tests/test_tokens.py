"""Several tokens per account, TOTP and HOTP (issue 20), against a real daemon, with codes
from oathtool (a client no one here wrote), and a daemon upgrading the previous schema
(the store's own upgrade tests, on both backends: tests/test_schema.py)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time

import pyotp
import pytest

from totpd import recovery
from totpd.sealing import KEY_CHECK, Sealer, load_key, secret_context

import wire


def verify(daemon, user: str, code: str):
    return wire.request(daemon.socket_path, "verify", user=user, code=code, service="sshd")


def oathtool_hotp(secret: str, counter: int, *options: str) -> str:
    return subprocess.run(
        ["oathtool", "--hotp", "-b", secret, "-c", str(counter), *options], capture_output=True, text=True, check=True
    ).stdout.strip()


def oathtool_totp(secret: str, at: float, *options: str, algorithm: str = "sha1") -> str:
    return subprocess.run(
        ["oathtool", f"--totp={algorithm}", "-b", secret, f"--now=@{int(at)}", *options],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def enroll(daemon, user: str, secret: str, *options: str):
    result = daemon.ctl("enroll", user, "--no-confirm", "--secret-file", "-", "--json", *options, input=secret + "\n")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def add(daemon, user: str, secret: str, *options: str):
    result = daemon.ctl("token", "add", user, "--no-confirm", "--secret-file", "-", "--json", *options, input=secret + "\n")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def tokens(daemon, user: str) -> dict[str, dict]:
    result = daemon.ctl("token", "list", user, "--json")
    assert result.returncode == 0, result.stderr
    return {token["name"]: token for token in json.loads(result.stdout)}


def test_an_hotp_token_takes_oathtool_codes_in_its_look_ahead_once_each_across_a_restart(make_daemon):
    daemon = make_daemon(hotp_window=3)
    secret = pyotp.random_base32()
    enrolled = enroll(daemon, "alice", secret, "--type", "hotp", "--counter", "5", "--name", "yubikey")
    assert enrolled["uri"].startswith("otpauth://hotp/") and "counter=5" in enrolled["uri"]
    assert verify(daemon, "alice", oathtool_hotp(secret, 4)).status == "REJECTED"  # below the counter: never valid
    assert verify(daemon, "alice", oathtool_hotp(secret, 5)).status == "ACCEPTED"
    replay = verify(daemon, "alice", oathtool_hotp(secret, 5))
    assert replay.status == "REJECTED" and "already used" in replay.message
    assert verify(daemon, "alice", oathtool_hotp(secret, 10)).status == "REJECTED"  # beyond 6 + 3
    assert verify(daemon, "alice", oathtool_hotp(secret, 8)).status == "ACCEPTED"  # skips 6 and 7
    assert "already used" in verify(daemon, "alice", oathtool_hotp(secret, 7)).message  # at or below: a replay
    assert tokens(daemon, "alice")["yubikey"]["counter"] == 9
    daemon.restart()
    assert "already used" in verify(daemon, "alice", oathtool_hotp(secret, 8)).message
    assert verify(daemon, "alice", oathtool_hotp(secret, 9)).status == "ACCEPTED"
    assert "token=yubikey" in daemon.log() and secret not in daemon.log()


def test_a_code_is_tried_against_every_token_and_a_wrong_one_counts_once(daemon):
    phone, key, sha = pyotp.random_base32(), pyotp.random_base32(), pyotp.random_base32(32)
    enroll(daemon, "alice", phone, "--name", "phone")
    add(daemon, "alice", key, "--name", "key", "--type", "hotp")
    add(daemon, "alice", sha, "--name", "sha", "--algorithm", "SHA256", "--digits", "8", "--period", "60")
    listed = tokens(daemon, "alice")
    assert {name: token["type"] for name, token in listed.items()} == {"phone": "totp", "key": "hotp", "sha": "totp"}
    assert (listed["sha"]["algorithm"], listed["sha"]["digits"], listed["sha"]["period"]) == ("SHA256", 8, 60)
    now = time.time()
    assert verify(daemon, "alice", oathtool_hotp(key, 0)).status == "ACCEPTED"
    assert verify(daemon, "alice", oathtool_totp(sha, now, "--digits=8", "--time-step-size=60s", algorithm="sha256")).status == "ACCEPTED"
    code = oathtool_totp(phone, now)
    assert verify(daemon, "alice", code).status == "ACCEPTED"
    # the phone's code is used; the other tokens' replay states are their own
    assert "already used" in verify(daemon, "alice", code).message
    assert verify(daemon, "alice", oathtool_hotp(key, 1)).status == "ACCEPTED"
    wrong = next(c for c in ("000000", "111111", "222222") if c not in {oathtool_totp(phone, now + k * 30) for k in (-1, 0, 1)}
                 and c not in {oathtool_hotp(key, n) for n in range(2, 13)})
    assert verify(daemon, "alice", wrong).status == "REJECTED"
    assert json.loads(daemon.ctl("status", "alice", "--json").stdout)["failures"] == 1  # once, not once per token
    assert re.search(r"event=verify user=alice .*token=key .*result=accepted", daemon.log())


def test_tokens_are_added_listed_and_removed_and_the_last_one_is_a_reset(daemon):
    enroll(daemon, "alice", pyotp.random_base32())
    second = pyotp.random_base32()
    add(daemon, "alice", second, "--name", "tablet")
    again = daemon.ctl("token", "add", "alice", "--name", "tablet", "--no-confirm")
    assert again.returncode == 1 and "already has a token 'tablet'" in again.stderr
    bad = daemon.ctl("token", "add", "alice", "--name", "Bad Name")
    assert bad.returncode == 2 and "token name" in bad.stderr
    assert set(tokens(daemon, "alice")) == {"default", "tablet"}
    assert daemon.ctl("token", "remove", "alice", "default").returncode == 0
    assert set(tokens(daemon, "alice")) == {"tablet"}
    last = daemon.ctl("token", "remove", "alice", "tablet")
    assert last.returncode == 1 and "totpctl reset alice" in last.stderr
    missing = daemon.ctl("token", "remove", "alice", "default")
    assert missing.returncode == 1 and "no token 'default'" in missing.stderr
    assert verify(daemon, "alice", pyotp.TOTP(second).now()).status == "ACCEPTED"


def test_max_tokens_bounds_an_account(make_daemon):
    daemon = make_daemon(max_tokens=2)
    enroll(daemon, "alice", pyotp.random_base32())
    add(daemon, "alice", pyotp.random_base32(), "--name", "two")
    third = daemon.ctl("token", "add", "alice", "--name", "three", "--no-confirm")
    assert third.returncode == 1 and "max_tokens" in third.stderr


def test_a_token_added_with_a_first_code_is_pending_until_that_code_and_keeps_the_recovery_codes(daemon):
    first = enroll(daemon, "alice", pyotp.random_base32())
    secret = pyotp.random_base32()
    added = daemon.ctl(
        "token", "add", "alice", "--name", "key", "--type", "hotp", "--counter", "3", "--secret-file", str(_file(daemon, secret)),
        "--json", input=oathtool_hotp(secret, 3) + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["pending"] is False
    assert "already used" in verify(daemon, "alice", oathtool_hotp(secret, 3)).message  # the first code is used
    assert verify(daemon, "alice", oathtool_hotp(secret, 4)).status == "ACCEPTED"
    status = json.loads(daemon.ctl("status", "alice", "--json").stdout)
    assert status["recovery_codes_left"] == len(first["recovery_codes"]) and status["tokens"] == 2


def _file(daemon, secret: str):
    path = daemon.workdir / "secret.txt"
    path.write_text(secret + "\n")
    return path


def test_a_user_adding_a_token_to_their_own_account_must_prove_an_existing_one(make_daemon):
    daemon = make_daemon(self_enroll=True)
    secret = pyotp.random_base32()
    enroll(daemon, "nobody", secret)
    status, message = daemon.call_as(65534, "token_add", user="nobody", token="second")
    assert status == "REJECTED" and "current code" in message
    status, message = daemon.call_as(65534, "token_add", user="nobody", token="second", proof="123456" if pyotp.TOTP(secret).now() != "123456" else "654321")
    assert status == "REJECTED"
    status, _ = daemon.call_as(65534, "token_add", user="nobody", token="second", proof=pyotp.TOTP(secret).now())
    assert status == "OK"
    status, message = daemon.call_as(65534, "token_add", user="nobody", token="third", activate=1)
    assert status == "FORBIDDEN"


# -- upgrade: a database written by the previous release ----------------------------------


def _previous_sqlite_database(daemon, secret: bytes, used_step: int, now: float) -> str:
    """The database as the previous release (schema 1, main at 06c5ea3) wrote it: its DDL,
    kept verbatim as migration 1, and its rows."""
    from totpd.store import schema
    from totpd.store.sql import SQLITE

    state = daemon.workdir / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    sealer = Sealer(load_key(str(state / "master.key"), create=True))
    path = state / "totpd.db"
    db = sqlite3.connect(path)
    for statement in schema.migration(1, SQLITE):
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")  # that release's record of the version
    db.execute("INSERT INTO meta (key, value) VALUES ('key_check', ?)", (sealer.seal(KEY_CHECK, "key-check"),))
    db.execute(
        "INSERT INTO accounts (user, secret, algorithm, digits, period, last_step, failures, created, confirmed)"
        " VALUES ('alice', ?, 'SHA1', 6, 30, ?, 2, ?, ?)",
        (sealer.seal(secret, secret_context("alice")), used_step, now - 100, now - 90),
    )
    db.execute(
        "INSERT INTO accounts (user, created, pending_secret, pending_algorithm, pending_digits, pending_period)"
        " VALUES ('carol', ?, ?, 'SHA1', 6, 30)",
        (now, sealer.seal(secret, secret_context("carol"))),
    )
    db.executemany(
        "INSERT INTO recovery_codes (user, id, hash) VALUES ('alice', ?, ?)",
        list(enumerate(recovery.hash_codes(["abcd-efgh-ijkm", "npqr-stuv-wxyz"]))),
    )
    db.commit()
    db.close()
    path.chmod(0o600)
    return str(path)


def test_the_new_daemon_upgrades_a_previous_sqlite_database_and_a_used_code_stays_used(make_daemon):
    daemon = make_daemon(start=False)
    secret = pyotp.random_base32()
    now = time.time()
    step = int(now) // 30
    path = _previous_sqlite_database(daemon, pyotp.TOTP(secret).byte_secret(), step, now)
    daemon.start()
    used = oathtool_totp(secret, step * 30)
    assert "already used" in verify(daemon, "alice", used).message
    listed = tokens(daemon, "alice")
    assert list(listed) == ["default"] and listed["default"]["type"] == "totp"
    status = json.loads(daemon.ctl("status", "alice", "--json").stdout)
    assert status["recovery_codes_left"] == 2 and status["failures"] == 2  # kept; a replay is not a guess
    assert verify(daemon, "alice", oathtool_totp(secret, (step + 1) * 30)).status == "ACCEPTED"
    assert verify(daemon, "alice", "abcd-efgh-ijkm").status == "ACCEPTED"
    confirm = daemon.ctl("confirm", "carol", oathtool_totp(secret, time.time()))
    assert confirm.returncode == 0, confirm.stderr  # a pending enrollment survives as the token "default"
    daemon.stop()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM totpd_schema").fetchall() == [(1,), (2,)]
    assert "secret" not in {row[1] for row in db.execute("PRAGMA table_info(accounts)")}
    db.close()


@pytest.mark.parametrize("counter, expected", list(enumerate(
    ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
)))
def test_oathtool_and_totpd_agree_on_the_rfc_4226_vectors(counter, expected):
    from totpd import otp

    secret = b"12345678901234567890"
    assert oathtool_hotp(otp.encode_secret(secret), counter) == expected
    assert otp.hotp(secret, counter, 6, "sha1") == expected


def test_resync_realigns_an_hotp_counter_from_two_consecutive_codes_and_is_audited(daemon):
    secret = pyotp.random_base32()
    enroll(daemon, "alice", secret, "--type", "hotp", "--name", "key")
    assert verify(daemon, "alice", oathtool_hotp(secret, 50)).status == "REJECTED"  # beyond the look-ahead
    far = daemon.ctl("resync", "alice", oathtool_hotp(secret, 50), oathtool_hotp(secret, 52))
    assert far.returncode == 1 and "not consecutive" in far.stderr
    done = daemon.ctl("resync", "alice", oathtool_hotp(secret, 50), oathtool_hotp(secret, 51), "--token", "key")
    assert done.returncode == 0, done.stderr
    assert tokens(daemon, "alice")["key"]["counter"] == 52
    assert "already used" in verify(daemon, "alice", oathtool_hotp(secret, 51)).message
    assert verify(daemon, "alice", oathtool_hotp(secret, 52)).status == "ACCEPTED"
    assert re.search(r"event=resync user=alice .*token=key .*result=accepted detail=\"?counter=0 to=52", daemon.log())
    again = daemon.ctl("resync", "alice", oathtool_hotp(secret, 50), oathtool_hotp(secret, 51))
    assert again.returncode == 1  # used codes never re-align anything
    missing = daemon.ctl("resync", "alice", "123456", "654321", "--token", "nope")
    assert missing.returncode == 1 and "no token 'nope'" in missing.stderr


def test_a_totp_tokens_clock_offset_is_learned_one_step_at_a_time_and_resync_sets_it(make_daemon):
    daemon = make_daemon(max_skew=3)
    secret = pyotp.random_base32()
    enroll(daemon, "alice", secret)
    while time.time() % 30 > 20:  # the offsets below are from this step: not near its end
        time.sleep(0.5)
    step = int(time.time()) // 30
    assert verify(daemon, "alice", oathtool_totp(secret, (step + 1) * 30)).status == "ACCEPTED"  # a phone a step fast
    assert tokens(daemon, "alice")["default"]["skew"] == 1
    assert re.search(r"event=skew user=alice .*token=default .*result=changed detail=\"?from=\+0 to=\+1", daemon.log())
    assert verify(daemon, "alice", oathtool_totp(secret, (step + 2) * 30)).status == "ACCEPTED"  # the window moved with it
    assert tokens(daemon, "alice")["default"]["skew"] == 2
    # four steps fast is beyond max_skew 3 for resync; three is within
    other = pyotp.random_base32()
    add(daemon, "alice", other, "--name", "fast")
    beyond = daemon.ctl("resync", "alice", oathtool_totp(other, (step + 4) * 30), oathtool_totp(other, (step + 5) * 30), "--token", "fast")
    assert beyond.returncode == 1
    within = daemon.ctl("resync", "alice", oathtool_totp(other, (step + 2) * 30), oathtool_totp(other, (step + 3) * 30), "--token", "fast")
    assert within.returncode == 0, within.stderr
    assert tokens(daemon, "alice")["fast"]["skew"] == 3
