"""Decisions (totpd/decisions.py): pure functions of an account, a code and the clock."""

from __future__ import annotations

import pyotp
import pytest

from totpd import decisions, otp
from totpd.config import Config
from totpd.decisions import Verdict
from totpd.store import Account, Token

NOW = 1_800_000_000.0
SECRET = b"12345678901234567890"
PARAMS = otp.Params()


# RFC 4226, appendix D: HOTP values of SECRET for counters 0 to 9.
RFC4226 = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]


def token(name: str = "default", kind: str = "totp", last_step: int = -1, skew: int = 0) -> Token:
    return Token(name, kind, b"sealed", "SHA1", 6, 30, last_step, skew, NOW, None)


def account(**changes: object) -> Account:
    fields = dict(
        user="alice", failures=0, locked_until=0.0, locked=False, created=NOW, confirmed=NOW, pending_secret=None,
        pending_algorithm=None, pending_digits=None, pending_period=None, pending_token=None, pending_type=None,
        pending_last_step=None, pending_replaces=False, tokens=(token(),),
    )
    fields.update(changes)
    return Account(**fields)  # type: ignore[arg-type]


def code_at(offset_steps: int) -> str:
    return pyotp.TOTP(otp.encode_secret(SECRET)).at(NOW + offset_steps * 30)


def judge(code: str, last_step: int):
    return decisions.judge_tokens([(token(last_step=last_step), SECRET)], code, NOW, Config(window=1))


def test_nothing_is_judged_for_an_unenrolled_a_locked_or_a_backed_off_account():
    assert decisions.barred(None, NOW) is Verdict.UNENROLLED
    assert decisions.barred(account(tokens=()), NOW) is Verdict.UNENROLLED
    assert decisions.barred(account(locked=True), NOW) is Verdict.LOCKED
    assert decisions.barred(account(locked_until=NOW + 1), NOW) is Verdict.LOCKED
    assert decisions.barred(account(locked_until=NOW - 1), NOW) is None


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_a_code_within_the_window_is_accepted_with_its_step(offset):
    verdict, _, step = judge(code_at(offset), -1)
    assert verdict is Verdict.ACCEPTED and step == otp.time_step(NOW, PARAMS) + offset


def test_a_code_outside_the_window_is_rejected():
    assert judge(code_at(2), -1) == (Verdict.REJECTED, None, -1)


def test_a_code_at_or_before_the_last_accepted_step_is_a_replay():
    current = otp.time_step(NOW, PARAMS)
    assert judge(code_at(0), current)[0] is Verdict.REPLAYED
    assert judge(code_at(-1), current)[0] is Verdict.REPLAYED
    assert judge(code_at(1), current)[0] is Verdict.ACCEPTED


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


def test_hotp_codes_match_rfc_4226_and_move_the_counter_past_the_value_used():
    config = Config(hotp_window=3)
    hotp = token("key", "hotp", last_step=-1)
    assert decisions.judge_tokens([(hotp, SECRET)], RFC4226[0], NOW, config) == (Verdict.ACCEPTED, hotp, 0)
    assert decisions.judge_tokens([(hotp, SECRET)], RFC4226[3], NOW, config) == (Verdict.ACCEPTED, hotp, 3)
    # look-ahead of 3 past the next expected value (0): counter 4 is out of reach
    assert decisions.judge_tokens([(hotp, SECRET)], RFC4226[5], NOW, config)[0] is Verdict.REJECTED
    used = hotp._replace(last_step=3)
    assert decisions.judge_tokens([(used, SECRET)], RFC4226[3], NOW, config)[0] is Verdict.REPLAYED
    assert decisions.judge_tokens([(used, SECRET)], RFC4226[1], NOW, config)[0] is Verdict.REPLAYED
    assert decisions.judge_tokens([(used, SECRET)], RFC4226[7], NOW, config) == (Verdict.ACCEPTED, used, 7)


def test_a_code_is_tried_against_every_token_and_the_one_it_is_from_is_named():
    other = b"abcdefghijabcdefghij"
    phone, key = token("phone"), token("key", "hotp")
    opened = [(phone, other), (key, SECRET)]
    assert decisions.judge_tokens(opened, RFC4226[2], NOW, Config()) == (Verdict.ACCEPTED, key, 2)
    totp = pyotp.TOTP(otp.encode_secret(other)).at(NOW)
    assert decisions.judge_tokens(opened, totp, NOW, Config())[1] == phone
    assert decisions.judge_tokens(opened, RFC4226[9], NOW, Config(hotp_window=3))[0] is Verdict.REJECTED


def test_a_totp_tokens_clock_offset_moves_one_step_at_a_time_within_max_skew():
    current = otp.time_step(NOW, PARAMS)
    assert decisions.learned_skew(token(), current + 1, NOW, 3) == 1
    assert decisions.learned_skew(token(skew=1), current + 3, NOW, 3) == 2  # one step, not two
    assert decisions.learned_skew(token(skew=3), current + 4, NOW, 3) == 3  # bounded
    assert decisions.learned_skew(token(skew=-2), current - 3, NOW, 3) == -3
    assert decisions.learned_skew(token(skew=2), current, NOW, 3) == 1  # back toward this host's clock
    assert decisions.learned_skew(token(), current + 1, NOW, 0) == 0  # max_skew 0: never learned
    assert decisions.learned_skew(token("key", "hotp"), 5, NOW, 3) == 0
    # the window follows the offset: with skew 2, a code two steps ahead is within window 1
    ahead = code_at(2)
    assert decisions.judge_tokens([(token(), SECRET)], ahead, NOW, Config())[0] is Verdict.REJECTED
    assert decisions.judge_tokens([(token(skew=2), SECRET)], ahead, NOW, Config())[0] is Verdict.ACCEPTED
