"""The administrator's verbs on accounts: `status` (an account's own user may ask too),
`list`, `reset` and `unlock`. Each change is one store transaction, durable before
the reply and announced as an event."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from . import clock, decisions, otp
from .authorization import Caller
from .errors import ProtocolError
from .handling import Earned, Events, Gate, int_field, reply
from .protocol import MAX_LIST_LIMIT, MAX_REPLY_PAYLOAD, Reply, Request
from .store import Account, Batcher, Reader, Transaction

LIST_REPLY_BUDGET = MAX_REPLY_PAYLOAD - 1024  # room for the status line and the other keys


@dataclasses.dataclass
class Admin:
    store: Batcher
    gate: Gate
    earned: Earned
    events: Events
    clock: Callable[[], float]

    async def status(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.authorize(request, caller, allow_self=True):
            return refusal
        user = request.user

        def read(tx: Reader) -> tuple[Account | None, int]:
            return tx.get(user), len(tx.recovery_hashes(user))

        account, left = await self.store.read(read)  # type: ignore[misc]
        if account is None:
            return reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        synced = clock.synchronized()
        graces, grace_until = self.earned.graces.active(user)
        return reply(
            "OK", **describe(account, left, self.clock()), clock_synchronized="unknown" if synced is None else int(synced),
            sudo_graces=graces, sudo_grace_until=int(grace_until),
        )

    async def list_accounts(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.admin_only(request, caller, "list", "list accounts"):
            return refusal
        offset = int_field(request, "offset", 0)
        limit = min(int_field(request, "limit", MAX_LIST_LIMIT), MAX_LIST_LIMIT)
        if offset < 0 or limit < 1:
            raise ProtocolError("'offset' must be 0 or more and 'limit' 1 or more")

        def read(tx: Reader) -> tuple[int, list[tuple[Account, int]]]:
            return tx.count(), tx.page(offset, limit)

        total, page = await self.store.read(read)  # type: ignore[misc]
        now = self.clock()
        # Return as many entries as fit in one reply; the client pages on from offset + count.
        entries: list[str] = []
        size = 0
        for account, left in page:
            entry = json.dumps(dict(user=account.user, **describe(account, left, now)), separators=(",", ":"))
            if size + len(entry) + 1 > LIST_REPLY_BUDGET and entries:
                break
            entries.append(entry)
            size += len(entry) + 1
        return reply("OK", total=total, count=len(entries), accounts="[" + ",".join(entries) + "]")

    async def reset(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.authorize(request, caller, allow_self=False):
            return refusal
        deleted = await self.store.submit(lambda tx: tx.delete(request.user))
        self.gate.record(request, caller, "reset", "done" if deleted else "not_enrolled", level="warning")
        if not deleted:
            return reply("NOT_ENROLLED", f"account '{request.user}' is not enrolled")
        self.earned.forget(request.user)
        self.events.emit("reset", user=request.user)
        return reply("OK")

    async def unlock(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self.gate.authorize(request, caller, allow_self=False):
            return refusal
        user = request.user

        def unlock(tx: Transaction) -> bool:
            if tx.get(user) is None:
                return False
            tx.set_failures(user, 0, 0.0, False)
            return True

        done = await self.store.submit(unlock)
        self.gate.record(request, caller, "unlock", "done" if done else "not_enrolled")
        if not done:
            return reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        self.earned.forget(user)
        self.events.emit("unlocked", user=user)
        return reply("OK")


def describe(account: Account, recovery_left: int, now: float) -> dict[str, object]:
    # The first token's parameters stay in the reply as before, for scripts that read them.
    first = account.tokens[0] if account.tokens else None
    defaults = otp.Params()
    return {
        "enrolled": int(account.active),
        "pending": int(account.pending_secret is not None),
        "locked": int(account.locked and decisions.is_locked(account, now)),
        "locked_until": int(account.locked_until) if account.locked_until > now else 0,
        "failures": account.failures,
        "recovery_codes_left": recovery_left,
        "algorithm": first.algorithm if first else account.pending_algorithm or defaults.algorithm,
        "digits": first.digits if first else account.pending_digits or defaults.digits,
        "period": first.period if first else account.pending_period or defaults.period,
        "created": int(account.created),
        "confirmed": int(account.confirmed) if account.confirmed else "",
        "tokens": len(account.tokens),
    }
