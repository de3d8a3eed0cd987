"""The service: a request and its caller in, one reply out.

Every request, from the socket or from D-Bus, takes one path: the name it gives is
resolved to the canonical account (identity.py) and the PAM context dropped unless
root on the socket sent it, then one handler from one dispatch table answers it. The
handlers sit side by side, each owning one group of verbs (login.py: check, verify;
enroll_login.py: login_enroll, login_confirm; enrollment.py: enroll, token_add,
confirm; tokens.py: token_list, token_remove, resync; admin.py: status, list, reset,
unlock; recovery_codes.py; bulk_import.py: import_add, import_commit). None imports
another: every code is judged on one path (judging.py), and what else they share is
in handling.py. Here the service builds each piece once and hands every handler the
ones it uses. A refusal that a handler raises is mapped to a reply here, failing closed.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from . import __version__, grace, identity
from .admin import Admin
from .audit import Audit
from .authorization import Authority, Caller
from .bulk_import import BulkImport, Session
from .config import Config
from .enroll_login import EnrollAtLogin
from .enrollment import Enrollment
from .errors import BusyError, ProtocolError, SealingError, StoreError
from .handling import Directory, Earned, Events, Gate, reply
from .hostclock import HostClock
from .judging import Judge
from .login import Login
from .policy import Policy, RememberedHosts
from .protocol import Reply, Request
from .recovery_codes import RecoveryCodes
from .sealing import Sealer
from .store import Batcher, Store
from .tokens import Tokens
from .workers import Worker

log = logging.getLogger("totpd")

__all__ = ["Caller", "Service", "Session", "internal_error"]

# Keys that describe a PAM login. Believed only from a root caller on the socket (the
# PAM module inside sshd or sudo); any other caller's are dropped before use.
PAM_CONTEXT = ("service", "rhost", "tty")

# Threads and waiting jobs per worker: NSS lookups may wait on a directory service;
# argon2 is CPU work any local user can ask for, so it gets one thread of its own.
NSS_THREADS, NSS_WAITING = 4, 1024
ARGON2_THREADS, ARGON2_WAITING = 1, 32

Handler = Callable[[Request, Caller, "Session | None"], Awaitable[Reply]]
# A door's word on the caller once the request's account is known: D-Bus asks polkit
# for the grant (dbusapi.py) after the identity step, so both read one resolution.
Grant = Callable[[Request], Awaitable[Caller]]


def internal_error() -> Reply:
    """The reply when a bug, not the store or the request, stopped a decision: fail closed."""
    return Reply("UNAVAILABLE", {"message": "The two-factor service hit an internal error; try again."})


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
        self.audit = audit
        self.nss = Worker("nss", NSS_THREADS, NSS_WAITING)
        self.names = identity.Names(self.nss)
        self.argon2 = Worker("argon2", ARGON2_THREADS, ARGON2_WAITING)
        self.events = Events()
        batcher, policy = Batcher(store), Policy(config)
        earned = Earned(RememberedHosts(clock), grace.Graces(clock, grace.longest(config)))
        self.clock, self.host_clock = clock, HostClock(config.host_clock_accounts, config.host_clock_window, audit)
        gate = Gate(Authority(config, self.nss), audit)
        self._gate = gate
        directory = Directory(config, policy, self.nss, clock)
        judge = Judge(config, batcher, sealer, self.argon2, gate, policy, earned, self.events, self.host_clock)
        login = Login(batcher, judge, gate, directory, policy, earned, self.nss, clock)
        at_login = EnrollAtLogin(config, batcher, sealer, judge, gate, directory, policy, clock)
        enrollment = Enrollment(
            config, batcher, sealer, self.argon2, judge, gate, directory, earned, self.events, clock
        )
        tokens = Tokens(batcher, judge, gate, earned, clock)
        admin = Admin(batcher, gate, earned, self.events, clock)
        recovery_codes = RecoveryCodes(config, batcher, self.argon2, judge, gate, clock)
        bulk = BulkImport(config, batcher, sealer, self.argon2, self.nss, gate, earned, clock)
        plain: dict[str, Callable[[Request, Caller], Awaitable[Reply]]] = {
            "ping": self._ping,
            "check": login.check,
            "verify": login.verify,
            "enroll": enrollment.enroll,
            "confirm": enrollment.confirm,
            "token_add": enrollment.token_add,
            "login_enroll": at_login.login_enroll,
            "login_confirm": at_login.login_confirm,
            "status": admin.status,
            "list": admin.list_accounts,
            "reset": admin.reset,
            "unlock": admin.unlock,
            "recovery_codes": recovery_codes.recovery_codes,
            "token_list": tokens.token_list,
            "token_remove": tokens.token_remove,
            "resync": tokens.resync,
        }
        # verb -> handler; the two import verbs also take the connection's session.
        self._handlers: dict[str, Handler] = {verb: _ignoring_session(call) for verb, call in plain.items()}
        self._handlers["import_add"] = bulk.import_add
        self._handlers["import_commit"] = bulk.import_commit

    @property
    def listeners(self) -> list[Callable[[str, dict[str, object]], None]]:
        """Called with (event, fields) once an event is durable (notifications, D-Bus signals)."""
        return self.events.listeners

    def close(self) -> None:
        self.nss.close()
        self.argon2.close()

    async def handle(
        self, request: Request, caller: Caller, session: Session | None = None, grant: Grant | None = None
    ) -> Reply:
        try:
            if request.verb.startswith("import_") and session is None:
                return reply("BAD_REQUEST", "imports need a socket connection")
            request = await self._identify(request, caller)
            if grant is not None:
                caller = await grant(request)
            return await self._handlers[request.verb](request, caller, session)
        except (ProtocolError, StoreError, SealingError, BusyError) as exc:
            return self._refusal(request, caller, exc)

    async def _identify(self, request: Request, caller: Caller) -> Request:
        """The request as every handler sees it: its account name canonical (identity.py)
        and the account's uid beside it (`user_uid`), from one NSS lookup, and the PAM
        context kept only from a root caller on the socket (PAM_CONTEXT).

        Root needs no uid (it may act on any account), so with `check_accounts = false`
        its requests, the PAM module's logins, take no lookup at all."""
        fields = request.fields
        if caller.granted is None and caller.uid != 0 and not fields.keys().isdisjoint(PAM_CONTEXT):
            fields = {key: value for key, value in fields.items() if key not in PAM_CONTEXT}
        given = request.user
        if given and (self.config.check_accounts or caller.uid != 0):
            found = await self.names.account(given)
            name, uid = (given, -1) if found is None else found
            if name != given and self.config.check_accounts:
                return Request(request.verb, {**fields, "user": name}, as_given=given, user_uid=uid)
            return Request(request.verb, fields, user_uid=uid)
        return request if fields is request.fields else Request(request.verb, fields)

    def _refusal(self, request: Request, caller: Caller, exc: BaseException) -> Reply:
        """The reply for a request that raised: BAD_REQUEST, BUSY, or UNAVAILABLE (fail closed)."""
        if isinstance(exc, ProtocolError):
            return reply("BAD_REQUEST", str(exc))
        if isinstance(exc, BusyError):
            log.warning("busy: %s; refusing '%s' from uid %d", exc, request.verb, caller.uid)
            return reply("BUSY", "The two-factor service is busy; try again.")
        log.error("cannot decide %s: %s", request.verb, exc)
        self._gate.record(request, caller, request.verb, "unavailable", level="warning")
        return reply("UNAVAILABLE", "The two-factor service cannot decide right now; try again shortly.")

    async def _ping(self, request: Request, caller: Caller) -> Reply:
        # This host's clock error as accepted codes agree on it (hostclock.py), for doctor.
        host_offset = self.host_clock.offset(self.clock())
        if host_offset is None:
            return reply("OK", version=__version__)
        return reply("OK", version=__version__, host_clock_offset=host_offset)


def _ignoring_session(call: Callable[[Request, Caller], Awaitable[Reply]]) -> Handler:
    """`call` in the table's shape; it returns call's own coroutine (no frame of its own)."""
    return lambda request, caller, session: call(request, caller)
