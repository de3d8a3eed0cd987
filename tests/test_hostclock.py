"""A wrong host clock (totpd/hostclock.py): told from one phone's drift by accounts
agreeing, kept out of tokens' skew, reported by doctor. The real daemon runs with its
clock set off by libfaketime; codes come from oathtool at the true time."""

from __future__ import annotations

import glob
import re
import time

import pytest

import wire
from test_policy import logged
from test_tokens import oathtool_totp, tokens, verify
from totpd import doctor, hostclock
from totpd.audit import Audit

STEP = 30


# -- the agreement, a pure function ---------------------------------------------------


@pytest.mark.parametrize(
    "accounts_at, accounts, agreed",
    [
        ({-60: 3}, 3, -60),  # three accounts at one offset: the host's clock
        ({+30: 3, 0: 2}, 3, +30),
        ({-60: 2}, 3, None),  # too few accounts agree
        ({-60: 2}, 2, -60),
        ({0: 12}, 3, None),  # agreeing with this host is no error
        ({-30: 3, 0: 4}, 3, None),  # a few drifted phones among more right ones blame nobody
        ({-30: 3, 0: 3}, 3, None),  # half is not more than half
        ({-30: 3, -60: 3}, 3, None),  # between two steps: no majority, no verdict
        ({-60: 5}, 0, None),  # 0: detection off
        ({}, 3, None),
    ],
)
def test_a_host_offset_needs_enough_accounts_and_more_than_half_of_them(accounts_at, accounts, agreed):
    assert hostclock.agreed_offset(accounts_at, accounts) == agreed


def test_a_code_at_the_host_offset_teaches_no_skew_and_any_other_code_does():
    assert not hostclock.teaches_skew(-60, -60)
    assert hostclock.teaches_skew(-30, -60)  # another phone's drift
    assert hostclock.teaches_skew(-60, None)  # no host offset agreed
    assert hostclock.teaches_skew(None, -60)  # an HOTP code says nothing of clocks


def test_the_offset_is_described_as_what_it_says_of_this_host():
    assert hostclock.describe(-60) == "this host's clock is likely 60 s fast"
    assert hostclock.describe(30) == "this host's clock is likely 30 s slow"


# -- the tracker ------------------------------------------------------------------------


def test_one_account_logging_in_again_and_again_counts_once(capsys):
    clock = hostclock.HostClock(3, 3600, Audit("stderr"))
    for second in range(5):
        assert clock.observe("alice", -60, 1000.0 + second) is None
    assert clock.offset(1010.0) is None
    assert "host_clock" not in capsys.readouterr().err


def test_agreement_is_announced_once_and_cleared_when_accounts_move_back(capsys):
    clock = hostclock.HostClock(3, 3600, Audit("stderr"))
    assert clock.observe("alice", -60, 1000.0) is None
    assert clock.observe("bob", -60, 1001.0) is None
    assert clock.observe("carol", -60, 1002.0) == hostclock.Change(None, -60)
    assert clock.observe("dave", -60, 1003.0) is None  # already agreed: said once
    err = capsys.readouterr().err
    assert err.count("event=host_clock result=offset_detected") == 1
    assert 'detail="offset=-60s accounts=3"' in err
    # the clock was set right: the accounts' latest codes come back to 0, each counted once
    for user in ("alice", "bob", "carol"):
        clock.observe(user, 0, 1100.0)
    assert clock.offset(1100.0) is None
    assert 'event=host_clock result=offset_cleared detail="offset=-60s"' in capsys.readouterr().err


def test_codes_older_than_the_window_are_forgotten():
    clock = hostclock.HostClock(3, 600, Audit("stderr"))
    clock.observe("alice", 30, 1000.0)
    clock.observe("bob", 30, 1500.0)
    clock.observe("carol", 30, 1599.0)
    assert clock.offset(1599.0) == 30
    assert clock.offset(1601.0) is None  # alice's code is out of the window
    clock.observe("alice", 30, 1602.0)
    assert clock.offset(1602.0) == 30


def test_detection_off_counts_nothing():
    clock = hostclock.HostClock(0, 3600, Audit("stderr"))
    for user in ("alice", "bob", "carol", "dave"):
        assert clock.observe(user, -60, 1000.0) is None
    assert clock.offset(1000.0) is None


# -- a real daemon whose clock is off ---------------------------------------------------


def faketime_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime is missing: apt-get install faketime"
    return found[0]


def start_off_by(make_daemon, seconds: int, **settings: object):
    """A real daemon whose clock (CLOCK_REALTIME, through libfaketime) runs `seconds` ahead."""
    daemon = make_daemon(start=False, **settings)
    return daemon.start(extra_env={
        "LD_PRELOAD": faketime_library(), "FAKETIME": f"{seconds:+d}", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    })


