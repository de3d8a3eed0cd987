"""Enrollment at login (`enroll_at_login`): a required account with no enrollment
enrolls inside its own PAM conversation, after its first factor.

Two verbs, root's PAM module only: `login_enroll` starts (or shows again) the one
pending enrollment of the account and answers with the lines the person must see
(the QR code drawn in text, the key for typing in); `login_confirm` activates it
with a first code and answers with the recovery codes, as lines too. A pending
enrollment started at login is good for `enroll_at_login_timeout` seconds; when
it is abandoned, the next login that enrolls replaces it. When each one expires
is kept in memory only: after a restart every pending enrollment counts as
expired for logins (fail closed), never longer than the timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable

from . import decisions, otp
from .authorization import Caller, is_pam
from .config import Config
from .decisions import Verdict
from .handling import Directory, Gate, reply
from .judging import FirstCode, Judge
from .policy import Policy
from .protocol import MAX_ENROLL_REPLY_PAYLOAD, MAX_LINES, MAX_MESSAGE, Reply, Request, encode_reply
from .sealing import Sealer, secret_context
from .store import Account, Batcher, Transaction

log = logging.getLogger("totpd")


class PendingAtLogin:
    """Pending enrollments started at login: account -> (sealed secret, until when). In memory."""

    MAX_ENTRIES = 100_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._started: dict[str, tuple[bytes, float]] = {}

    def current(self, user: str) -> tuple[bytes, float] | None:
        """The account's pending enrollment started at login and not expired, if any."""
        found = self._started.get(user)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self._started[user]
            return None
        return found

    def start(self, user: str, sealed: bytes, until: float) -> None:
        if len(self._started) >= self.MAX_ENTRIES:
            now = self.clock()
            self._started = {key: value for key, value in self._started.items() if value[1] > now}
        self._started[user] = (sealed, until)

    def end(self, user: str) -> None:
        self._started.pop(user, None)


@dataclasses.dataclass
class EnrollAtLogin:
    config: Config
    store: Batcher
    sealer: Sealer
    judge: Judge
    gate: Gate
    directory: Directory
    policy: Policy
    clock: Callable[[], float]
    pending: PendingAtLogin = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.pending = PendingAtLogin(self.clock)

    async def _offered(self, request: Request, caller: Caller, event: str) -> Reply | None:
        """None if this login may enroll now, else the reply that says why not (audited)."""
        if not is_pam(caller):
            self.gate.record(request, caller, event, "forbidden", level="warning")
            return reply("FORBIDDEN", "only the PAM module (root) may enroll at login")
        account = await self.store.read(lambda tx: tx.get(request.user))
        if isinstance(account, Account) and account.active:
            self.gate.record(request, caller, event, "already_enrolled")
            return reply("DENIED", "This account is already enrolled; log in again with a code.")
        now = self.clock()
        if isinstance(account, Account) and decisions.is_locked(account, now):  # too many wrong first codes
            self.gate.record(request, caller, event, "locked")
            return reply("LOCKED", self.policy.locked_message(request.user, account.locked, account.locked_until, now))
        outcome = await self.directory.unenrolled_outcome(request, caller, offer=True)
        if outcome.status == "ENROLL":
            return None
        self.gate.record(request, caller, event, "not_offered_" + outcome.status.lower())
        if outcome.status == "IGNORE":  # policy changed since `check`: this conversation ends; the next login decides
            return reply("DENIED", "Enrollment at login is no longer offered to this account; log in again.")
        return reply(outcome.status, outcome.message)

    async def login_enroll(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._offered(request, caller, "login_enroll"):
            return refusal
        user, now = request.user, self.clock()
        known = self.pending.current(user)
        secret = otp.new_secret()
        fresh = self.sealer.seal(secret, secret_context(user))
        params = otp.Params()

        def start(tx: Transaction) -> bytes | None:
            """The pending enrollment to show: this login's earlier one while it lasts, else a new one."""
            account = tx.get(user)
            if account is not None and account.active:
                return None  # enrolled meanwhile
            if known is not None and account is not None and account.pending_secret == known[0]:
                return known[0]
            tx.put_pending(user, fresh, params.algorithm, params.digits, params.period, now)
            return fresh

        sealed = await self.store.submit(start)
        if not isinstance(sealed, bytes):
            self.gate.record(request, caller, "login_enroll", "already_enrolled")
            return reply("DENIED", "This account is already enrolled; log in again with a code.")
        again = known is not None and sealed == known[0]
        until = known[1] if again and known is not None else now + self.config.enroll_at_login_timeout
        if not again:
            self.pending.start(user, sealed, until)
        else:
            secret = self.sealer.open(sealed, secret_context(user))
        self.gate.record(request, caller, "login_enroll", "pending_shown_again" if again else "pending")
        answer = self._enrollment_screen(user, secret, params, until - now)
        if answer is None:
            log.error("the enrollment of %s does not fit a reply: shorten 'issuer'", user)
            return reply("UNAVAILABLE", "This account cannot be enrolled at login; ask an administrator.")
        return answer

    def _enrollment_screen(self, user: str, secret: bytes, params: otp.Params, left: float) -> Reply | None:
        """NEED_CODE with the lines to show before the first code's prompt; None if they do not fit."""
        from . import qr  # segno: only drawing needs it

        uri = otp.provisioning_uri(secret, user, self.config.issuer_name, params)
        key = otp.encode_secret(secret)
        minutes = max(1, math.floor(left / 60))
        lines = [
            ("info", f"Two-factor login is required for {user} and no authenticator is enrolled yet."),
            ("info", qr.TWO_COPIES + ":"),
            *(("qr", line) for line in qr.block_lines(uri)),
            ("info", "Or add an account by hand with this key (time-based, "
                     f"{params.algorithm}, {params.digits} digits, {params.period} s):"),
            ("info", "  " + " ".join(key[i : i + 4] for i in range(0, len(key), 4))),
            ("info", f"Then type the code the app shows. This enrollment is good for {minutes} more"
                     f" minute{'s' if minutes != 1 else ''}."),
        ]
        answer = Reply("NEED_CODE", {}, tuple(lines))
        if len(lines) > MAX_LINES or any(len(text.encode()) > MAX_MESSAGE for _, text in lines):
            return None
        if len(encode_reply(answer)) - 8 > MAX_ENROLL_REPLY_PAYLOAD:
            return None
        return answer

    async def login_confirm(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._offered(request, caller, "login_confirm"):
            return refusal
        user, now = request.user, self.clock()
        known = self.pending.current(user)
        if known is None:
            self.gate.record(request, caller, "login_confirm", "expired")
            return reply("DENIED", "This enrollment has expired; log in again to start over.")
        judged = await self.judge.judge(user, FirstCode(request.get("code").strip(), expected=known[0]), now)
        if judged.verdict in (Verdict.CONFIRMED, Verdict.NO_PENDING):
            self.pending.end(user)
        codes = judged.codes
        lines = [
            ("info", "The authenticator is enrolled. These recovery codes each work once in place of a code"),
            ("info", "if the phone is lost; this is the only time they are shown. Keep them safe:"),
            *(("info", "  " + "   ".join(codes[i : i + 4])) for i in range(0, len(codes), 4)),
        ]
        return self.judge.follow(request, caller, judged, now, success=Reply("ACCEPTED", {}, tuple(lines)))
