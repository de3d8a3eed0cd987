"""Bulk import, staged on one connection: `import_add` seals and stages one token of an
account (the connection's `Session` holds them), `import_commit` writes every staged
account in one store transaction, or counts them (dry run). Administrators only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Callable

from . import identity, otp, recovery
from .authorization import Caller
from .config import Config
from .errors import ProtocolError
from .handling import Earned, Gate, replay_floor, reply, request_params, token_fields
from .protocol import Reply, Request
from .sealing import Sealer, secret_context
from .store import Batcher, Transaction
from .workers import Worker

MAX_STAGED = 1_000_000


@dataclasses.dataclass(frozen=True)
class StagedToken:
    """One token of an account in a bulk import, sealed and waiting for import_commit."""

    name: str
    type: str  # "totp" or "hotp"
    sealed: bytes
    params: otp.Params
    last_step: int  # TOTP: the last step the old tool accepted, or -1
    counter: int  # HOTP: the next counter value expected (the old tool's moving factor)


@dataclasses.dataclass
class Staged:
    """One account of a bulk import: its tokens, in the order given, and recovery codes."""

    user: str
    tokens: dict[str, StagedToken]
    recovery_hashes: list[str] | None


class Session:
    """State one connection keeps between requests: a bulk import being staged."""

    def __init__(self) -> None:
        self.staged: dict[str, Staged] = {}


@dataclasses.dataclass
class BulkImport:
    config: Config
    store: Batcher
    sealer: Sealer
    argon2: Worker
    nss: Worker
    gate: Gate
    earned: Earned
    clock: Callable[[], float]

    async def import_add(self, request: Request, caller: Caller, session: Session | None) -> Reply:
        assert session is not None  # Service.handle refuses an import without a connection
        if refusal := await self.gate.admin_only(request, caller, "import", "import accounts"):
            return refusal
        user = request.user
        try:
            token, kind, counter = token_fields(request)
        except ProtocolError as exc:
            raise ProtocolError(f"{user}: {exc}") from None
        account = session.staged.get(user)
        if account is not None and token in account.tokens:
            raise ProtocolError(f"account '{user}' token '{token}' appears twice in this import")
        if account is None and len(session.staged) >= MAX_STAGED:
            raise ProtocolError(f"an import holds at most {MAX_STAGED} accounts; split the file")
        if account is not None and len(account.tokens) >= self.config.max_tokens:
            raise ProtocolError(f"{user}: an account holds at most {self.config.max_tokens} tokens (max_tokens)")
        try:
            secret = otp.decode_secret(request.get("secret"))
            params = request_params(request)
        except (ValueError, ProtocolError) as exc:
            raise ProtocolError(f"{user}: {exc}") from None
        raw_step = request.get("last_step", "-1")
        if not re.fullmatch(r"-1|\d{1,15}", raw_step):
            raise ProtocolError("'last_step' must be -1 or a whole number")
        hashes = None
        if "recovery_codes" in request.fields:
            if account is not None and account.recovery_hashes is not None:
                raise ProtocolError(f"account '{user}' has recovery codes twice in this import")
            codes = request.get("recovery_codes").split()
            hashes = await self.argon2.run(recovery.hash_codes, codes)
        if account is None:
            account = session.staged[user] = Staged(user, {}, None)
        if hashes is not None:
            account.recovery_hashes = hashes
        account.tokens[token] = StagedToken(
            token, kind, self.sealer.seal(secret, secret_context(user)), params, int(raw_step), counter
        )
        return reply("OK", staged=len(session.staged))

    async def import_commit(self, request: Request, caller: Caller, session: Session | None) -> Reply:
        assert session is not None  # Service.handle refuses an import without a connection
        if refusal := await self.gate.admin_only(request, caller, "import", "import accounts"):
            return refusal
        staged, session.staged = list(session.staged.values()), {}
        force, dry_run = request.flag("force"), request.flag("dry_run")
        if self.config.check_accounts:
            unknown = await self.nss.run(lambda: [item.user for item in staged if identity.lookup(item.user) is None])
            if unknown:
                return reply(
                    "UNKNOWN_USER",
                    f"{len(unknown)} account(s) do not exist on this host, e.g. '{unknown[0]}'; nothing was imported",
                    unknown_users=json.dumps(unknown[:100]),
                )
        now = self.clock()

        def commit(tx: Transaction) -> tuple[list[str], list[str], list[str]]:
            created: list[str] = []
            replaced: list[str] = []
            skipped: list[str] = []
            for item in staged:
                existing = tx.get(item.user)
                if existing is not None and existing.active and not force:
                    skipped.append(item.user)
                    continue
                (replaced if existing is not None else created).append(item.user)
                if dry_run:
                    continue
                tokens = list(item.tokens.values())
                for index, token in enumerate(tokens):
                    secret = self.sealer.open(token.sealed, secret_context(item.user))
                    floor = replay_floor(self.sealer, existing, secret, item.user, token.type)
                    last = token.counter - 1 if token.type == "hotp" else token.last_step
                    p = token.params
                    tx.put_pending(
                        item.user, token.sealed, p.algorithm, p.digits, p.period, now,
                        token=token.name, kind=token.type, last_step=last, replaces=index == 0,
                    )
                    tx.activate_pending(item.user, now, replay_floor=floor)
                tx.replace_recovery_codes(item.user, item.recovery_hashes or [])
            return created, replaced, skipped

        created, replaced, skipped = await self.store.submit(commit)  # type: ignore[misc]
        if not dry_run:
            for user in created + replaced:
                self.earned.forget(user)
                self.gate.audit.record("import", "active", user=user, uid=caller.uid)
        self.gate.record(
            request, caller, "import", "dry_run" if dry_run else "committed",
            detail=f"created={len(created)} replaced={len(replaced)} skipped={len(skipped)}",
        )
        return reply(
            "OK", created=len(created), replaced=len(replaced), skipped=len(skipped),
            skipped_users=json.dumps(skipped[:100]), dry_run=int(dry_run),
        )
