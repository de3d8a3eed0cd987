"""The service: a request and its caller in, a decision out.

This is the one place that decides "accepted", the one place that authorizes a
caller (from SO_PEERCRED, never from the request) and the one place that writes the
audit line for a decision. It runs on the daemon's event loop; every read-modify-
write of an account is one store transaction, committed before the reply exists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import re
import time
from typing import Callable, Coroutine, NamedTuple, Sequence

from . import __version__, clock, decisions, identity, otp, recovery
from .audit import Audit, quote
from .config import Config
from .decisions import Verdict
from .errors import BusyError, ProtocolError, SealingError, StoreError
from .policy import Policy, RememberedHosts, Rules, local_today
from .protocol import MAX_LIST_LIMIT, MAX_MESSAGE, MAX_REPLY_PAYLOAD, Reply, Request
from .sealing import Sealer, secret_context
from .store import Account, Batcher, Store, Transaction
from .workers import Worker

log = logging.getLogger("totpd")

DEFAULT_PROMPT = "Verification code: "
# Keys that describe a PAM login. Believed only from a root caller on the socket (the
# PAM module inside sshd or sudo); any other caller's are dropped before use.
PAM_CONTEXT = ("service", "rhost", "tty")
# Threads and waiting jobs per worker: NSS lookups may wait on a directory service;
# argon2 is CPU work any local user can ask for, so it gets one thread of its own.
NSS_THREADS, NSS_WAITING = 4, 1024
ARGON2_THREADS, ARGON2_WAITING = 1, 32
LIST_REPLY_BUDGET = MAX_REPLY_PAYLOAD - 1024  # room for the status line and the other keys


@dataclasses.dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int
    # A D-Bus call carries what polkit granted for it: "any" account, "own" account
    # only, or "none" (totpd/dbusapi.py). None on the socket: the uid decides.
    granted: str | None = None


@dataclasses.dataclass(frozen=True)
class Staged:
    """One account of a bulk import, sealed and waiting for import_commit."""

    user: str
    sealed: bytes
    params: otp.Params
    last_step: int
    recovery_hashes: list[str] | None


MAX_STAGED = 1_000_000


class Judged(NamedTuple):
    """A verification's verdict, the account as its transaction read it, and what follows."""

    verdict: Verdict
    account: Account | None
    offset: int = 0  # accepted: the code's time step less this host's
    miss: Verdict | None = None  # try_recovery: the verdict (already counted) if no recovery code matches
    hashes: Sequence[tuple[int, str]] = ()  # try_recovery: the account's recovery-code hashes


class Session:
    """State one connection keeps between requests: a bulk import being staged."""

    def __init__(self) -> None:
        self.staged: dict[str, Staged] = {}


def _reply(status: str, message: str = "", **fields: object) -> Reply:
    out = {key: str(value) for key, value in fields.items()}
    if message:
        out["message"] = message[:MAX_MESSAGE]
    return Reply(status, out)


def internal_error() -> Reply:
    """The reply when a bug, not the store or the request, stopped a decision: fail closed."""
    return Reply("UNAVAILABLE", {"message": "The two-factor service hit an internal error; try again."})


def _params_of(account: Account, pending: bool = False) -> otp.Params:
    if pending:
        return otp.Params(account.pending_algorithm or "SHA1", account.pending_digits or 6, account.pending_period or 30)
    return otp.Params(account.algorithm, account.digits, account.period)


