"""Judging a code, and what follows its verdict: the one path of every door that takes
a code (verify, the proof before a change, confirm, login_confirm, resync), on the
socket and over D-Bus alike.

`Judge.judge` reads the account in one store transaction, lifts a timed lock that ran
out, judges the attempt (the pure functions of decisions.py), counts a failure and
locks, and returns the verdict, committed before anyone hears of it. `Judge.follow`
is what follows: remembered hosts and sudo graces, the events, the audit line and the
reply. Neither is written anywhere else, so a lockout is announced whichever door
reached it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple, Sequence, Union

from . import decisions, hostclock, otp, recovery
from .audit import quote
from .authorization import Caller, is_pam
from .config import Config
from .decisions import Verdict
from .handling import Earned, Events, Gate, door_of, params_of, replay_floor, reply
from .hostclock import HostClock
from .policy import Policy
from .protocol import DEFAULT_TOKEN, Reply, Request
from .sealing import Sealer, secret_context
from .store import Account, Batcher, Token, Transaction
from .workers import Worker

log = logging.getLogger("totpd")


class Match(NamedTuple):
    """What decisions.py made of an attempt against the tokens it may match."""

    verdict: Verdict  # ACCEPTED, REPLAYED, REJECTED or TRY_RECOVERY
    token: Token | None = None  # the token accepted (a first code: the pending one, either way)
    step: int = -1  # accepted: the moving factor it used
    skew: int = 0  # accepted: the token's clock offset from now on


@dataclasses.dataclass(frozen=True)
class Code:
    """A login's code, or a proof: a code of any active token, else a recovery code."""

    code: str
    name = ""
    advances = True  # an accepted code spends its moving factor in the judging transaction

    def barred(self, account: Account | None, now: float) -> Verdict | None:
        return decisions.barred(account, now)

    def tokens(self, account: Account) -> Sequence[Token]:
        return account.tokens

    def match(self, opened: list[tuple[Token, bytes]], now: float, config: Config, host_offset: int | None) -> Match:
        # A code that could not be a TOTP code is left to the recovery codes, its failure
        # counted first: the throttle bounds that argon2 work as it bounds guesses.
        if not any(otp.looks_like_totp(self.code, params_of(token)) for token, _ in opened):
            return Match(Verdict.TRY_RECOVERY)
        verdict, token, step = decisions.judge_tokens(opened, self.code, now, config)
        if token is None:
            return Match(verdict)
        # An offset that many accounts share is this host's clock, not the phone's: not learned.
        if hostclock.teaches_skew(offset_seconds(token, step, now), host_offset):
            return Match(verdict, token, step, decisions.learned_skew(token, step, now, config.max_skew))
        return Match(verdict, token, step, token.skew)


