"""Judging a code and what follows it (totpd/judging.py): the throttle, the lock, the
recovery codes, first codes and pairs, each door's reply, audit line and events.

A real daemon on its socket (the tests marked both_backends run on SQLite and on
PostgreSQL), and a real Service on a real SQLite store with a clock the test moves.
"""

from __future__ import annotations

import json
import os
import time

import pyotp

import wire
from daemon_fixtures import both_backends
from daemonproc import RECOVERY_SHAPED, code_at as code, flood_as, wrong_code
from test_enroll_login import NOW, World, directory  # noqa: F401 - directory is a fixture
from totpd.service import Caller


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


@both_backends
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


@both_backends
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


@both_backends
def test_lock_and_backoff_survive_a_restart(make_daemon):
    daemon = make_daemon(max_failures=3, backoff_after=3)
    secret = daemon.enroll("alice")
    for _ in range(3):
        verify(daemon, "alice", "000001")
    daemon.restart()
    assert verify(daemon, "alice", code(secret)).status == "LOCKED"


@both_backends
def test_a_recovery_code_works_once_in_place_of_a_code(daemon):
    codes = daemon.enroll_json("alice")["recovery_codes"]
    first = verify(daemon, "alice", codes[0].upper().replace("-", " "))
    assert first.status == "ACCEPTED" and "recovery code" in first.message
    assert verify(daemon, "alice", codes[0]).status == "REJECTED"
    assert json.loads(daemon.ctl("status", "alice", "--json").stdout)["recovery_codes_left"] == 9
    assert "recovery_code_used" in daemon.log()


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


# -- in process: a Service on a real SQLite store, with a clock the test moves --------------


def events_of(world: World) -> list[tuple[str, str, str]]:
    """The durable events the world's service announces from now on: (event, user, service)."""
    seen: list[tuple[str, str, str]] = []
    world.service.listeners.append(lambda event, fields: seen.append((event, fields["user"], fields.get("service") or "")))
    return seen


def enrolled(world: World, user: str = "alice") -> pyotp.TOTP:
    reply = world.call("enroll", user=user, activate="1")
    assert reply.status == "OK", reply
    return pyotp.TOTP(reply.fields["secret"])


def wrong_at(totp: pyotp.TOTP, now: float) -> str:
    near = {totp.at(now + steps * 30) for steps in range(-3, 4)}
    return next(candidate for candidate in ("000000", "111111", "222222", "333333") if candidate not in near)


def test_a_lock_that_ran_out_is_lifted_and_the_next_failure_locks_again_at_once(directory):
    world = World(directory, max_failures=2, backoff_after=100, lock_duration=600)
    try:
        totp, events = enrolled(world), events_of(world)
        statuses = [world.call("verify", code=wrong_at(totp, NOW)) for _ in range(3)]
        assert [reply.status for reply in statuses] == ["REJECTED", "LOCKED", "LOCKED"]
        assert "for 10 more minutes" in statuses[1].message
        world.now += 601
        assert world.call("check").status == "NEED_CODE"
        assert world.call("verify", code=wrong_at(totp, world.now)).status == "LOCKED"  # the count was kept
        world.now += 601
        assert world.call("verify", code=totp.at(world.now)).status == "ACCEPTED"
        assert world.call("status").fields["failures"] == "0"
        assert events == [("locked", "alice", "sshd")] * 2  # each lock once, the refusals while locked never
    finally:
        world.close()


def test_a_right_first_code_clears_the_failures_its_wrong_ones_counted(directory):
    world = World(directory, max_failures=5, backoff_after=100)
    try:
        pending = world.call("enroll")
        totp = pyotp.TOTP(pending.fields["secret"])
        assert [world.call("confirm", code=wrong_at(totp, NOW)).status for _ in range(2)] == ["REJECTED"] * 2
        assert world.call("status").fields["failures"] == "2"
        confirmed = world.call("confirm", code=totp.at(NOW))
        assert confirmed.status == "OK" and len(confirmed.fields["recovery_codes"].split()) == 4
        assert world.call("status").fields["failures"] == "0"
    finally:
        world.close()


def test_every_door_that_takes_a_code_says_how_long_a_lock_lasts(directory):
    world = World(directory, max_failures=1, backoff_after=100, lock_duration=600)
    try:
        totp, events = enrolled(world), events_of(world)
        second = pyotp.TOTP(world.call("token_add", token="second").fields["secret"])
        locked = world.call("confirm", code=wrong_at(second, NOW))
        assert locked.status == "LOCKED" and "for 10 more minutes" in locked.message
        for verb, fields in (("verify", {"code": totp.at(NOW)}), ("confirm", {"code": second.at(NOW)}),
                             ("resync", {"code": totp.at(NOW), "next_code": totp.at(NOW + 30)})):
            refused = world.call(verb, **fields)
            assert refused.status == "LOCKED" and "for 10 more minutes" in refused.message, (verb, refused)
        assert events == [("locked", "alice", "sshd")]
    finally:
        world.close()


def test_a_wrong_or_replayed_code_forgets_remembered_hosts_and_only_a_pam_login_is_remembered(directory):
    world = World(directory, remember_host=3600)
    try:
        totp = enrolled(world)
        login = {"service": "sshd", "rhost": "192.0.2.7"}
        assert world.call("verify", code=totp.at(NOW), **login).status == "ACCEPTED"
        assert world.call("check", **login).status == "ACCEPTED"
        assert world.call("verify", code=totp.at(NOW), service="sudo").status == "REJECTED"  # a replay
        assert world.call("check", **login).status == "NEED_CODE"
        world.now += 30
        over_dbus = Caller(9, 0, 0, granted="any")
        assert world.call("verify", caller=over_dbus, code=totp.at(world.now), **login).status == "ACCEPTED"
        assert world.call("check", **login).status == "NEED_CODE"  # not the PAM module: nothing remembered
    finally:
        world.close()


def test_a_recovery_code_in_place_of_a_code_is_announced_with_the_login_it_came_from(directory):
    world = World(directory)
    try:
        codes = world.call("enroll", activate="1").fields["recovery_codes"].split()
        events = events_of(world)
        assert world.call("verify", code=codes[0], service="sudo").status == "ACCEPTED"
        assert world.call("verify", code=codes[0], service="sudo").status == "REJECTED"
        assert events == [("recovery_code_used", "alice", "sudo")]
    finally:
        world.close()
