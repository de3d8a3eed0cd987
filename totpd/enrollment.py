"""Enrollment: a new token made pending (`enroll`, the account's first or one that
replaces every token; `token_add`, one beside the others), or active at once for an
administrator, and a pending token confirmed by its first code (`confirm`).

Each change is one store transaction, durable before the reply; argon2 work (new
recovery codes) runs on its own worker and only once every cheap check has passed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from . import otp, recovery
from .authorization import Caller
from .config import Config
from .errors import ProtocolError
from .handling import Earned, Directory, Events, Gate, replay_floor, reply, request_params, token_fields
from .judging import FirstCode, Judge
from .protocol import Reply, Request
from .sealing import Sealer, secret_context
from .store import Account, Batcher, Transaction
from .workers import Worker


@dataclasses.dataclass
class Enrollment:
    config: Config
    store: Batcher
    sealer: Sealer
    argon2: Worker
    judge: Judge
    gate: Gate
    directory: Directory
    earned: Earned
    events: Events
    clock: Callable[[], float]

    async def enroll(self, request: Request, caller: Caller) -> Reply:
        """The account's first token, or (force) one that replaces every token it has."""
        return await self._new_token(request, caller, "enroll")

    async def token_add(self, request: Request, caller: Caller) -> Reply:
        """One more token beside the account's others."""
        return await self._new_token(request, caller, "token_add")

    async def confirm(self, request: Request, caller: Caller) -> Reply:
        """The pending token activated by its first code; an enrollment that replaced every
        token answers with its new recovery codes, a token added beside others with its name."""
        if refusal := await self.gate.authorize(request, caller, allow_self=True):
            return refusal
        now = self.clock()
        judged = await self.judge.judge(request.user, FirstCode(request.get("code").strip()), now)
        replaced = judged.account is not None and judged.account.pending_replaces
        success = reply("OK", recovery_codes=" ".join(judged.codes)) if replaced else reply("OK", token=judged.name)
        return self.judge.follow(request, caller, judged, now, success=success)

    async def _new_token(self, request: Request, caller: Caller, event: str) -> Reply:
        gate, config, user = self.gate, self.config, request.user
        adding = event == "token_add"
        admin = await gate.authority.is_admin(caller)
        if not admin and not (config.self_enroll and await gate.authority.is_self(caller, request)):
            gate.record(request, caller, event, "forbidden", level="warning")
            return reply("FORBIDDEN", f"uid {caller.uid} may not {'add tokens to' if adding else 'enroll'} account '{user}'")
        if not await self.directory.exists(request):
            gate.record(request, caller, event, "unknown_user")
            return reply("UNKNOWN_USER", f"no account '{user}' on this host")
        name, kind, counter = token_fields(request)
        params = request_params(request)
        if "secret" in request.fields:
            try:
                secret = otp.decode_secret(request.get("secret"))
            except ValueError as exc:
                raise ProtocolError(str(exc)) from None
        else:
            secret = otp.new_secret()
        force, activate = request.flag("force"), request.flag("activate")
        if not admin and activate:
            return reply("FORBIDDEN", "only an administrator may enroll without confirming a first code")
        existing = await self.store.read(lambda tx: tx.get(user))
        assert existing is None or isinstance(existing, Account)
        if adding:
            if existing is None or not existing.active:
                gate.record(request, caller, event, "not_enrolled")
                return reply("NOT_ENROLLED", f"account '{user}' is not enrolled; enroll it first: totpctl enroll {user}")
            if existing.token(name) is not None:
                gate.record(request, caller, event, "exists", token=name)
                return reply("EXISTS", f"account '{user}' already has a token '{name}'; remove it first or pick another --name")
            if len(existing.tokens) >= config.max_tokens:
                gate.record(request, caller, event, "too_many", token=name)
                return reply("BAD_REQUEST", f"account '{user}' has {len(existing.tokens)} tokens, the most max_tokens allows")
        elif existing is not None and existing.active and not force:
            gate.record(request, caller, event, "exists")
            return reply("EXISTS", f"account '{user}' is already enrolled; use --force to replace it")
        if existing is not None and existing.active and not admin:
            if not await self.judge.prove(user, request.get("proof"), caller, self.clock()):
                gate.record(request, caller, event, "proof_rejected", level="warning")
                what = "Adding a token" if adding else "Replacing an enrollment"
                return reply("REJECTED", f"{what} needs a current code or a recovery code.")
        now = self.clock()
        sealed = self.sealer.seal(secret, secret_context(user))
        codes: list[str] = []
        hashes: list[str] = []
        if activate and not adding:
            codes, hashes = await self.argon2.run(recovery.generate, config.recovery_codes)

        def write(tx: Transaction) -> None:
            floor = replay_floor(self.sealer, tx.get(user), secret, user, kind)
            tx.put_pending(
                user, sealed, params.algorithm, params.digits, params.period, now,
                token=name, kind=kind, last_step=counter - 1 if kind == "hotp" else -1, replaces=not adding,
            )
            if activate:
                tx.activate_pending(user, now, replay_floor=floor)
                if not adding:
                    tx.replace_recovery_codes(user, hashes)

        await self.store.submit(write)
        self.earned.forget(user)
        gate.record(request, caller, event, "active" if activate else "pending", token=name)
        if activate:
            self.events.emit("enrolled", user=user)
        issuer = request.get("issuer") or config.issuer_name
        fields: dict[str, object] = {
            "uri": otp.provisioning_uri(secret, user, issuer, params, kind, counter),
            "secret": otp.encode_secret(secret),
            "pending": 0 if activate else 1,
            "token": name,
            "type": kind,
        }
        if activate and not adding:
            fields["recovery_codes"] = " ".join(codes)
        return reply("OK", **fields)  # type: ignore[arg-type]
