"""What the handlers share, below all of them: the reply, a request's fields read,
the audited refusals and audit line of a request (`Gate`), what NSS and the policy
say about accounts (`Directory`), and the listeners of durable events (`Events`).

No handler imports another; each takes the pieces it uses from here (and the judge,
judging.py) as explicit arguments.
"""

from __future__ import annotations

import hmac
import logging
import re
from typing import Callable

from . import identity, otp
from .audit import Audit
from .authorization import Authority, Caller, is_pam
from .config import Config
from .errors import ProtocolError
from .grace import Graces
from .policy import Outcome, Policy, RememberedHosts, Rules, local_today
from .protocol import DEFAULT_TOKEN, MAX_MESSAGE, TOKEN_NAME, TOKEN_TYPES, Reply, Request
from .sealing import Sealer, secret_context
from .store import Account, Token
from .workers import Worker

log = logging.getLogger("totpd")


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


def checked_token_name(name: str) -> str:
    if not TOKEN_NAME.fullmatch(name):
        raise ProtocolError("'token' must be 1 to 32 of a-z, 0-9, '_', '.', '-'")
    return name


def token_fields(request: Request) -> tuple[str, str, int]:
    """The token a request names: its name, type and (HOTP) next counter value."""
    name, kind = checked_token_name(request.get("token", DEFAULT_TOKEN)), request.get("type", "totp")
    if kind not in TOKEN_TYPES:
        raise ProtocolError("'type' must be totp or hotp")
    raw = request.get("counter", "0")
    if not re.fullmatch(r"\d{1,15}", raw):
        raise ProtocolError("'counter' must be a whole number")
    return name, kind, int(raw)


def params_of(token: Token) -> otp.Params:
    return otp.Params(token.algorithm, token.digits, token.period)


def replay_floor(sealer: Sealer, account: Account | None, secret: bytes, user: str, kind: str = "totp") -> int:
    """The replay state a token with `secret` must start from: that of any token of
    the account with the same secret and type (enrolled again, its used codes stay
    used), else -1. Every token is compared, in constant time."""
    floor = -1
    for token in account.tokens if account is not None else ():
        same = hmac.compare_digest(sealer.open(token.secret, secret_context(user)), secret)
        if same and token.type == kind:
            floor = max(floor, token.last_step)
    return floor


def door_of(caller: Caller) -> str:
    """The service a code checked outside any PAM login is audited under: the door it came by
    (a D-Bus call carries what polkit granted; a socket caller does not)."""
    return "totpctl" if caller.granted is None else "dbus"


class Events:
    """The listeners of durable events (enrolled, reset, recovery_code_used, locked, unlocked):
    notifications and D-Bus signals. Each is called with (event, fields)."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[str, dict[str, object]], None]] = []

    def emit(self, event: str, **fields: object) -> None:
        for listener in self.listeners:
            try:
                listener(event, fields)
            except Exception:  # a listener's bug must never change a decision
                log.exception("event listener failed for %s", event)


class Gate:
    """Who may act on an account (refusals audited), and the audit line of a request."""

    def __init__(self, authority: Authority, audit: Audit) -> None:
        self.authority = authority
        self.audit = audit

    def record(self, request: Request, caller: Caller, event: str, result: str, **kwargs: object) -> None:
        """The one audit line of a decision, for the account the request names."""
        self.audit.record(
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
        self.record(request, caller, request.verb, "forbidden", level="warning")
        return reply("FORBIDDEN", f"uid {caller.uid} may not {request.verb} account '{request.user}'")

    async def admin_only(self, request: Request, caller: Caller, event: str, what: str) -> Reply | None:
        """None for an administrator, else the refusal (audited): `what` names the act."""
        if await self.authority.is_admin(caller):
            return None
        self.record(request, caller, event, "forbidden", level="warning")
        return reply("FORBIDDEN", f"uid {caller.uid} may not {what}")


class Directory:
    """What NSS and the policy say about an account that has no active enrollment."""

    def __init__(self, config: Config, policy: Policy, nss: Worker, clock: Callable[[], float]) -> None:
        self._check_accounts = config.check_accounts
        self._policy = policy
        self._nss = nss
        self._clock = clock
        self._rules_resolved: dict[Rules, Rules] = {}

    async def exists(self, request: Request) -> bool:
        """Does NSS know the request's account? The identity step's answer where it asked
        (`user_uid`, -1 for no such account), so a request pays one lookup, not two."""
        if not self._check_accounts:
            return True
        return await identity.uid_of(request.user, request.user_uid, self._nss) != -1

    async def unenrolled_outcome(self, request: Request, caller: Caller, offer: bool) -> Outcome:
        """The policy's outcome for an account with no active enrollment; with `offer`,
        ENROLL in place of DENIED for root's PAM login where enroll_at_login is on."""
        if not await self.exists(request):
            return Outcome("UNKNOWN_USER")
        rules = await self._canonical_rules(self._policy.rules(request.get("service")))
        groups = await self._nss.run(identity.groups_of, request.user) if rules.needs_groups else frozenset()
        outcome = self._policy.unenrolled(rules, request.user, groups, local_today(self._clock()))
        if offer and outcome.status == "DENIED" and rules.enroll_at_login and is_pam(caller):
            return Outcome("ENROLL")
        return outcome

    async def _canonical_rules(self, rules: Rules) -> Rules:
        """`rules` with their account lists in canonical names, as every request's name is
        (`required_users = ["Alice"]` must still mean alice). Kept once NSS knew every name."""
        if not self._check_accounts:
            return rules  # names are taken exactly as given, in requests and lists alike
        known = self._rules_resolved.get(rules)
        if known is not None:
            return known
        resolved, complete = await self._nss.run(identity.canonical_rules, rules)
        if complete:
            self._rules_resolved[rules] = resolved
        return resolved


class Earned:
    """What an account's good codes earned it beyond the login itself: remembered hosts
    and sudo graces. One rule ends both: any failure or lock of the account, an unlock,
    a reset, and any change of its tokens."""

    def __init__(self, hosts: RememberedHosts, graces: Graces) -> None:
        self.hosts = hosts
        self.graces = graces

    def forget(self, user: str) -> None:
        self.hosts.forget(user)
        self.graces.forget(user)
