"""Decisions: a code against an account's state, and the throttle, as pure functions.

No I/O and no clock of their own: the service reads the account inside its
transaction, opens the secret, and hands both in with `now`; what it writes back
follows the verdict. Each rule is written here once.
"""

from __future__ import annotations

import enum

from . import otp
from .config import Config
from .store import Account


class Verdict(enum.Enum):
    """What a code (or a first code) did; the value is the audit line's result."""

    ACCEPTED = "accepted"
    RECOVERY_ACCEPTED = "recovery_code_used"
    REPLAYED = "replayed"
    REJECTED = "rejected"
    NOW_LOCKED = "rejected_now_locked"  # this failure started the hard lock
    LOCKED = "locked"  # refused unjudged: hard lock or backoff
    UNENROLLED = "unenrolled"
    TRY_RECOVERY = "try_recovery"  # not shaped like a code: the recovery codes decide
    NO_PENDING = "no_pending"  # confirm: no enrollment waits for a first code
    CONFIRMED = "confirmed"  # confirm: the pending enrollment is now the active one


def is_locked(account: Account, now: float) -> bool:
    """Is no code to be judged for this account now: a hard lock, or a backoff running?

    A hard lock lasts until an unlock (locked_until 0) or, with lock_duration, until
    locked_until; a backoff is locked_until alone.
    """
    if account.locked:
        return account.locked_until == 0 or now < account.locked_until
    return now < account.locked_until


def lock_ran_out(account: Account, now: float) -> bool:
    """Did this account's timed hard lock end? Its failure count stays, so the next
    failure locks it again at once."""
    return account.locked and 0 < account.locked_until <= now


def barred(account: Account | None, now: float) -> Verdict | None:
    """Why no code can be judged for this account right now, or None."""
    if account is None or not account.active:
        return Verdict.UNENROLLED
    if is_locked(account, now):
        return Verdict.LOCKED
    return None


def judge_code(secret: bytes, params: otp.Params, code: str, now: float, window: int, last_step: int) -> tuple[Verdict, int]:
    """A code against one secret: ACCEPTED with its time step, REPLAYED or REJECTED.

    A code is good for the steps within `window` of now; one at or before the last
    step accepted is a replay (the store makes that check again as it records the step).
    """
    step = otp.match_step(secret, params, code, now, window)
    if step is None:
        return Verdict.REJECTED, -1
    if step <= last_step:
        return Verdict.REPLAYED, step
    return Verdict.ACCEPTED, step


def after_failure(config: Config, failures: int, now: float) -> tuple[float, bool]:
    """Backoff deadline and hard-lock flag after the `failures`-th consecutive failure.

    The first `backoff_after - 1` failures cost nothing; from then on each one
    doubles the wait (backoff_initial, 2x, 4x, ... capped at backoff_max); at
    `max_failures` the account locks until an admin unlocks it, or for
    `lock_duration` seconds where that is set.
    """
    if failures >= config.max_failures:
        return (now + config.lock_duration if config.lock_duration else 0.0), True
    if failures < config.backoff_after:
        return 0.0, False
    exponent = failures - config.backoff_after
    delay = config.backoff_initial * (2 ** min(exponent, 62))
    return now + min(delay, config.backoff_max), False
