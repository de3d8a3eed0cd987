"""Decisions (totpd/decisions.py): pure functions of an account, a code and the clock."""

from __future__ import annotations

import pyotp
import pytest

from totpd import decisions, otp
from totpd.config import Config
from totpd.decisions import Verdict
from totpd.store import Account

NOW = 1_800_000_000.0
SECRET = b"12345678901234567890"
PARAMS = otp.Params()


def account(**changes: object) -> Account:
    fields = dict(
        user="alice", secret=b"sealed", algorithm="SHA1", digits=6, period=30, last_step=-1, failures=0,
        locked_until=0.0, locked=False, created=NOW, confirmed=NOW, pending_secret=None, pending_algorithm=None,
        pending_digits=None, pending_period=None,
    )
    fields.update(changes)
    return Account(**fields)  # type: ignore[arg-type]


def code_at(offset_steps: int) -> str:
    return pyotp.TOTP(otp.encode_secret(SECRET)).at(NOW + offset_steps * 30)


def test_nothing_is_judged_for_an_unenrolled_a_locked_or_a_backed_off_account():
    assert decisions.barred(None, NOW) is Verdict.UNENROLLED
    assert decisions.barred(account(secret=None), NOW) is Verdict.UNENROLLED
    assert decisions.barred(account(locked=True), NOW) is Verdict.LOCKED
    assert decisions.barred(account(locked_until=NOW + 1), NOW) is Verdict.LOCKED
    assert decisions.barred(account(locked_until=NOW - 1), NOW) is None


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_a_code_within_the_window_is_accepted_with_its_step(offset):
    verdict, step = decisions.judge_code(SECRET, PARAMS, code_at(offset), NOW, 1, -1)
    assert verdict is Verdict.ACCEPTED and step == otp.time_step(NOW, PARAMS) + offset


def test_a_code_outside_the_window_is_rejected():
    assert decisions.judge_code(SECRET, PARAMS, code_at(2), NOW, 1, -1) == (Verdict.REJECTED, -1)


def test_a_code_at_or_before_the_last_accepted_step_is_a_replay():
    current = otp.time_step(NOW, PARAMS)
    assert decisions.judge_code(SECRET, PARAMS, code_at(0), NOW, 1, current)[0] is Verdict.REPLAYED
    assert decisions.judge_code(SECRET, PARAMS, code_at(-1), NOW, 1, current)[0] is Verdict.REPLAYED
    assert decisions.judge_code(SECRET, PARAMS, code_at(1), NOW, 1, current)[0] is Verdict.ACCEPTED


def test_failures_are_free_then_back_off_doubling_to_the_cap_then_lock():
    config = Config(backoff_after=3, backoff_initial=1.0, backoff_max=4.0, max_failures=6)
    waits = [decisions.after_failure(config, failures, NOW) for failures in range(1, 7)]
    assert waits == [(0.0, False), (0.0, False), (NOW + 1, False), (NOW + 2, False), (NOW + 4, False), (0.0, True)]


def test_a_timed_lock_ends_by_itself_and_the_next_failure_locks_again_at_once():
    config = Config(max_failures=3, backoff_after=10, lock_duration=900)
    assert decisions.after_failure(config, 3, NOW) == (NOW + 900, True)
    locked = account(failures=3, locked=True, locked_until=NOW + 900)
    assert decisions.is_locked(locked, NOW + 899) and not decisions.lock_ran_out(locked, NOW + 899)
    assert not decisions.is_locked(locked, NOW + 900) and decisions.lock_ran_out(locked, NOW + 900)
    assert decisions.after_failure(config, 4, NOW + 901) == (NOW + 1801, True)  # the count was kept


def test_without_lock_duration_a_hard_lock_waits_for_an_unlock():
    assert decisions.after_failure(Config(max_failures=3), 3, NOW) == (0.0, True)
    assert decisions.is_locked(account(locked=True), NOW + 10**9)
    assert not decisions.lock_ran_out(account(locked=True), NOW + 10**9)
