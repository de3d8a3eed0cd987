"""A login's two verbs: `check` (must this login give a code?) and `verify` (is it good?).

`check` reads the account once and answers from the policy, a lock or a remembered
host; `verify` is judged and followed on the one path of every code (judging.py),
an account with no active enrollment getting the policy's answer instead.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from . import decisions
from .authorization import Caller, is_pam
from .decisions import Verdict
from .handling import Earned, Directory, Gate, reply
from .judging import Code, Judge
from .policy import Policy
from .protocol import Reply, Request
from .store import Account, Batcher
from .workers import Worker

PROMPT = "Verification code: "


@dataclasses.dataclass
class Login:
    store: Batcher
    judge: Judge
    gate: Gate
    directory: Directory
    policy: Policy
    earned: Earned
    nss: Worker
    clock: Callable[[], float]

    async def check(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.authorize(request, caller, allow_self=True):
            return refusal
        user, now, policy = request.user, self.clock(), self.policy
        if is_pam(caller) and policy.trusted(policy.rules(request.get("service")), request.get("rhost")):
            self.gate.record(request, caller, "check", "trusted_network")
            return reply("IGNORE")  # enrolled or not: the rest of the stack decides, without a code
        account = await self.store.read(lambda tx: tx.get(user))
        assert account is None or isinstance(account, Account)
        if account is None or not account.active:
            return await self._unenrolled(request, caller, "check")
        if decisions.is_locked(account, now):
            self.gate.record(request, caller, "check", "locked")
            return reply("LOCKED", policy.locked_message(user, account.locked, account.locked_until, now))
        if is_pam(caller) and self.earned.hosts.recalls(user, request.get("service"), request.get("rhost")):
            self.gate.record(request, caller, "check", "accepted_remembered_host")
            return reply("ACCEPTED")
        grace = policy.rules(request.get("service")).sudo_grace
        if is_pam(caller) and await self.earned.graces.grants(user, caller.pid, grace, self.nss, request.user_uid):
            self.gate.record(request, caller, "check", "accepted_grace")
            return reply("ACCEPTED")
        return reply("NEED_CODE", prompt=PROMPT)

    async def verify(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.authorize(request, caller, allow_self=True):
            return refusal
        now = self.clock()
        judged = await self.judge.judge(request.user, Code(request.get("code").strip()), now)
        if judged.verdict is Verdict.UNENROLLED:
            return await self._unenrolled(request, caller, "verify")
        return self.judge.follow(request, caller, judged, now)

    async def _unenrolled(self, request: Request, caller: Caller, event: str) -> Reply:
        """What a login of an account with no active enrollment gets: the policy's answer
        (to a PAM `check`, ENROLL where enroll_at_login turns a refusal into an enrollment)."""
        outcome = await self.directory.unenrolled_outcome(request, caller, offer=event == "check")
        results = {"UNKNOWN_USER": "unknown_user", "ENROLL": "enroll_offered"}
        self.gate.record(request, caller, event, results.get(outcome.status, "not_enrolled_" + outcome.status.lower()))
        return reply(outcome.status, outcome.message)