@dataclasses.dataclass(frozen=True)
class FirstCode:
    """The first code of the account's pending token; with `expected`, only that sealed
    pending token counts (enroll_at_login: the one this login was shown)."""

    code: str
    expected: bytes | None = None
    name = ""
    advances = False  # its step is spent when the token is activated, after any argon2 work

    def barred(self, account: Account | None, now: float) -> Verdict | None:
        if account is None or account.pending_secret is None:
            return Verdict.NO_PENDING
        if self.expected is not None and account.pending_secret != self.expected:
            return Verdict.NO_PENDING
        return Verdict.LOCKED if decisions.is_locked(account, now) else None

    def tokens(self, account: Account) -> Sequence[Token]:
        # A first code has no replay state of its own yet: any step in the window will do
        # (HOTP: the look-ahead from the counter it was added with).
        assert account.pending_secret is not None
        kind, defaults = account.pending_type or "totp", otp.Params()
        last = account.pending_last_step if account.pending_last_step is not None else -1
        return [Token(
            account.pending_token or DEFAULT_TOKEN, kind, account.pending_secret,
            account.pending_algorithm or defaults.algorithm, account.pending_digits or defaults.digits,
            account.pending_period or defaults.period, last if kind == "hotp" else -1, 0, 0.0, None,
        )]

    def match(self, opened: list[tuple[Token, bytes]], now: float, config: Config, host_offset: int | None) -> Match:
        verdict, token, step = decisions.judge_tokens(opened, self.code, now, config)
        if verdict is not Verdict.ACCEPTED:
            return Match(Verdict.REJECTED, opened[0][0])
        return Match(verdict, token, step)


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two consecutive codes of one token (resync); with `name`, of that token only."""

    first: str
    second: str
    name: str = ""
    advances = True

    def barred(self, account: Account | None, now: float) -> Verdict | None:
        if barred := decisions.barred(account, now):
            return barred
        assert account is not None
        return Verdict.UNENROLLED if self.name and account.token(self.name) is None else None

    def tokens(self, account: Account) -> Sequence[Token]:
        return [token for token in account.tokens if not self.name or token.name == self.name]

    def match(self, opened: list[tuple[Token, bytes]], now: float, config: Config, host_offset: int | None) -> Match:
        found = decisions.resync_tokens(opened, self.first, self.second, now, config)
        if found is None:
            return Match(Verdict.REJECTED)
        return Match(Verdict.ACCEPTED, *found)


Attempt = Union[Code, FirstCode, Pair]


def offset_seconds(token: Token, step: int, now: float) -> int | None:
    """How far an accepted TOTP code's time is from this host's, in seconds (HOTP: None)."""
    if token.type != "totp":
        return None
    return (step - otp.time_step(now, params_of(token))) * token.period


class Judged(NamedTuple):
    """A verdict, the account as its judging transaction read it, and what follows needs."""

    verdict: Verdict
    account: Account | None
    name: str = ""  # the token named, pending or accepted
    token: Token | None = None  # accepted: the token as it was before
    step: int = -1  # accepted: the moving factor now spent
    skew: int = 0  # accepted: the token's clock offset from now on
    codes: Sequence[str] = ()  # a confirmed enrollment that replaced every token: its recovery codes
    miss: Verdict | None = None  # TRY_RECOVERY: the verdict (already counted) if no recovery code matches
    hashes: Sequence[tuple[int, str]] = ()  # TRY_RECOVERY: the account's recovery-code hashes


SUCCESSES = frozenset({Verdict.ACCEPTED, Verdict.RECOVERY_ACCEPTED, Verdict.CONFIRMED})
FAILURES = frozenset({Verdict.REJECTED, Verdict.NOW_LOCKED, Verdict.REPLAYED})
WARNINGS = frozenset({Verdict.RECOVERY_ACCEPTED, Verdict.REPLAYED, Verdict.NOW_LOCKED})

RECOVERY_USED = "A recovery code was used; each works only once. Check how many are left: totpctl status"

# A verdict's reply (status, message) at each door (the request's verb), then at any door.
# LOCKED's message is made per account; a door's success reply may be its handler's own.
REPLIES: dict[str, dict[Verdict, tuple[str, str]]] = {
    "confirm": {
        Verdict.REJECTED: ("REJECTED", "Wrong verification code; the enrollment is still pending."),
    },
    "login_confirm": {
        Verdict.NO_PENDING: ("DENIED", "This enrollment was replaced or removed; log in again to start over."),
        Verdict.REJECTED: ("REJECTED", "Wrong verification code; log in again to retry (the same QR code is shown)."),
    },
    "resync": {
        Verdict.REPLAYED: ("REJECTED", "Those codes were already used."),
        Verdict.REJECTED: ("REJECTED", "The two codes are not consecutive codes of a token within reach."),
    },
    "": {
        Verdict.ACCEPTED: ("ACCEPTED", ""),
        Verdict.RECOVERY_ACCEPTED: ("ACCEPTED", RECOVERY_USED),
        Verdict.CONFIRMED: ("ACCEPTED", ""),
        Verdict.REPLAYED: ("REJECTED", "That code was already used; wait for the next one."),
        Verdict.REJECTED: ("REJECTED", "Wrong verification code."),
        Verdict.UNENROLLED: ("NOT_ENROLLED", "account '{user}' is not enrolled"),
        Verdict.NO_PENDING: ("NOT_ENROLLED", "account '{user}' has no enrollment waiting for confirmation"),
    },
}


@dataclasses.dataclass
class Judge:
    """The verdict on a code (`judge`), what follows it (`follow`), and a proof (`prove`)."""

    config: Config
    store: Batcher
    sealer: Sealer
    argon2: Worker
    gate: Gate
    policy: Policy
    earned: Earned
    events: Events
    host_clock: HostClock

    # -- the verdict --------------------------------------------------------------------------

    async def judge(self, user: str, attempt: Attempt, now: float) -> Judged:
        """The verdict on `attempt` for `user`, durable. A code shaped like no token's goes
        on to the recovery codes (argon2, on its worker), a right first code on to its
        activation: each a second transaction, only once the cheap checks have passed."""
        host_offset = self.host_clock.offset(now)  # read on the loop; the store thread only sees the value
        judged = await self.store.submit(lambda tx: self._judge(tx, user, attempt, now, host_offset))
        assert isinstance(judged, Judged)
        if judged.verdict is Verdict.TRY_RECOVERY:
            assert isinstance(attempt, Code)
            return await self._recovery_code(user, attempt.code, judged)
        if judged.verdict is Verdict.ACCEPTED and isinstance(attempt, FirstCode):
            return await self._activate(user, judged, now)
        return judged

    def _judge(self, tx: Transaction, user: str, attempt: Attempt, now: float, host_offset: int | None) -> Judged:
        """The judging transaction: read, lift an ended lock, judge, count a failure or spend the code."""
        account = tx.get(user)
        if barred := attempt.barred(account, now):
            return Judged(barred, account, attempt.name)
        assert account is not None
        if decisions.lock_ran_out(account, now):  # the failure count stays: the next failure locks again
            tx.set_failures(user, account.failures, 0.0, False)
            account = account._replace(locked=False, locked_until=0.0)
        context = secret_context(user)
        opened = [(token, self.sealer.open(token.secret, context)) for token in attempt.tokens(account)]
        match = attempt.match(opened, now, self.config, host_offset)
        name = match.token.name if match.token is not None else attempt.name
        if match.verdict in (Verdict.REJECTED, Verdict.TRY_RECOVERY):
            failures = account.failures + 1
            locked_until, locked = decisions.after_failure(self.config, failures, now)
            tx.set_failures(user, failures, locked_until, locked)
            failed = Verdict.NOW_LOCKED if locked else Verdict.REJECTED
            if match.verdict is Verdict.TRY_RECOVERY:
                return Judged(Verdict.TRY_RECOVERY, account, miss=failed, hashes=tx.recovery_hashes(user))
            return Judged(failed, account, name)
        token = match.token
        if match.verdict is Verdict.REPLAYED or token is None:
            return Judged(Verdict.REPLAYED, account, name)
        if attempt.advances and not tx.advance_step(user, token.name, match.step, match.skew, now):
            return Judged(Verdict.REPLAYED, account, name)
        if account.failures or account.locked_until:
            tx.set_failures(user, 0, 0.0, False)
        return Judged(Verdict.ACCEPTED, account, name, token, match.step, match.skew)

    async def _recovery_code(self, user: str, code: str, judged: Judged) -> Judged:
        """A recovery code in place of a code, its failure already counted: one that
        matches is consumed and clears the count, else the counted verdict stands."""
        found = await self.argon2.run(recovery.find, code, judged.hashes) if judged.hashes else None

        def consume(tx: Transaction) -> Judged:
            account = tx.get(user)
            if account is None or not account.active:
                return Judged(Verdict.UNENROLLED, account)  # reset meanwhile
            if found is not None and tx.use_recovery_code(user, found):
                tx.set_failures(user, 0, 0.0, False)
                return Judged(Verdict.RECOVERY_ACCEPTED, account)
            assert judged.miss is not None
            return Judged(judged.miss, account)

        return await self.store.submit(consume)  # type: ignore[no-any-return]

    async def _activate(self, user: str, judged: Judged, now: float) -> Judged:
        """The pending token a right first code confirmed, made active: CONFIRMED with new
        recovery codes where it replaces every token, or NO_PENDING if it changed meanwhile."""
        assert judged.account is not None
        pending, replaces = judged.account.pending_secret, judged.account.pending_replaces
        codes: list[str] = []
        hashes: list[str] = []
        if replaces:
            codes, hashes = await self.argon2.run(recovery.generate, self.config.recovery_codes)

        def activate(tx: Transaction) -> Verdict:
            account = tx.get(user)
            if account is None or pending is None or account.pending_secret != pending:
                return Verdict.NO_PENDING  # confirmed, replaced or reset meanwhile
            secret = self.sealer.open(pending, secret_context(user))
            floor = replay_floor(self.sealer, account, secret, user, account.pending_type or "totp")
            tx.activate_pending(user, now, replay_floor=floor)
            tx.advance_step(user, judged.name, judged.step, 0, now)
            if replaces:
                tx.replace_recovery_codes(user, hashes)
            return Verdict.CONFIRMED

        verdict = await self.store.submit(activate)
        assert isinstance(verdict, Verdict)
        return judged._replace(verdict=verdict, codes=codes if verdict is Verdict.CONFIRMED else ())

    # -- what follows it ------------------------------------------------------------------------

    def follow(self, request: Request, caller: Caller, judged: Judged, now: float, success: Reply | None = None) -> Reply:
        """What follows a verdict: remembered hosts and graces, events, the audit lines, and the reply
        (`success`, where the door has its own, for a verdict that lets the code through)."""
        user, verdict, door = request.user, judged.verdict, request.verb
        service, rhost = request.get("service"), request.get("rhost")
        if verdict in SUCCESSES and door == "verify" and is_pam(caller):
            self.earned.hosts.remember(user, service, rhost, self.policy.rules(service).remember_host)
            self.earned.graces.record(user, caller.pid)
        elif verdict in FAILURES:
            self.forget_on_failure(user)
        if verdict is Verdict.CONFIRMED:
            self.earned.forget(user)  # a new token: every host proves itself again
            self.events.emit("enrolled", user=user, service=service, rhost=rhost)
        elif verdict is Verdict.RECOVERY_ACCEPTED:
            self.events.emit("recovery_code_used", user=user, service=service, rhost=rhost)
        elif verdict is Verdict.NOW_LOCKED:
            self.events.emit("locked", user=user, service=service, rhost=rhost)
        detail = ""
        token = judged.token
        if verdict is Verdict.ACCEPTED and token is not None and token.type == "hotp" and door == "resync":
            detail = f"counter={token.last_step + 1} to={judged.step + 1}"
        elif verdict is Verdict.ACCEPTED and token is not None and door == "resync":
            detail = f"skew={token.skew:+d} to={judged.skew:+d}"
        elif verdict is Verdict.ACCEPTED and token is not None and token.type == "totp":
            self._clock_drift(request, caller, token, judged, now)
        level = "warning" if verdict in WARNINGS else "info"
        self.gate.record(request, caller, door, verdict.value, token=judged.name, detail=detail, level=level)
        if verdict in SUCCESSES and success is not None:
            return success
        if verdict in (Verdict.LOCKED, Verdict.NOW_LOCKED):
            return reply("LOCKED", self._locked_message(user, judged, now))
        status, message = REPLIES.get(door, {}).get(verdict) or REPLIES[""][verdict]
        if verdict is Verdict.UNENROLLED and judged.name:
            message = "account '{user}' has no token '{token}'"
        return reply(status, message.format(user=user, token=judged.name))

    def forget_on_failure(self, user: str) -> None:
        """What any failure or lock of an account ends: its remembered hosts and sudo graces."""
        self.earned.forget(user)

    def _locked_message(self, user: str, judged: Judged, now: float) -> str:
        if judged.verdict is Verdict.NOW_LOCKED:
            until = now + self.config.lock_duration if self.config.lock_duration else 0.0
            return self.policy.locked_message(user, True, until, now)
        assert judged.account is not None
        return self.policy.locked_message(user, judged.account.locked, judged.account.locked_until, now)

    def _clock_drift(self, request: Request, caller: Caller, token: Token, judged: Judged, now: float) -> None:
        """An accepted TOTP code says where the phone's clock is: a log line when it is far
        off, an audit line when the token's learned offset moved."""
        offset = judged.step - otp.time_step(now, params_of(token))
        self.host_clock.observe(request.user, offset * token.period, now)
        if abs(offset) >= 2:
            log.warning(
                "an accepted code for %s was %+d steps from this host's clock: the phone's or this host's clock"
                " is likely off", quote(request.user), offset,
            )
        if token.skew != judged.skew:
            self.gate.record(
                request, caller, "skew", "changed", token=token.name,
                detail=f"from={token.skew:+d} to={judged.skew:+d}", level="warning",
            )

    # -- a proof ---------------------------------------------------------------------------------

    async def prove(self, user: str, proof: str, caller: Caller, now: float) -> bool:
        """A current code or a recovery code of the account's active enrollment (consumed),
        judged and followed as a verification coming by the caller's door."""
        if not proof:
            return False
        request = Request("verify", {"user": user, "code": proof.strip(), "service": door_of(caller)})
        judged = await self.judge(user, Code(request.get("code")), now)
        return self.follow(request, caller, judged, now).status == "ACCEPTED"
