"""What every handler works with, and the helpers they share.

One `Context` per service: the store's batcher, the sealer, the audit trail, the
policy, the workers, the caller's rights, and the listeners of durable events. The
handlers (login.py, lifecycle.py) read an account, decide, write and reply through
it, so each of those steps is written once.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Callable

from . import decisions, identity, otp
from .audit import Audit
from .authorization import Authority, Caller
from .config import Config
from .decisions import Verdict
from .errors import ProtocolError
from .policy import Policy, RememberedHosts, Rules
from .protocol import MAX_MESSAGE, Reply, Request
from .sealing import Sealer, secret_context
from .store import Account, Token, Transaction
from .workers import Worker

if TYPE_CHECKING:
    from .store import Batcher, Reader

log = logging.getLogger("totpd")

# Threads and waiting jobs per worker: NSS lookups may wait on a directory service;
# argon2 is CPU work any local user can ask for, so it gets one thread of its own.
NSS_THREADS, NSS_WAITING = 4, 1024
ARGON2_THREADS, ARGON2_WAITING = 1, 32


def reply(status: str, message: str = "", **fields: object) -> Reply:
    out = {key: str(value) for key, value in fields.items()}
    if message:
        out["message"] = message[:MAX_MESSAGE]
    return Reply(status, out)


def int_field(request: Request, key: str, default: int) -> int:
    value = request.get(key)
    if value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ProtocolError(f"'{key}' must be a whole number")
    return int(value)


def request_params(request: Request) -> otp.Params:
    """The token parameters a request asks for; otp.Params' defaults where it names none."""
    defaults = otp.Params()
    try:
        return otp.Params(
            request.get("algorithm", defaults.algorithm).upper(),
            int_field(request, "digits", defaults.digits),
            int_field(request, "period", defaults.period),
        )
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def params_of(token: "Token") -> otp.Params:
    return otp.Params(token.algorithm, token.digits, token.period)


def pending_params(account: Account) -> otp.Params:
    defaults = otp.Params()
    return otp.Params(
        account.pending_algorithm or defaults.algorithm,
        account.pending_digits or defaults.digits,
        account.pending_period or defaults.period,
    )


class Context:
    def __init__(
        self,
        config: Config,
        batcher: "Batcher",
        sealer: Sealer,
        audit: Audit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.batcher = batcher
        self.sealer = sealer
        self.audit_trail = audit
        self.policy = Policy(config)
        self.clock = clock
        self.remembered = RememberedHosts(clock)
        self.nss = Worker("nss", NSS_THREADS, NSS_WAITING)
        self.argon2 = Worker("argon2", ARGON2_THREADS, ARGON2_WAITING)
        self.authority = Authority(config, self.nss)
        self._rules_resolved: dict[Rules, Rules] = {}
        # Called with (event, fields) after an event is durable: enrolled, reset,
        # recovery_code_used, locked, unlocked. Notifications and D-Bus signals listen.
        self.listeners: list[Callable[[str, dict[str, object]], None]] = []

    def close(self) -> None:
        self.nss.close()
        self.argon2.close()

    async def transact(self, work: Callable[[Transaction], object]) -> object:
        """Run `work` in a store transaction; its value once the batch is committed."""
        return await self.batcher.submit(work)

    async def read(self, work: Callable[["Reader"], object]) -> object:
        """Run a read-only `work` outside any transaction (one statement for a check)."""
        return await self.batcher.read(work)

    def emit(self, event: str, **fields: object) -> None:
        for listener in self.listeners:
            try:
                listener(event, fields)
            except Exception:  # a listener's bug must never change a decision
                log.exception("event listener failed for %s", event)

    def audit(self, request: Request, caller: Caller, event: str, result: str, **kwargs: object) -> None:
        """The one audit line of a decision, for the account the request names."""
        self.audit_trail.record(
            event,
            result,
            user=request.user,
            given=request.as_given,
            service=request.get("service"),
            rhost=request.get("rhost"),
            uid=caller.uid,
            **kwargs,  # type: ignore[arg-type]
        )

    async def authorize(self, request: Request, caller: Caller, allow_self: bool) -> Reply | None:
        """None if the caller may act on request.user, else the refusal (audited)."""
        if await self.authority.may_act_on(caller, request, allow_self):
            return None
        self.audit(request, caller, request.verb, "forbidden", level="warning")
        return reply("FORBIDDEN", f"uid {caller.uid} may not {request.verb} account '{request.user}'")

    async def admin_only(self, request: Request, caller: Caller, event: str, what: str) -> Reply | None:
        """None for an administrator, else the refusal (audited): `what` names the act."""
        if await self.authority.is_admin(caller):
            return None
        self.audit(request, caller, event, "forbidden", level="warning")
        return reply("FORBIDDEN", f"uid {caller.uid} may not {what}")

    async def account_exists(self, user: str) -> bool:
        if not self.config.check_accounts:
            return True
        return await self.nss.run(identity.lookup, user) is not None

    async def canonical_rules(self, rules: Rules) -> Rules:
        """`rules` with their account lists in canonical names, as every request's name is
        (`required_users = ["Alice"]` must still mean alice). Kept once NSS knew every name."""
        if not self.config.check_accounts:
            return rules  # names are taken exactly as given, in requests and lists alike
        known = self._rules_resolved.get(rules)
        if known is not None:
            return known
        resolved, complete = await self.nss.run(identity.canonical_rules, rules)
        if complete:
            self._rules_resolved[rules] = resolved
        return resolved

    def replay_floor(self, account: Account | None, secret: bytes, user: str, kind: str = "totp") -> int:
        """The replay state a token with `secret` must start from: that of any token of
        the account with the same secret and type (enrolled again, its used codes stay
        used), else -1. Every token is compared, in constant time."""
        floor = -1
        for token in account.tokens if account is not None else ():
            same = hmac.compare_digest(self.sealer.open(token.secret, secret_context(user)), secret)
            if same and token.type == kind:
                floor = max(floor, token.last_step)
        return floor

    def lift_ended_lock(self, tx: Transaction, account: Account, now: float) -> Account:
        """The account with a timed hard lock that ran out lifted, in the judging transaction."""
        if not decisions.lock_ran_out(account, now):
            return account
        tx.set_failures(account.user, account.failures, 0.0, False)
        return account._replace(locked=False, locked_until=0.0)

    def fail(self, tx: Transaction, account: Account, now: float) -> Verdict:
        """Count one failure inside the judging transaction: REJECTED, or NOW_LOCKED."""
        failures = account.failures + 1
        locked_until, locked = decisions.after_failure(self.config, failures, now)
        tx.set_failures(account.user, failures, locked_until, locked)
        return Verdict.NOW_LOCKED if locked else Verdict.REJECTED
