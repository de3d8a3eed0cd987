"""An account's tokens once enrolled: listed (`token_list`), removed (`token_remove`),
and re-aligned by two consecutive codes (`resync`: an HOTP counter pressed away from
any login, a TOTP token's clock offset), judged like any code (judging.py)."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from .authorization import Caller
from .handling import Earned, Gate, checked_token_name, reply
from .judging import Judge, Pair
from .protocol import Reply, Request
from .store import Account, Batcher, Token, Transaction


@dataclasses.dataclass
class Tokens:
    store: Batcher
    judge: Judge
    gate: Gate
    earned: Earned
    clock: Callable[[], float]

    async def token_list(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.authorize(request, caller, allow_self=True):
            return refusal
        account = await self.store.read(lambda tx: tx.get(request.user))
        if not isinstance(account, Account) or not account.active:
            return reply("NOT_ENROLLED", f"account '{request.user}' is not enrolled")
        entries = [describe_token(token) for token in account.tokens]
        return reply("OK", count=len(entries), tokens=json.dumps(entries, separators=(",", ":")))

    async def resync(self, request: Request, caller: Caller) -> Reply:
        """A pair that matches no token within reach is a failure, counted like a wrong code."""
        if refusal := await self.gate.authorize(request, caller, allow_self=True):
            return refusal
        name = request.get("token")
        pair = Pair(request.get("code").strip(), request.get("next_code").strip(), name and checked_token_name(name))
        now = self.clock()
        judged = await self.judge.judge(request.user, pair, now)
        return self.judge.follow(request, caller, judged, now, success=reply("OK", token=judged.name))

    async def token_remove(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.authorize(request, caller, allow_self=False):
            return refusal
        user, name = request.user, checked_token_name(request.get("token"))

        def remove(tx: Transaction) -> str:
            account = tx.get(user)
            if account is None or account.token(name) is None:
                return "no_such_token"
            if len(account.tokens) == 1:
                return "last_token"  # that is a reset, and says so
            tx.remove_token(user, name)
            return "done"

        result = await self.store.submit(remove)
        self.gate.record(request, caller, "token_remove", str(result), token=name, level="warning")
        if result == "no_such_token":
            return reply("NOT_ENROLLED", f"account '{user}' has no token '{name}'")
        if result == "last_token":
            return reply(
                "BAD_REQUEST", f"'{name}' is the last token of account '{user}'; removing it is a reset: totpctl reset {user}"
            )
        self.earned.forget(user)
        return reply("OK")


def describe_token(token: Token) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": token.name,
        "type": token.type,
        "algorithm": token.algorithm,
        "digits": token.digits,
        "added": int(token.added),
        "last_used": int(token.last_used) if token.last_used else "",
    }
    if token.type == "hotp":
        entry["counter"] = token.last_step + 1  # the next value expected
    else:
        entry["period"] = token.period
        entry["skew"] = token.skew
    return entry
