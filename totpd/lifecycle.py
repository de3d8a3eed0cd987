"""An account's life: enrollment and its confirmation, status, listing, reset,
unlock, recovery codes, and bulk import.

Every change is one store transaction, durable before the reply; argon2 work (new
recovery codes, imported ones) runs on its own worker and only once every cheap
check has passed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import NamedTuple

from . import clock, decisions, identity, otp, recovery
from .authorization import Caller
from .context import Context, int_field, pending_params, reply, request_params
from .decisions import Verdict
from .errors import ProtocolError
from .login import Login
from .protocol import DEFAULT_TOKEN, MAX_LIST_LIMIT, MAX_REPLY_PAYLOAD, TOKEN_NAME, TOKEN_TYPES, Reply, Request
from .sealing import secret_context
from .store import Account, Reader, Token, Transaction

LIST_REPLY_BUDGET = MAX_REPLY_PAYLOAD - 1024  # room for the status line and the other keys
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


class Confirmed(NamedTuple):
    """What a first code for a pending token came to."""

    verdict: Verdict
    token: str
    replaces: bool  # an enrollment, which replaced every token and made recovery codes
    codes: list[str]  # those recovery codes, shown once


class Session:
    """State one connection keeps between requests: a bulk import being staged."""

    def __init__(self) -> None:
        self.staged: dict[str, Staged] = {}


class Lifecycle:
    def __init__(self, ctx: Context, login: Login) -> None:
        self.ctx = ctx
        self.login = login  # a proof of the current enrollment is a verification

    async def enroll(self, request: Request, caller: Caller) -> Reply:
        """The account's first token, or (force) one that replaces every token it has."""
        return await self._new_token(request, caller, "enroll")

    async def token_add(self, request: Request, caller: Caller) -> Reply:
        """One more token beside the account's others."""
        return await self._new_token(request, caller, "token_add")

    async def _new_token(self, request: Request, caller: Caller, event: str) -> Reply:
        ctx = self.ctx
        user = request.user
        adding = event == "token_add"
        admin = await ctx.authority.is_admin(caller)
        if not admin and not (ctx.config.self_enroll and await ctx.authority.is_self(caller, request)):
            ctx.audit(request, caller, event, "forbidden", level="warning")
            return reply("FORBIDDEN", f"uid {caller.uid} may not {'add tokens to' if adding else 'enroll'} account '{user}'")
        if not await ctx.account_exists(user):
            ctx.audit(request, caller, event, "unknown_user")
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
        proof = request.get("proof")
        existing = await ctx.read(lambda tx: tx.get(user))
        assert existing is None or isinstance(existing, Account)
        if adding:
            if existing is None or not existing.active:
                ctx.audit(request, caller, event, "not_enrolled")
                return reply("NOT_ENROLLED", f"account '{user}' is not enrolled; enroll it first: totpctl enroll {user}")
            if existing.token(name) is not None:
                ctx.audit(request, caller, event, "exists", token=name)
                return reply("EXISTS", f"account '{user}' already has a token '{name}'; remove it first or pick another --name")
            if len(existing.tokens) >= ctx.config.max_tokens:
                ctx.audit(request, caller, event, "too_many", token=name)
                return reply("BAD_REQUEST", f"account '{user}' has {len(existing.tokens)} tokens, the most max_tokens allows")
        elif existing is not None and existing.active and not force:
            ctx.audit(request, caller, event, "exists")
            return reply("EXISTS", f"account '{user}' is already enrolled; use --force to replace it")
        if existing is not None and existing.active and not admin and not await self._prove(user, proof, caller):
            ctx.audit(request, caller, event, "proof_rejected", level="warning")
            what = "Adding a token" if adding else "Replacing an enrollment"
            return reply("REJECTED", f"{what} needs a current code or a recovery code.")
        now = ctx.clock()
        sealed = ctx.sealer.seal(secret, secret_context(user))
        codes: list[str] = []
        hashes: list[str] = []
        if activate and not adding:
            codes, hashes = await ctx.argon2.run(recovery.generate, ctx.config.recovery_codes)

        def write(tx: Transaction) -> None:
            floor = ctx.replay_floor(tx.get(user), secret, user, kind)
            tx.put_pending(
                user, sealed, params.algorithm, params.digits, params.period, now,
                token=name, kind=kind, last_step=counter - 1 if kind == "hotp" else -1, replaces=not adding,
            )
            if activate:
                tx.activate_pending(user, now, replay_floor=floor)
                if not adding:
                    tx.replace_recovery_codes(user, hashes)

        await ctx.transact(write)
        ctx.remembered.forget(user)
        ctx.audit(request, caller, event, "active" if activate else "pending", token=name)
        if activate:
            ctx.emit("enrolled", user=user)
        issuer = request.get("issuer") or ctx.config.issuer_name
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

    async def _prove(self, user: str, proof: str, caller: Caller) -> bool:
        """A current code or a recovery code for the account's active enrollment (consumed)."""
        if not proof:
            return False
        answer = await self.login.verify(Request("verify", {"user": user, "code": proof, "service": "totpctl"}), caller)
        return answer.status == "ACCEPTED"

    async def confirm(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=True):
            return refusal
        user, code, now = request.user, request.get("code").strip(), ctx.clock()
        confirmed = await self.confirm_pending(user, code, now)
        verdict = confirmed.verdict
        ctx.audit(request, caller, "confirm", verdict.value, token=confirmed.token)
        if verdict is Verdict.CONFIRMED:
            if confirmed.replaces:
                return reply("OK", recovery_codes=" ".join(confirmed.codes))
            return reply("OK", token=confirmed.token)
        if verdict is Verdict.NO_PENDING:
            return reply("NOT_ENROLLED", f"account '{user}' has no enrollment waiting for confirmation")
        if verdict is Verdict.REJECTED:
            return reply("REJECTED", "Wrong verification code; the enrollment is still pending.")
        return reply("LOCKED", "Too many wrong codes; wait, or ask an administrator to unlock the account.")

    async def confirm_pending(
        self, user: str, code: str, now: float, expected: bytes | None = None, **where: str
    ) -> Confirmed:
        """Activate the account's pending token with its first code: the verdict, the
        token, and, once an enrollment that replaces every token is CONFIRMED, its new
        recovery codes. With `expected`, only that sealed pending token counts
        (enroll_at_login: the one this login was shown); `where` (service, rhost) goes
        with the event."""
        ctx = self.ctx

        def judge(tx: Transaction) -> tuple[Verdict, int, bytes | None, bool, str]:
            """The cheap part first: a pending token, no lock, the right code."""
            account = tx.get(user)
            if account is None or account.pending_secret is None:
                return Verdict.NO_PENDING, -1, None, False, ""
            if expected is not None and account.pending_secret != expected:
                return Verdict.NO_PENDING, -1, None, False, ""
            if decisions.is_locked(account, now):
                return Verdict.LOCKED, -1, None, False, ""
            account = ctx.lift_ended_lock(tx, account, now)
            secret = ctx.sealer.open(account.pending_secret, secret_context(user))
            # A first code has no replay state of its own yet: any step in the window will do
            # (HOTP: the look-ahead from the counter it was added with).
            kind = account.pending_type or "totp"
            last = account.pending_last_step if account.pending_last_step is not None else -1
            params = pending_params(account)
            pending = Token(
                account.pending_token or DEFAULT_TOKEN, kind, b"", params.algorithm, params.digits, params.period,
                last if kind == "hotp" else -1, 0, now, None,
            )
            verdict, token, step = decisions.judge_tokens([(pending, secret)], code, now, ctx.config)
            if verdict is not Verdict.ACCEPTED:
                return ctx.fail(tx, account, now), -1, None, False, pending.name
            return verdict, step, account.pending_secret, account.pending_replaces, pending.name

        verdict, step, pending, replaces, name = await ctx.transact(judge)  # type: ignore[misc]
        codes: list[str] = []
        if verdict is Verdict.ACCEPTED:
            # Only a right code for a pending enrollment is worth the argon2 work.
            hashes: list[str] = []
            if replaces:
                codes, hashes = await ctx.argon2.run(recovery.generate, ctx.config.recovery_codes)

            def activate(tx: Transaction) -> Verdict:
                account = tx.get(user)
                if account is None or account.pending_secret != pending:
                    return Verdict.NO_PENDING  # confirmed, replaced or reset meanwhile
                secret = ctx.sealer.open(pending, secret_context(user))
                kind = account.pending_type or "totp"
                tx.activate_pending(user, now, replay_floor=ctx.replay_floor(account, secret, user, kind))
                tx.advance_step(user, name, step, 0, now)
                if replaces:
                    tx.replace_recovery_codes(user, hashes)
                return Verdict.CONFIRMED

            verdict = await ctx.transact(activate)
        if verdict is not Verdict.CONFIRMED:
            return Confirmed(verdict, name, replaces, [])
        ctx.remembered.forget(user)
        ctx.emit("enrolled", user=user, **where)
        return Confirmed(verdict, name, replaces, codes)

    async def status(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=True):
            return refusal
        user = request.user

        def read(tx: Reader) -> tuple[Account | None, int]:
            return tx.get(user), len(tx.recovery_hashes(user))

        account, left = await ctx.read(read)  # type: ignore[misc]
        if account is None:
            return reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        synced = clock.synchronized()
        return reply(
            "OK", **describe(account, left, ctx.clock()), clock_synchronized="unknown" if synced is None else int(synced)
        )

    async def list_accounts(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.admin_only(request, caller, "list", "list accounts"):
            return refusal
        offset = int_field(request, "offset", 0)
        limit = min(int_field(request, "limit", MAX_LIST_LIMIT), MAX_LIST_LIMIT)
        if offset < 0 or limit < 1:
            raise ProtocolError("'offset' must be 0 or more and 'limit' 1 or more")

        def read(tx: Reader) -> tuple[int, list[tuple[Account, int]]]:
            return tx.count(), tx.page(offset, limit)

        total, page = await ctx.read(read)  # type: ignore[misc]
        now = ctx.clock()
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
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=False):
            return refusal
        deleted = await ctx.transact(lambda tx: tx.delete(request.user))
        ctx.audit(request, caller, "reset", "done" if deleted else "not_enrolled", level="warning")
        if not deleted:
            return reply("NOT_ENROLLED", f"account '{request.user}' is not enrolled")
        ctx.remembered.forget(request.user)
        ctx.emit("reset", user=request.user)
        return reply("OK")

    async def unlock(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=False):
            return refusal
        user = request.user

        def unlock(tx: Transaction) -> bool:
            if tx.get(user) is None:
                return False
            tx.set_failures(user, 0, 0.0, False)
            return True

        done = await ctx.transact(unlock)
        ctx.audit(request, caller, "unlock", "done" if done else "not_enrolled")
        if not done:
            return reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        ctx.emit("unlocked", user=user)
        return reply("OK")

    async def recovery_codes(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=True):
            return refusal
        user = request.user
        account = await ctx.read(lambda tx: tx.get(user))
        if not isinstance(account, Account) or not account.active:
            return reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        if not await ctx.authority.is_admin(caller) and not await self._prove(user, request.get("proof"), caller):
            ctx.audit(request, caller, "recovery_codes", "proof_rejected", level="warning")
            return reply("REJECTED", "New recovery codes need a current code or a recovery code.")
        codes, hashes = await ctx.argon2.run(recovery.generate, ctx.config.recovery_codes)
        await ctx.transact(lambda tx: tx.replace_recovery_codes(user, hashes))
        ctx.audit(request, caller, "recovery_codes", "regenerated", level="warning")
        return reply("OK", recovery_codes=" ".join(codes))


    async def token_list(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=True):
            return refusal
        account = await ctx.read(lambda tx: tx.get(request.user))
        if not isinstance(account, Account) or not account.active:
            return reply("NOT_ENROLLED", f"account '{request.user}' is not enrolled")
        entries = [describe_token(token) for token in account.tokens]
        return reply("OK", count=len(entries), tokens=json.dumps(entries, separators=(",", ":")))

    async def resync(self, request: Request, caller: Caller) -> Reply:
        """Two consecutive codes re-align a token: an HOTP counter pressed away from any
        login, a TOTP token's clock offset. A pair that matches nothing is a failure."""
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=True):
            return refusal
        user, now = request.user, ctx.clock()
        first, second, name = request.get("code").strip(), request.get("next_code").strip(), request.get("token")
        if name and not TOKEN_NAME.fullmatch(name):
            raise ProtocolError("'token' must be 1 to 32 of a-z, 0-9, '_', '.', '-'")

        def align(tx: Transaction) -> tuple[Verdict, str, str]:
            account = tx.get(user)
            if barred := decisions.barred(account, now):
                return barred, "", ""
            assert account is not None
            if name and account.token(name) is None:
                return Verdict.UNENROLLED, name, ""
            account = ctx.lift_ended_lock(tx, account, now)
            found: tuple[Token, int, int] | None = None
            for token in account.tokens:  # every token tried, whatever matched before
                if name and token.name != name:
                    continue
                secret = ctx.sealer.open(token.secret, secret_context(user))
                aligned = decisions.resync(token, secret, first, second, now, ctx.config)
                if aligned is not None and found is None:
                    found = (token, *aligned)
            if found is None:
                return ctx.fail(tx, account, now), name, ""
            token, step, skew = found
            if not tx.advance_step(user, token.name, step, skew, now):
                return Verdict.REPLAYED, token.name, ""
            tx.set_failures(user, 0, 0.0, False)
            if token.type == "hotp":
                return Verdict.ACCEPTED, token.name, f"counter={token.last_step + 1} to={step + 1}"
            return Verdict.ACCEPTED, token.name, f"skew={token.skew:+d} to={skew:+d}"

        verdict, token, detail = await ctx.transact(align)  # type: ignore[misc]
        level = "info" if verdict is Verdict.ACCEPTED else "warning"
        ctx.audit(request, caller, "resync", verdict.value, token=token, detail=detail, level=level)
        if verdict is Verdict.ACCEPTED:
            return reply("OK", token=token)
        if verdict is Verdict.UNENROLLED:
            return reply("NOT_ENROLLED", f"account '{user}' has no token '{token}'" if token else f"account '{user}' is not enrolled")
        if verdict is Verdict.LOCKED or verdict is Verdict.NOW_LOCKED:
            return reply("LOCKED", "Too many wrong codes; wait, or ask an administrator to unlock the account.")
        if verdict is Verdict.REPLAYED:
            return reply("REJECTED", "Those codes were already used.")
        return reply("REJECTED", "The two codes are not consecutive codes of a token within reach.")

    async def token_remove(self, request: Request, caller: Caller) -> Reply:
        ctx = self.ctx
        if refusal := await ctx.authorize(request, caller, allow_self=False):
            return refusal
        user, name = request.user, request.get("token")
        if not TOKEN_NAME.fullmatch(name):
            raise ProtocolError("'token' must be 1 to 32 of a-z, 0-9, '_', '.', '-'")

        def remove(tx: Transaction) -> str:
            account = tx.get(user)
            if account is None or account.token(name) is None:
                return "no_such_token"
            if len(account.tokens) == 1:
                return "last_token"  # that is a reset, and says so
            tx.remove_token(user, name)
            return "done"

        result = await ctx.transact(remove)
        ctx.audit(request, caller, "token_remove", str(result), token=name, level="warning")
        if result == "no_such_token":
            return reply("NOT_ENROLLED", f"account '{user}' has no token '{name}'")
        if result == "last_token":
            return reply(
                "BAD_REQUEST", f"'{name}' is the last token of account '{user}'; removing it is a reset: totpctl reset {user}"
            )
        ctx.remembered.forget(user)
        return reply("OK")

    # -- bulk import: import_add stages on the connection, import_commit writes all at once --

    async def import_add(self, request: Request, caller: Caller, session: Session | None) -> Reply:
        assert session is not None  # Service.handle refuses an import without a connection
        ctx = self.ctx
        if refusal := await ctx.admin_only(request, caller, "import", "import accounts"):
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
        if account is not None and len(account.tokens) >= ctx.config.max_tokens:
            raise ProtocolError(f"{user}: an account holds at most {ctx.config.max_tokens} tokens (max_tokens)")
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
            hashes = await ctx.argon2.run(recovery.hash_codes, codes)
        if account is None:
            account = session.staged[user] = Staged(user, {}, None)
        if hashes is not None:
            account.recovery_hashes = hashes
        account.tokens[token] = StagedToken(
            token, kind, ctx.sealer.seal(secret, secret_context(user)), params, int(raw_step), counter
        )
        return reply("OK", staged=len(session.staged))

    async def import_commit(self, request: Request, caller: Caller, session: Session | None) -> Reply:
        assert session is not None  # Service.handle refuses an import without a connection
        ctx = self.ctx
        if refusal := await ctx.admin_only(request, caller, "import", "import accounts"):
            return refusal
        staged, session.staged = list(session.staged.values()), {}
        force, dry_run = request.flag("force"), request.flag("dry_run")
        if ctx.config.check_accounts:
            unknown = await ctx.nss.run(lambda: [item.user for item in staged if identity.lookup(item.user) is None])
            if unknown:
                return reply(
                    "UNKNOWN_USER",
                    f"{len(unknown)} account(s) do not exist on this host, e.g. '{unknown[0]}'; nothing was imported",
                    unknown_users=json.dumps(unknown[:100]),
                )
        now = ctx.clock()

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
                    secret = ctx.sealer.open(token.sealed, secret_context(item.user))
                    floor = ctx.replay_floor(existing, secret, item.user, token.type)
                    last = token.counter - 1 if token.type == "hotp" else token.last_step
                    p = token.params
                    tx.put_pending(
                        item.user, token.sealed, p.algorithm, p.digits, p.period, now,
                        token=token.name, kind=token.type, last_step=last, replaces=index == 0,
                    )
                    tx.activate_pending(item.user, now, replay_floor=floor)
                tx.replace_recovery_codes(item.user, item.recovery_hashes or [])
            return created, replaced, skipped

        created, replaced, skipped = await ctx.transact(commit)  # type: ignore[misc]
        if not dry_run:
            for user in created + replaced:
                ctx.remembered.forget(user)
                ctx.audit_trail.record("import", "active", user=user, uid=caller.uid)
        ctx.audit(
            request, caller, "import", "dry_run" if dry_run else "committed",
            detail=f"created={len(created)} replaced={len(replaced)} skipped={len(skipped)}",
        )
        return reply(
            "OK", created=len(created), replaced=len(replaced), skipped=len(skipped),
            skipped_users=json.dumps(skipped[:100]), dry_run=int(dry_run),
        )


def token_fields(request: Request) -> tuple[str, str, int]:
    """The token a request names: its name, type and (HOTP) next counter value."""
    name, kind = request.get("token", DEFAULT_TOKEN), request.get("type", "totp")
    if not TOKEN_NAME.fullmatch(name):
        raise ProtocolError("'token' must be 1 to 32 of a-z, 0-9, '_', '.', '-'")
    if kind not in TOKEN_TYPES:
        raise ProtocolError("'type' must be totp or hotp")
    raw = request.get("counter", "0")
    if not re.fullmatch(r"\d{1,15}", raw):
        raise ProtocolError("'counter' must be a whole number")
    return name, kind, int(raw)


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
