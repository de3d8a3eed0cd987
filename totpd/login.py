"""A login's two verbs: `check` (must this login give a code?) and `verify` (is it good?).

This is the one place that decides "accepted". Each verification is one store
transaction that reads the account, judges the code (decisions.py) and records the
outcome, committed before the reply exists; a recovery code takes a second one,
after its argon2 search on the argon2 worker.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Sequence

from . import decisions, identity, otp, recovery
from .audit import quote
from .authorization import Caller, is_pam
from .context import Context, params_of, reply
from .decisions import Verdict
from .policy import Outcome, local_today
from .protocol import Reply, Request
from .sealing import secret_context
from .store import Account, Transaction

log = logging.getLogger("totpd")

PROMPT = "Verification code: "

# A verdict's reply status, its message (LOCKED's is made per account) and audit level.
VERDICT_REPLIES: dict[Verdict, tuple[str, str, str]] = {
    Verdict.ACCEPTED: ("ACCEPTED", "", "info"),
    Verdict.RECOVERY_ACCEPTED: (
        "ACCEPTED", "A recovery code was used; each works only once. Check how many are left: totpctl status", "warning"
    ),
    Verdict.REPLAYED: ("REJECTED", "That code was already used; wait for the next one.", "warning"),
    Verdict.REJECTED: ("REJECTED", "Wrong verification code.", "info"),
    Verdict.NOW_LOCKED: ("LOCKED", "", "warning"),
    Verdict.LOCKED: ("LOCKED", "", "info"),
}


class Judged(NamedTuple):
    """A verification's verdict, the account as its transaction read it, and what follows."""

    verdict: Verdict
    account: Account | None
    offset: int = 0  # accepted: the code's time step less this host's
    miss: Verdict | None = None  # try_recovery: the verdict (already counted) if no recovery code matches
    hashes: Sequence[tuple[int, str]] = ()  # try_recovery: the account's recovery-code hashes
    token: str = ""  # accepted: the token whose code it was
    skew: tuple[int, int] = (0, 0)  # accepted: the token's clock offset before and after


