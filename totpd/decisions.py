"""Decisions: a code against an account's state, and the throttle, as pure functions.

No I/O and no clock of their own: the service reads the account inside its
transaction, opens the secret, and hands both in with `now`; what it writes back
follows the verdict. Each rule is written here once.
"""

from __future__ import annotations

import enum

from . import otp
from .config import Config
from .store import Account, Token


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


def judge_tokens(
    opened: list[tuple[Token, bytes]], code: str, now: float, config: Config
) -> tuple[Verdict, Token | None, int]:
    """A code against every token of an account: ACCEPTED with the token and its moving
    factor, REPLAYED, or REJECTED.

    Every token's every candidate is compared (otp.match_any), with no early exit, so
    the time taken does not say which token matched. A token whose code is new wins
    over one that only replays; among several, the first in the account's order.
    """
    accepted: tuple[Token, int] | None = None
    replayed = False
    for token, secret in opened:
        params = otp.Params(token.algorithm, token.digits, token.period)
        factors = otp.candidates(token.type, params, token.last_step, token.skew, now, config.window, config.hotp_window)
        factor = otp.match_any(secret, params, code, factors)
        if factor is None:
            continue
        if factor <= token.last_step:
            replayed = True
        elif accepted is None:
            accepted = (token, factor)
    if accepted is not None:
        return Verdict.ACCEPTED, accepted[0], accepted[1]
    return (Verdict.REPLAYED if replayed else Verdict.REJECTED), None, -1


def learned_skew(token: Token, step: int, now: float, max_skew: int) -> int:
    """A TOTP token's clock offset after a code at `step` was accepted: one step nearer
    to where that code was, never past `max_skew` either way. HOTP tokens have none."""
    if token.type != "totp":
        return 0
    offset = step - otp.time_step(now, otp.Params(token.algorithm, token.digits, token.period))
    moved = token.skew + max(-1, min(1, offset - token.skew))
    return max(-max_skew, min(max_skew, moved))


def resync(token: Token, secret: bytes, first: str, second: str, now: float, config: Config) -> tuple[int, int] | None:
    """Two consecutive codes of one token: (the moving factor of the second, the token's
    new clock offset), or None.

    HOTP: the pair is looked for among `hotp_resync_window` counter values after the
    last accepted one. TOTP: the second code's step may be up to `max_skew` steps from
    this host's clock, and becomes the offset. Either way both factors must be later
    than the last accepted one, and every candidate pair is compared (no early exit).
    """
    params = otp.Params(token.algorithm, token.digits, token.period)
    if token.type == "hotp":
        factors = range(token.last_step + 1, token.last_step + 1 + config.hotp_resync_window)
    else:
        current = otp.time_step(now, params)
        factors = range(max(token.last_step + 1, current - config.max_skew - 1), current + config.max_skew)
    matched = otp.match_pair(secret, params, first, second, factors)
    if matched is None:
        return None
    later = matched + 1
    if token.type == "hotp":
        return later, 0
    return later, later - otp.time_step(now, params)


def resync_tokens(
    opened: list[tuple[Token, bytes]], first: str, second: str, now: float, config: Config
) -> tuple[Token, int, int] | None:
    """The first token (in the account's order) that `first` and `second` are consecutive
    codes of, with resync's answer for it; every token is tried, whatever matched before."""
    found: tuple[Token, int, int] | None = None
    for token, secret in opened:
        aligned = resync(token, secret, first, second, now, config)
        if aligned is not None and found is None:
            found = (token, *aligned)
    return found


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