def oathtool_code(secret: str, shift: int = 0) -> str:
    """oathtool's code at the true time moved by `shift` seconds, taken early enough in
    a step that the daemon judges it within the same one."""
    while time.time() % STEP > STEP - 5:
        time.sleep(0.2)
    return oathtool_totp(secret, time.time() + shift)


def accepted(daemon, user: str, code: str) -> bool:
    return verify(daemon, user, code).status == "ACCEPTED"


def skews(daemon, user: str) -> int:
    return tokens(daemon, user)["default"]["skew"]


@pytest.mark.parametrize("steps", [1, 2])
def test_a_host_clock_steps_fast_is_named_audited_kept_out_of_skew_and_reported_by_doctor(make_daemon, steps):
    offset = -steps * STEP  # codes' time less the host's: the host runs ahead
    daemon = start_off_by(make_daemon, steps * STEP, window=steps + 1)
    secrets = {user: daemon.enroll(user) for user in ("alice", "bob", "carol", "dave", "erin")}
    for user in ("alice", "bob", "carol"):
        assert accepted(daemon, user, oathtool_code(secrets[user]))
    assert logged(daemon, f"accepted codes of 3 accounts agree at {offset:+d} s from this host's clock:"
                          f" this host's clock is likely {steps * STEP} s fast")
    assert re.search(rf"ERROR: accepted codes of 3 accounts agree at {offset:+d} s", daemon.log())
    assert logged(daemon, f'audit event=host_clock result=offset_detected detail="offset={offset:+d}s accounts=3"')
    # The three codes that established it were learned as before, one step each...
    assert [skews(daemon, user) for user in ("alice", "bob", "carol")] == [-1, -1, -1]
    # ...and from now on a code at the host's offset teaches its token nothing.
    assert accepted(daemon, "dave", oathtool_code(secrets["dave"]))
    assert skews(daemon, "dave") == 0
    assert "event=skew user=dave" not in daemon.log()
    # erin's phone runs a step slow besides: her own drift is still learned.
    assert accepted(daemon, "erin", oathtool_code(secrets["erin"], -STEP))
    assert skews(daemon, "erin") == -1
    assert logged(daemon, "event=skew user=erin")
    assert wire.request(daemon.socket_path, "ping").fields["host_clock_offset"] == str(offset)
    findings = doctor.run(doctor.Options(config_path=daemon.config_path, config_explicit=True, checks=("daemon", "clock")))
    [found] = [finding for finding in findings if finding.id == "clock.host_offset"]
    assert found.severity == "error"
    assert f"at least 3 accounts agree at {offset:+d} s" in found.message
    assert f"likely {steps * STEP} s fast" in found.message
    assert re.search(r"time sync: (NTP=\S+ NTPSynchronized=\S+ \(timedatectl show\)|timedatectl )", found.message)
    assert doctor.exit_status(findings) == doctor.EXIT_ERRORS


def test_one_accounts_phone_drift_alone_is_learned_and_blames_no_host(make_daemon):
    daemon = make_daemon()
    secrets = {user: daemon.enroll(user) for user in ("alice", "bob", "carol")}
    assert accepted(daemon, "alice", oathtool_code(secrets["alice"], STEP))  # a phone a step fast
    for user in ("bob", "carol"):
        assert accepted(daemon, user, oathtool_code(secrets[user]))
    assert skews(daemon, "alice") == 1
    assert logged(daemon, "event=skew user=alice")
    assert "host_clock" not in daemon.log() and "agree at" not in daemon.log()
    assert "host_clock_offset" not in wire.request(daemon.socket_path, "ping").fields
    findings = doctor.run(doctor.Options(config_path=daemon.config_path, config_explicit=True, checks=("daemon", "clock")))
    assert "clock.host_offset" not in {finding.id for finding in findings}


def test_the_same_offset_on_fewer_accounts_than_configured_is_not_the_host(make_daemon):
    daemon = start_off_by(make_daemon, STEP, host_clock_accounts=4)
    secrets = {user: daemon.enroll(user) for user in ("alice", "bob", "carol")}
    for user in ("alice", "bob", "carol"):
        assert accepted(daemon, user, oathtool_code(secrets[user]))
    assert [skews(daemon, user) for user in ("alice", "bob", "carol")] == [-1, -1, -1]
    assert "host_clock" not in daemon.log()
    assert "host_clock_offset" not in wire.request(daemon.socket_path, "ping").fields