class Login:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def check(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=True):
            return refusal
        user, now = request.user, ctx.clock()
        if is_pam(caller) and ctx.policy.trusted(ctx.policy.rules(request.get("service")), request.get("rhost")):
            ctx.audit(request, caller, "check", "trusted_network")
            return reply("IGNORE")  # enrolled or not: the rest of the stack decides, without a code
        account = await ctx.read(lambda tx: tx.get(user))
        assert account is None or isinstance(account, Account)
        if account is None or not account.active:
            return await self.unenrolled(request, caller, "check")
        if decisions.is_locked(account, now):
            ctx.audit(request, caller, "check", "locked")
            return reply("LOCKED", ctx.policy.locked_message(user, account.locked, account.locked_until, now))
        if is_pam(caller) and ctx.remembered.recalls(user, request.get("service"), request.get("rhost")):
            ctx.audit(request, caller, "check", "accepted_remembered_host")
            return reply("ACCEPTED")
        grace = ctx.policy.rules(request.get("service")).sudo_grace  # sudo_grace
        if is_pam(caller) and await ctx.graces.grants(user, caller.pid, grace, ctx.nss):  # sudo_grace
            ctx.audit(request, caller, "check", "accepted_grace")
            return reply("ACCEPTED")
        return reply("NEED_CODE", prompt=PROMPT)

    async def unenrolled(self, request: Request, caller: Caller, event: str) -> Reply:
        """What a login of an account with no active enrollment gets: the policy's answer
        (to a PAM `check`, ENROLL where enroll_at_login turns a refusal into an enrollment)."""
        outcome = await self.unenrolled_outcome(request, caller, offer=event == "check")
        results = {"UNKNOWN_USER": "unknown_user", "ENROLL": "enroll_offered"}
        self.ctx.audit(request, caller, event, results.get(outcome.status, "not_enrolled_" + outcome.status.lower()))
        return reply(outcome.status, outcome.message)

    async def unenrolled_outcome(self, request: Request, caller: Caller, offer: bool) -> Outcome:
        """The policy's outcome for an account with no active enrollment; with `offer`,
        ENROLL in place of DENIED for root's PAM login where enroll_at_login is on."""
        ctx = self.ctx
        if not await ctx.account_exists(request.user):
            return Outcome("UNKNOWN_USER")
        rules = await ctx.canonical_rules(ctx.policy.rules(request.get("service")))
        groups = await ctx.nss.run(identity.groups_of, request.user) if rules.needs_groups else frozenset()
        outcome = ctx.policy.unenrolled(rules, request.user, groups, local_today(ctx.clock()))
        if offer and outcome.status == "DENIED" and rules.enroll_at_login and is_pam(caller):
            return Outcome("ENROLL")
        return outcome

    async def verify(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=True):
            return refusal
        user, code, now = request.user, request.get("code").strip(), ctx.clock()
        judged = await ctx.transact(self._judge(user, code, now))
        assert isinstance(judged, Judged)
        if judged.verdict is Verdict.TRY_RECOVERY:
            judged = await self._try_recovery(user, code, judged)
        if judged.verdict is Verdict.UNENROLLED:
            return await self.unenrolled(request, caller, "verify")
        return self._answer(request, caller, judged, now)

    def _judge(self, user: str, code: str, now: float) -> Callable[[Transaction], Judged]:
        """The one transaction that judges a code as a TOTP code.

        A code that could not be a TOTP code is left to the recovery codes: it is
        counted as a failure here, before any argon2 work, so the throttle bounds that
        work as it bounds guesses (a recovery code that matches clears the count).
        """
        ctx, config = self.ctx, self.ctx.config

        def judge(tx: Transaction) -> Judged:
            account = tx.get(user)
            if barred := decisions.barred(account, now):
                return Judged(barred, account)
            assert account is not None
            account = ctx.lift_ended_lock(tx, account, now)
            if not any(otp.looks_like_totp(code, params_of(token)) for token in account.tokens):
                miss = ctx.fail(tx, account, now)
                return Judged(Verdict.TRY_RECOVERY, account, miss=miss, hashes=tx.recovery_hashes(user))
            context = secret_context(user)
            opened = [(token, ctx.sealer.open(token.secret, context)) for token in account.tokens]
            verdict, token, step = decisions.judge_tokens(opened, code, now, config)
            if verdict is Verdict.REJECTED:
                return Judged(ctx.fail(tx, account, now), account)
            if verdict is Verdict.REPLAYED:
                return Judged(Verdict.REPLAYED, account)
            assert token is not None
            skew = decisions.learned_skew(token, step, now, config.max_skew)
            if not tx.advance_step(user, token.name, step, skew, now):
                return Judged(Verdict.REPLAYED, account, token=token.name)
            if account.failures or account.locked_until:
                tx.set_failures(user, 0, 0.0, False)
            offset = step - otp.time_step(now, params_of(token)) if token.type == "totp" else 0
            return Judged(Verdict.ACCEPTED, account, offset=offset, token=token.name, skew=(token.skew, skew))

        return judge

    async def _try_recovery(self, user: str, code: str, judged: Judged) -> Judged:
        """A recovery code in place of a TOTP code, its failure already counted (_judge).

        The argon2 checks run on their own worker; a code that matches is consumed and
        clears the failure count, one that does not leaves the verdict counted before.
        """
        found = await self.ctx.argon2.run(recovery.find, code, judged.hashes) if judged.hashes else None

        def consume(tx: Transaction) -> Judged:
            account = tx.get(user)
            if account is None or not account.active:
                return Judged(Verdict.UNENROLLED, account)  # reset meanwhile
            if found is not None and tx.use_recovery_code(user, found):
                tx.set_failures(user, 0, 0.0, False)
                return Judged(Verdict.RECOVERY_ACCEPTED, account)
            assert judged.miss is not None
            return Judged(judged.miss, account)

        return await self.ctx.transact(consume)  # type: ignore[return-value]

    def _answer(self, request: Request, caller: Caller, judged: Judged, now: float) -> Reply:
        """What follows a verdict: the clock-drift line, remembered hosts, events, the audit line, the reply."""
        ctx, user, verdict = self.ctx, request.user, judged.verdict
        if abs(judged.offset) >= 2:  # only an accepted code says where the phone's clock is
            log.warning(
                "an accepted code for %s was %+d steps from this host's clock: the phone's or this host's clock"
                " is likely off", quote(user), judged.offset,
            )
        service, rhost = request.get("service"), request.get("rhost")
        if verdict in (Verdict.ACCEPTED, Verdict.RECOVERY_ACCEPTED) and is_pam(caller):
            ctx.remembered.remember(user, service, rhost, ctx.policy.rules(service).remember_host)
            ctx.graces.record(user, caller.pid)  # sudo_grace
        elif verdict in (Verdict.REJECTED, Verdict.NOW_LOCKED, Verdict.REPLAYED):
            ctx.remembered.forget(user)
            ctx.graces.forget(user)  # sudo_grace
        if verdict is Verdict.RECOVERY_ACCEPTED:
            ctx.emit("recovery_code_used", user=user, service=service, rhost=rhost)
        if verdict is Verdict.NOW_LOCKED:
            ctx.emit("locked", user=user, service=service, rhost=rhost)
        status, message, level = VERDICT_REPLIES[verdict]
        if verdict is Verdict.NOW_LOCKED:
            until = now + ctx.config.lock_duration if ctx.config.lock_duration else 0.0
            message = ctx.policy.locked_message(user, True, until, now)
        elif verdict is Verdict.LOCKED:
            assert judged.account is not None
            message = ctx.policy.locked_message(user, judged.account.locked, judged.account.locked_until, now)
        if judged.skew[0] != judged.skew[1]:
            ctx.audit(
                request, caller, "skew", "changed", token=judged.token,
                detail=f"from={judged.skew[0]:+d} to={judged.skew[1]:+d}", level="warning",
            )
        ctx.audit(request, caller, "verify", verdict.value, token=judged.token, level=level)
        return reply(status, message)
