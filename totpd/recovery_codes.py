"""New recovery codes for an account (`recovery_codes`): the old ones stop working. An
administrator may ask; the account's own user must prove a current code or a recovery
code first (judging.py). The argon2 work runs on its own worker, after that proof."""

from __future__ import annotations

import dataclasses
from typing import Callable

from . import recovery
from .authorization import Caller
from .config import Config
from .handling import Gate, reply
from .judging import Judge
from .protocol import Reply, Request
from .store import Account, Batcher
from .workers import Worker


@dataclasses.dataclass
class RecoveryCodes:
    config: Config
    store: Batcher
    argon2: Worker
    judge: Judge
    gate: Gate
    clock: Callable[[], float]

    async def recovery_codes(self, request: Request, caller: Caller) -> Reply:
        gate = self.gate
        if refusal := await gate.authorize(request, caller, allow_self=True):
            return refusal
        user = request.user
        account = await self.store.read(lambda tx: tx.get(user))
        if not isinstance(account, Account) or not account.active:
            return reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        if not await gate.authority.is_admin(caller):
            if not await self.judge.prove(user, request.get("proof"), caller, self.clock()):
                gate.record(request, caller, "recovery_codes", "proof_rejected", level="warning")
                return reply("REJECTED", "New recovery codes need a current code or a recovery code.")
        codes, hashes = await self.argon2.run(recovery.generate, self.config.recovery_codes)
        await self.store.submit(lambda tx: tx.replace_recovery_codes(user, hashes))
        gate.record(request, caller, "recovery_codes", "regenerated", level="warning")
        return reply("OK", recovery_codes=" ".join(codes))