class Service:
    def __init__(
        self,
        config: Config,
        store: Store,
        sealer: Sealer,
        audit: Audit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.sealer = sealer
        self.audit = audit
        self.policy = Policy(config)
        self.clock = clock
        self.remembered = RememberedHosts(clock)
        self._batcher = Batcher(store)
        self._nss = Worker("nss", NSS_THREADS, NSS_WAITING)
        self._argon2 = Worker("argon2", ARGON2_THREADS, ARGON2_WAITING)
        self._rules_resolved: dict[Rules, Rules] = {}
        self._tasks: set[asyncio.Task] = set()  # handle_now's slow paths in progress
        # Called with (event, fields) after an event is durable: enrolled, reset,
        # recovery_code_used, locked, unlocked. Notifications and D-Bus signals listen.
        self.listeners: list[Callable[[str, dict[str, object]], None]] = []

    def _emit(self, event: str, **fields: object) -> None:
        for listener in self.listeners:
            try:
                listener(event, fields)
            except Exception:  # a listener's bug must never change a decision
                log.exception("event listener failed for %s", event)

    # -- entry point -----------------------------------------------------------------

    def close(self) -> None:
        self._nss.close()
        self._argon2.close()

    async def handle(self, request: Request, caller: Caller, session: Session | None = None) -> Reply:
        handler = getattr(self, "_" + request.verb)
        try:
            request = await self._identify(request, caller)
            if request.verb.startswith("import_"):
                if session is None:
                    return _reply("BAD_REQUEST", "imports need a socket connection")
                return await handler(request, caller, session)
            return await handler(request, caller)
        except (ProtocolError, StoreError, SealingError, BusyError) as exc:
            return self._refusal(request, caller, exc)

    async def _identify(self, request: Request, caller: Caller) -> Request:
        """The request as every handler sees it: its account name canonical (identity.py),
        and the PAM context kept only from a root caller on the socket (PAM_CONTEXT)."""
        fields = request.fields
        if caller.granted is None and caller.uid != 0 and not fields.keys().isdisjoint(PAM_CONTEXT):
            fields = {key: value for key, value in fields.items() if key not in PAM_CONTEXT}
        given = request.user
        if given and self.config.check_accounts:
            name = await self._nss.run(identity.canonical, given)
            if name != given:
                return Request(request.verb, {**fields, "user": name}, as_given=given)
        return request if fields is request.fields else Request(request.verb, fields)

    def _refusal(self, request: Request, caller: Caller, exc: BaseException) -> Reply:
        """The reply for a request that raised: BAD_REQUEST, BUSY, or UNAVAILABLE (fail closed)."""
        if isinstance(exc, ProtocolError):
            return _reply("BAD_REQUEST", str(exc))
        if isinstance(exc, BusyError):
            log.warning("busy: %s; refusing '%s' from uid %d", exc, request.verb, caller.uid)
            return _reply("BUSY", "The two-factor service is busy; try again.")
        if isinstance(exc, (StoreError, SealingError)):  # with a line that says why
            log.error("cannot decide %s: %s", request.verb, exc)
            self._audit(request, caller, request.verb, "unavailable", level="warning")
            return _reply("UNAVAILABLE", "The two-factor service cannot decide right now; try again shortly.")
        log.error("internal error while handling '%s' from uid %d", request.verb, caller.uid, exc_info=exc)
        return internal_error()

    def handle_now(self, request: Request, caller: Caller, done: Callable[[Reply], None]) -> bool:
        """A login's two requests without a coroutine; False: use `handle` instead.

        `check` and `verify` from a caller whose authority needs no lookup (root, as
        sshd and sudo are, or polkit's "any"): the request's one store unit goes to the
        batcher with a callback, and the reply is made in that callback, after the
        commit, by the same unit and the same verdicts as `handle`. What needs more
        (an unenrolled account, a recovery code) goes on as a task from there. A
        coroutine, its future and their loop turns cost about as much as the rest of a
        check (docs/performance.md). `done` is called exactly once.
        """
        if request.verb not in ("check", "verify") or not _admin_without_lookup(caller) or self.config.check_accounts:
            return False  # a lookup is needed (authority or identity): `handle` awaits it
        now = self.clock()
        if request.verb == "check":
            continue_check = self._continue_check

            def settle(account: object, error: BaseException | None) -> None:
                self._settle_now(request, caller, done, error, continue_check, account, now)

            self._batcher.call(self._check_unit(request.user), settle)
        else:
            code = request.get("code").strip()
            continue_verify = self._continue_verify

            def settle(judged: object, error: BaseException | None) -> None:
                self._settle_now(request, caller, done, error, continue_verify, judged, code, now)

            self._batcher.call(self._totp_unit(request.user, code, now), settle)
        return True

    def _settle_now(
        self,
        request: Request,
        caller: Caller,
        done: Callable[[Reply], None],
        error: BaseException | None,
        go_on: Callable[..., Reply | Coroutine[object, object, Reply]],
        *args: object,
    ) -> None:
        """Finish a handle_now request once its unit is committed: in this call if `go_on`
        returns a reply, else as a task (the slow paths), mapping errors as `handle` does."""
        if error is not None:
            done(self._refusal(request, caller, error))
            return
        try:
            outcome = go_on(request, caller, *args)
        except Exception as exc:
            done(self._refusal(request, caller, exc))
            return
        if isinstance(outcome, Reply):
            done(outcome)
            return

        async def slow() -> None:
            try:
                reply = await outcome  # type: ignore[misc]
            except Exception as exc:
                reply = self._refusal(request, caller, exc)
            done(reply)

        task = asyncio.get_running_loop().create_task(slow())
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)

    def _audit(self, request: Request, caller: Caller, event: str, result: str, **kwargs: object) -> None:
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

    async def _transact(self, work: Callable[[Transaction], object]) -> object:
        return await self._batcher.submit(work)

    # -- authorization ---------------------------------------------------------------

    async def _is_admin(self, caller: Caller) -> bool:
        if caller.granted is not None:
            return caller.granted == "any"
        if caller.uid == 0:
            return True
        if not self.config.admin_group:
            return False
        return await self._nss.run(identity.in_group, caller.uid, caller.gid, self.config.admin_group)

    async def _is_self(self, caller: Caller, user: str) -> bool:
        if caller.granted == "none":
            return False
        entry = await self._nss.run(identity.lookup, user)
        return entry is not None and entry.pw_uid == caller.uid

    async def _authorize(self, request: Request, caller: Caller, allow_self: bool) -> Reply | None:
        """None if the caller may act on request.user, else the refusal (audited)."""
        if await self._is_admin(caller):
            return None
        if allow_self and await self._is_self(caller, request.user):
            return None
        self._audit(request, caller, request.verb, "forbidden", level="warning")
        return _reply("FORBIDDEN", f"uid {caller.uid} may not {request.verb} account '{request.user}'")

    async def _account_exists(self, user: str) -> bool:
        if not self.config.check_accounts:
            return True
        return await self._nss.run(identity.lookup, user) is not None

    # -- verbs -----------------------------------------------------------------------

    async def _ping(self, request: Request, caller: Caller) -> Reply:
        return _reply("OK", version=__version__)

    async def _check(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._authorize(request, caller, allow_self=True):
            return refusal
        now = self.clock()
        outcome = self._continue_check(request, caller, await self._transact(self._check_unit(request.user)), now)
        return outcome if isinstance(outcome, Reply) else await outcome

    @staticmethod
    def _check_unit(user: str) -> Callable[[Transaction], Account | None]:
        return lambda tx: tx.get(user)

    def _continue_check(
        self, request: Request, caller: Caller, account: object, now: float
    ) -> Reply | Coroutine[object, object, Reply]:
        """The check's answer once the account is read: a reply, or the coroutine that finds it."""
        assert account is None or isinstance(account, Account)
        user = request.user
        if account is None or not account.active:
            return self._unenrolled(request, caller, "check")
        if decisions.is_locked(account, now):
            self._audit(request, caller, "check", "locked")
            return _reply("LOCKED", self.policy.locked_message(user, account.locked, account.locked_until, now))
        if _pam_caller(caller) and self.remembered.recalls(user, request.get("service"), request.get("rhost")):
            self._audit(request, caller, "check", "accepted_remembered_host")
            return _reply("ACCEPTED")
        return _reply("NEED_CODE", prompt=DEFAULT_PROMPT)

    async def _unenrolled(self, request: Request, caller: Caller, event: str) -> Reply:
        if not await self._account_exists(request.user):
            self._audit(request, caller, event, "unknown_user")
            return _reply("UNKNOWN_USER")
        rules = await self._canonical_rules(self.policy.rules(request.get("service")))
        groups = await self._nss.run(identity.groups_of, request.user) if rules.needs_groups else frozenset()
        outcome = self.policy.unenrolled(rules, request.user, groups, local_today(self.clock()))
        self._audit(request, caller, event, "not_enrolled_" + outcome.status.lower())
        return _reply(outcome.status, outcome.message)

    async def _canonical_rules(self, rules: Rules) -> Rules:
        """`rules` with their account lists in canonical names, as every request's name is
        (`required_users = ["Alice"]` must still mean alice). Kept once NSS knew every name."""
        if not self.config.check_accounts:
            return rules  # names are taken exactly as given, in requests and lists alike
        known = self._rules_resolved.get(rules)
        if known is not None:
            return known
        required, all_required = await self._nss.run(identity.canonical_names, rules.required_users)
        exempt, all_exempt = await self._nss.run(identity.canonical_names, rules.exempt_users)
        resolved = dataclasses.replace(rules, required_users=required, exempt_users=exempt)
        if all_required and all_exempt:
            self._rules_resolved[rules] = resolved
        return resolved

    async def _verify(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._authorize(request, caller, allow_self=True):
            return refusal
        user, code, now = request.user, request.get("code").strip(), self.clock()
        judged = await self._transact(self._totp_unit(user, code, now))
        outcome = self._continue_verify(request, caller, judged, code, now)
        return outcome if isinstance(outcome, Reply) else await outcome

    def _totp_unit(self, user: str, code: str, now: float) -> Callable[[Transaction], Judged]:
        """The one transaction that judges a code as a TOTP code.

        A code that could not be a TOTP code is left to the recovery codes: it is
        counted as a failure here, before any argon2 work, so the throttle bounds that
        work as it bounds guesses (a recovery code that matches clears the count).
        """
        window = self.config.window

        def judge_totp(tx: Transaction) -> Judged:
            account = tx.get(user)
            if barred := decisions.barred(account, now):
                return Judged(barred, account)
            assert account is not None
            params = _params_of(account)
            if not otp.looks_like_totp(code, params):
                miss = self._fail(tx, account, now)
                return Judged(Verdict.TRY_RECOVERY, account, miss=miss, hashes=tx.recovery_hashes(user))
            secret = self.sealer.open(account.secret or b"", secret_context(user))
            verdict, step = decisions.judge_code(secret, params, code, now, window, account.last_step)
            if verdict is Verdict.REJECTED:
                return Judged(self._fail(tx, account, now), account)
            if verdict is Verdict.REPLAYED or not tx.advance_step(user, step):
                return Judged(Verdict.REPLAYED, account)
            return Judged(Verdict.ACCEPTED, account, offset=step - otp.time_step(now, params))

        return judge_totp

    def _continue_verify(
        self, request: Request, caller: Caller, judged: object, code: str, now: float
    ) -> Reply | Coroutine[object, object, Reply]:
        """The verify's answer once its unit is committed: a reply, or the coroutine that
        finds it (a recovery code, an account that is not enrolled)."""
        assert isinstance(judged, Judged)
        if judged.verdict in (Verdict.TRY_RECOVERY, Verdict.UNENROLLED):
            return self._verify_slowly(request, caller, judged, code, now)
        return self._verify_reply(request, caller, judged, now)

    async def _verify_slowly(self, request: Request, caller: Caller, judged: Judged, code: str, now: float) -> Reply:
        if judged.verdict is Verdict.TRY_RECOVERY:
            judged = await self._try_recovery(request.user, code, judged)
        if judged.verdict is Verdict.UNENROLLED:
            return await self._unenrolled(request, caller, "verify")
        return self._verify_reply(request, caller, judged, now)

    def _verify_reply(self, request: Request, caller: Caller, judged: Judged, now: float) -> Reply:
        """What follows a verdict: the clock-drift line, remembered hosts, events, the audit line, the reply."""
        user, verdict = request.user, judged.verdict
        if abs(judged.offset) >= 2:  # only an accepted code says where the phone's clock is
            log.warning(
                "an accepted code for %s was %+d steps from this host's clock: the phone's or this host's clock"
                " is likely off", quote(user), judged.offset,
            )
        service, rhost = request.get("service"), request.get("rhost")
        if verdict in (Verdict.ACCEPTED, Verdict.RECOVERY_ACCEPTED) and _pam_caller(caller):
            self.remembered.remember(user, service, rhost, self.policy.rules(service).remember_host)
        elif verdict in (Verdict.REJECTED, Verdict.NOW_LOCKED, Verdict.REPLAYED):
            self.remembered.forget(user)
        if verdict is Verdict.RECOVERY_ACCEPTED:
            self._emit("recovery_code_used", user=user, service=service, rhost=rhost)
        if verdict is Verdict.NOW_LOCKED:
            self._emit("locked", user=user, service=service, rhost=rhost)
        return self._verdict_reply(request, caller, "verify", verdict, judged.account, now)

    def _same_secret(self, account: Account | None, secret: bytes, user: str) -> bool:
        """Is `secret` the one the account already uses? Then enrolling it again must not
        make its used codes work once more: the replay state is kept."""
        if account is None or account.secret is None:
            return False
        return hmac.compare_digest(self.sealer.open(account.secret, secret_context(user)), secret)

    def _fail(self, tx: Transaction, account: Account, now: float) -> Verdict:
        """Count one failure inside the judging transaction: REJECTED, or NOW_LOCKED."""
        failures = account.failures + 1
        locked_until, locked = decisions.after_failure(self.config, failures, now)
        tx.set_failures(account.user, failures, locked_until, locked)
        return Verdict.NOW_LOCKED if locked else Verdict.REJECTED

    async def _try_recovery(self, user: str, code: str, judged: Judged) -> Judged:
        """A recovery code in place of a TOTP code, its failure already counted (_totp_unit).

        The argon2 checks run on their own worker; a code that matches is consumed and
        clears the failure count, one that does not leaves the verdict counted before.
        """
        found = await self._argon2.run(recovery.find, code, judged.hashes) if judged.hashes else None

        def consume(tx: Transaction) -> Judged:
            account = tx.get(user)
            if account is None or not account.active:
                return Judged(Verdict.UNENROLLED, account)  # reset meanwhile
            if found is not None and tx.use_recovery_code(user, found):
                tx.set_failures(user, 0, 0.0, False)
                return Judged(Verdict.RECOVERY_ACCEPTED, account)
            assert judged.miss is not None
            return Judged(judged.miss, account)

        return await self._transact(consume)  # type: ignore[return-value]

    def _verdict_reply(
        self, request: Request, caller: Caller, event: str, verdict: Verdict, account: Account | None, now: float
    ) -> Reply:
        status, message, level = _VERDICT_REPLIES[verdict]
        if verdict is Verdict.NOW_LOCKED:
            message = self.policy.locked_message(request.user, True, 0.0, now)
        elif verdict is Verdict.LOCKED:
            assert account is not None
            message = self.policy.locked_message(request.user, account.locked, account.locked_until, now)
        self._audit(request, caller, event, verdict.value, level=level)
        return _reply(status, message)

    async def _enroll(self, request: Request, caller: Caller) -> Reply:
        user = request.user
        admin = await self._is_admin(caller)
        if not admin and not (self.config.self_enroll and await self._is_self(caller, user)):
            self._audit(request, caller, "enroll", "forbidden", level="warning")
            return _reply("FORBIDDEN", f"uid {caller.uid} may not enroll account '{user}'")
        if not await self._account_exists(user):
            self._audit(request, caller, "enroll", "unknown_user")
            return _reply("UNKNOWN_USER", f"no account '{user}' on this host")
        try:
            params = otp.Params(
                request.get("algorithm", "SHA1").upper(),
                _int_field(request, "digits", 6),
                _int_field(request, "period", 30),
            )
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if "secret" in request.fields:
            try:
                secret = otp.decode_secret(request.get("secret"))
            except ValueError as exc:
                raise ProtocolError(str(exc)) from None
        else:
            secret = otp.new_secret()
        force, activate = request.flag("force"), request.flag("activate")
        if not admin and activate:
            return _reply("FORBIDDEN", "only an administrator may enroll without confirming a first code")
        proof = request.get("proof")
        existing = await self._transact(lambda tx: tx.get(user))
        assert existing is None or isinstance(existing, Account)
        if existing is not None and existing.active:
            if not force:
                self._audit(request, caller, "enroll", "exists")
                return _reply("EXISTS", f"account '{user}' is already enrolled; use --force to replace it")
            if not admin and not await self._prove(user, proof, caller):
                self._audit(request, caller, "enroll", "proof_rejected", level="warning")
                return _reply("REJECTED", "Replacing an enrollment needs a current code or a recovery code.")
        now = self.clock()
        sealed = self.sealer.seal(secret, secret_context(user))
        codes: list[str] = []
        hashes: list[str] = []
        if activate:
            codes, hashes = await self._argon2.run(recovery.generate, self.config.recovery_codes)

        def write(tx: Transaction) -> None:
            same = self._same_secret(tx.get(user), secret, user)
            tx.put_pending(user, sealed, params.algorithm, params.digits, params.period, now)
            if activate:
                tx.activate_pending(user, now, keep_replay_state=same)
                tx.replace_recovery_codes(user, hashes)

        await self._transact(write)
        self.remembered.forget(user)
        self._audit(request, caller, "enroll", "active" if activate else "pending")
        if activate:
            self._emit("enrolled", user=user)
        issuer = request.get("issuer") or self.config.issuer_name
        fields: dict[str, object] = {
            "uri": otp.provisioning_uri(secret, user, issuer, params),
            "secret": otp.encode_secret(secret),
            "pending": 0 if activate else 1,
        }
        if activate:
            fields["recovery_codes"] = " ".join(codes)
        return _reply("OK", **fields)  # type: ignore[arg-type]

    async def _prove(self, user: str, proof: str, caller: Caller) -> bool:
        """A current code or a recovery code for the account's active enrollment (consumed)."""
        if not proof:
            return False
        reply = await self._verify(Request("verify", {"user": user, "code": proof, "service": "totpctl"}), caller)
        return reply.status == "ACCEPTED"

    async def _confirm(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._authorize(request, caller, allow_self=True):
            return refusal
        user, code, now = request.user, request.get("code").strip(), self.clock()

        def judge(tx: Transaction) -> tuple[Verdict, int, bytes | None]:
            """The cheap part first: a pending enrollment, no lock, the right code."""
            account = tx.get(user)
            if account is None or account.pending_secret is None:
                return Verdict.NO_PENDING, -1, None
            if decisions.is_locked(account, now):
                return Verdict.LOCKED, -1, None
            params = _params_of(account, pending=True)
            secret = self.sealer.open(account.pending_secret, secret_context(user))
            # A first code has no replay state of its own yet: any step in the window will do.
            verdict, step = decisions.judge_code(secret, params, code, now, self.config.window, -1)
            if verdict is Verdict.REJECTED:
                return self._fail(tx, account, now), -1, None
            return verdict, step, account.pending_secret

        verdict, step, pending = await self._transact(judge)  # type: ignore[misc]
        if verdict is Verdict.ACCEPTED:
            # Only a right code for a pending enrollment is worth the argon2 work.
            codes, hashes = await self._argon2.run(recovery.generate, self.config.recovery_codes)

            def activate(tx: Transaction) -> Verdict:
                account = tx.get(user)
                if account is None or account.pending_secret != pending:
                    return Verdict.NO_PENDING  # confirmed, replaced or reset meanwhile
                secret = self.sealer.open(pending, secret_context(user))
                tx.activate_pending(user, now, keep_replay_state=self._same_secret(account, secret, user))
                tx.advance_step(user, step)
                tx.replace_recovery_codes(user, hashes)
                return Verdict.CONFIRMED

            verdict = await self._transact(activate)
        self._audit(request, caller, "confirm", verdict.value)
        if verdict is Verdict.CONFIRMED:
            self.remembered.forget(user)
            self._emit("enrolled", user=user)
            return _reply("OK", recovery_codes=" ".join(codes))
        if verdict is Verdict.NO_PENDING:
            return _reply("NOT_ENROLLED", f"account '{user}' has no enrollment waiting for confirmation")
        if verdict is Verdict.REJECTED:
            return _reply("REJECTED", "Wrong verification code; the enrollment is still pending.")
        return _reply("LOCKED", "Too many wrong codes; wait, or ask an administrator to unlock the account.")

    async def _status(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._authorize(request, caller, allow_self=True):
            return refusal
        user = request.user

        def read(tx: Transaction) -> tuple[Account | None, int]:
            return tx.get(user), len(tx.recovery_hashes(user))

        account, left = await self._transact(read)  # type: ignore[misc]
        if account is None:
            return _reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        synced = clock.synchronized()
        return _reply(
            "OK", **_describe(account, left, self.clock()), clock_synchronized="unknown" if synced is None else int(synced)
        )

    async def _list(self, request: Request, caller: Caller) -> Reply:
        if not await self._is_admin(caller):
            self._audit(request, caller, "list", "forbidden", level="warning")
            return _reply("FORBIDDEN", f"uid {caller.uid} may not list accounts")
        offset = _int_field(request, "offset", 0)
        limit = min(_int_field(request, "limit", MAX_LIST_LIMIT), MAX_LIST_LIMIT)
        if offset < 0 or limit < 1:
            raise ProtocolError("'offset' must be 0 or more and 'limit' 1 or more")

        def read(tx: Transaction) -> tuple[int, list[tuple[Account, int]]]:
            return tx.count(), tx.page(offset, limit)

        total, page = await self._transact(read)  # type: ignore[misc]
        now = self.clock()
        # Return as many entries as fit in one reply; the client pages on from offset + count.
        entries: list[str] = []
        size = 0
        for account, left in page:
            entry = json.dumps(dict(user=account.user, **_describe(account, left, now)), separators=(",", ":"))
            if size + len(entry) + 1 > LIST_REPLY_BUDGET and entries:
                break
            entries.append(entry)
            size += len(entry) + 1
        return _reply("OK", total=total, count=len(entries), accounts="[" + ",".join(entries) + "]")

    async def _reset(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._authorize(request, caller, allow_self=False):
            return refusal
        deleted = await self._transact(lambda tx: tx.delete(request.user))
        self._audit(request, caller, "reset", "done" if deleted else "not_enrolled", level="warning")
        if not deleted:
            return _reply("NOT_ENROLLED", f"account '{request.user}' is not enrolled")
        self.remembered.forget(request.user)
        self._emit("reset", user=request.user)
        return _reply("OK")

    async def _unlock(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._authorize(request, caller, allow_self=False):
            return refusal
        user = request.user

        def unlock(tx: Transaction) -> bool:
            if tx.get(user) is None:
                return False
            tx.set_failures(user, 0, 0.0, False)
            return True

        done = await self._transact(unlock)
        self._audit(request, caller, "unlock", "done" if done else "not_enrolled")
        if not done:
            return _reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        self._emit("unlocked", user=user)
        return _reply("OK")

    async def _recovery_codes(self, request: Request, caller: Caller) -> Reply:
        if refusal := await self._authorize(request, caller, allow_self=True):
            return refusal
        user = request.user
        account = await self._transact(lambda tx: tx.get(user))
        if not isinstance(account, Account) or not account.active:
            return _reply("NOT_ENROLLED", f"account '{user}' is not enrolled")
        if not await self._is_admin(caller) and not await self._prove(user, request.get("proof"), caller):
            self._audit(request, caller, "recovery_codes", "proof_rejected", level="warning")
            return _reply("REJECTED", "New recovery codes need a current code or a recovery code.")
        codes, hashes = await self._argon2.run(recovery.generate, self.config.recovery_codes)
        await self._transact(lambda tx: tx.replace_recovery_codes(user, hashes))
        self._audit(request, caller, "recovery_codes", "regenerated", level="warning")
        return _reply("OK", recovery_codes=" ".join(codes))


    # -- bulk import: import_add stages on the connection, import_commit writes all at once --

    async def _import_add(self, request: Request, caller: Caller, session: Session) -> Reply:
        if not await self._is_admin(caller):
            self._audit(request, caller, "import", "forbidden", level="warning")
            return _reply("FORBIDDEN", f"uid {caller.uid} may not import accounts")
        user = request.user
        if user in session.staged:
            raise ProtocolError(f"account '{user}' appears twice in this import")
        if len(session.staged) >= MAX_STAGED:
            raise ProtocolError(f"an import holds at most {MAX_STAGED} accounts; split the file")
        try:
            secret = otp.decode_secret(request.get("secret"))
            params = otp.Params(
                request.get("algorithm", "SHA1").upper(), _int_field(request, "digits", 6), _int_field(request, "period", 30)
            )
        except ValueError as exc:
            raise ProtocolError(f"{user}: {exc}") from None
        raw_step = request.get("last_step", "-1")
        if not re.fullmatch(r"-1|\d{1,15}", raw_step):
            raise ProtocolError("'last_step' must be -1 or a whole number")
        last_step = int(raw_step)
        hashes = None
        if "recovery_codes" in request.fields:
            codes = request.get("recovery_codes").split()
            hashes = await self._argon2.run(recovery.hash_codes, codes)
        session.staged[user] = Staged(user, self.sealer.seal(secret, secret_context(user)), params, last_step, hashes)
        return _reply("OK", staged=len(session.staged))

    async def _import_commit(self, request: Request, caller: Caller, session: Session) -> Reply:
        if not await self._is_admin(caller):
            self._audit(request, caller, "import", "forbidden", level="warning")
            return _reply("FORBIDDEN", f"uid {caller.uid} may not import accounts")
        staged, session.staged = list(session.staged.values()), {}
        force, dry_run = request.flag("force"), request.flag("dry_run")
        if self.config.check_accounts:
            unknown = await self._nss.run(lambda: [item.user for item in staged if identity.lookup(item.user) is None])
            if unknown:
                return _reply(
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
                same = existing is not None and existing.active and self._same_secret(
                    existing, self.sealer.open(item.sealed, secret_context(item.user)), item.user
                )
                tx.put_pending(item.user, item.sealed, item.params.algorithm, item.params.digits, item.params.period, now)
                tx.activate_pending(item.user, now, keep_replay_state=same)
                if item.last_step >= 0:
                    tx.advance_step(item.user, item.last_step)
                tx.replace_recovery_codes(item.user, item.recovery_hashes or [])
            return created, replaced, skipped

        created, replaced, skipped = await self._transact(commit)  # type: ignore[misc]
        if not dry_run:
            for user in created + replaced:
                self.remembered.forget(user)
                self.audit.record("import", "active", user=user, uid=caller.uid)
        self._audit(
            request, caller, "import", "dry_run" if dry_run else "committed",
            detail=f"created={len(created)} replaced={len(replaced)} skipped={len(skipped)}",
        )
        return _reply(
            "OK", created=len(created), replaced=len(replaced), skipped=len(skipped),
            skipped_users=json.dumps(skipped[:100]), dry_run=int(dry_run),
        )


# A verdict's reply status, its message (LOCKED's is made per account) and audit level.
_VERDICT_REPLIES: dict[Verdict, tuple[str, str, str]] = {
    Verdict.ACCEPTED: ("ACCEPTED", "", "info"),
    Verdict.RECOVERY_ACCEPTED: (
        "ACCEPTED", "A recovery code was used; each works only once. Check how many are left: totpctl status", "warning"
    ),
    Verdict.REPLAYED: ("REJECTED", "That code was already used; wait for the next one.", "warning"),
    Verdict.REJECTED: ("REJECTED", "Wrong verification code.", "info"),
    Verdict.NOW_LOCKED: ("LOCKED", "", "warning"),
    Verdict.LOCKED: ("LOCKED", "", "info"),
}


def _pam_caller(caller: Caller) -> bool:
    """Is this the PAM module, whose service and rhost describe a real login? Root on the socket."""
    return caller.granted is None and caller.uid == 0


def _admin_without_lookup(caller: Caller) -> bool:
    """Is the caller an administrator by what it carries alone (Service._is_admin, less the group)?"""
    if caller.granted is not None:
        return caller.granted == "any"
    return caller.uid == 0


def _describe(account: Account, recovery_left: int, now: float) -> dict[str, object]:
    return {
        "enrolled": int(account.active),
        "pending": int(account.pending_secret is not None),
        "locked": int(account.locked),
        "locked_until": int(account.locked_until) if account.locked_until > now else 0,
        "failures": account.failures,
        "recovery_codes_left": recovery_left,
        "algorithm": account.algorithm,
        "digits": account.digits,
        "period": account.period,
        "created": int(account.created),
        "confirmed": int(account.confirmed) if account.confirmed else "",
    }


def _int_field(request: Request, key: str, default: int) -> int:
    value = request.get(key)
    if value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ProtocolError(f"'{key}' must be a whole number")
    return int(value)
