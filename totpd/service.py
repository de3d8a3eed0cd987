"""The service: a request and its caller in, one reply out.

Every request, from the socket or from D-Bus, takes one path: the name it gives is
resolved to the canonical account (identity.py) and the PAM context dropped unless
root on the socket sent it, then one handler from one dispatch table answers it
(login.py: check, verify; enroll_login.py: login_enroll, login_confirm;
lifecycle.py: the rest). A refusal that a handler raises
is mapped to a reply here, failing closed.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from . import __version__, identity
from .audit import Audit
from .authorization import Caller
from .config import Config
from .context import Context, reply
from .enroll_login import EnrollAtLogin
from .errors import BusyError, ProtocolError, SealingError, StoreError
from .lifecycle import Lifecycle, Session
from .login import Login
from .protocol import Reply, Request
from .sealing import Sealer
from .store import Batcher, Store

log = logging.getLogger("totpd")

__all__ = ["Caller", "Service", "Session", "internal_error"]

# Keys that describe a PAM login. Believed only from a root caller on the socket (the
# PAM module inside sshd or sudo); any other caller's are dropped before use.
PAM_CONTEXT = ("service", "rhost", "tty")

Handler = Callable[[Request, Caller, "Session | None"], Awaitable[Reply]]


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
        self.ctx = Context(config, Batcher(store), sealer, audit, clock)
        self.names = identity.Names(self.ctx.nss)
        login = Login(self.ctx)
        lifecycle = Lifecycle(self.ctx, login)
        at_login = EnrollAtLogin(self.ctx, login, lifecycle)
        plain: dict[str, Callable[[Request, Caller], Awaitable[Reply]]] = {
            "ping": self._ping,
            "check": login.check,
            "verify": login.verify,
            "enroll": lifecycle.enroll,
            "confirm": lifecycle.confirm,
            "login_enroll": at_login.login_enroll,
            "login_confirm": at_login.login_confirm,
            "status": lifecycle.status,
            "list": lifecycle.list_accounts,
            "reset": lifecycle.reset,
            "unlock": lifecycle.unlock,
            "recovery_codes": lifecycle.recovery_codes,
            "token_add": lifecycle.token_add,
            "token_list": lifecycle.token_list,
            "token_remove": lifecycle.token_remove,
            "resync": lifecycle.resync,
        }
        # verb -> handler; the two import verbs also take the connection's session.
        self._handlers: dict[str, Handler] = {verb: _ignoring_session(call) for verb, call in plain.items()}
        self._handlers["import_add"] = lifecycle.import_add
        self._handlers["import_commit"] = lifecycle.import_commit

    @property
    def listeners(self) -> list[Callable[[str, dict[str, object]], None]]:
        """Called with (event, fields) once an event is durable (notifications, D-Bus signals)."""
        return self.ctx.listeners

    def close(self) -> None:
        self.ctx.close()

    async def handle(self, request: Request, caller: Caller, session: Session | None = None) -> Reply:
        try:
            if request.verb.startswith("import_") and session is None:
                return reply("BAD_REQUEST", "imports need a socket connection")
            request = await self._identify(request, caller)
            return await self._handlers[request.verb](request, caller, session)
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
            name = await self.names.canonical(given)
            if name != given:
                return Request(request.verb, {**fields, "user": name}, as_given=given)
        return request if fields is request.fields else Request(request.verb, fields)

    def _refusal(self, request: Request, caller: Caller, exc: BaseException) -> Reply:
        """The reply for a request that raised: BAD_REQUEST, BUSY, or UNAVAILABLE (fail closed)."""
        if isinstance(exc, ProtocolError):
            return reply("BAD_REQUEST", str(exc))
        if isinstance(exc, BusyError):
            log.warning("busy: %s; refusing '%s' from uid %d", exc, request.verb, caller.uid)
            return reply("BUSY", "The two-factor service is busy; try again.")
        log.error("cannot decide %s: %s", request.verb, exc)
        self.ctx.audit(request, caller, request.verb, "unavailable", level="warning")
        return reply("UNAVAILABLE", "The two-factor service cannot decide right now; try again shortly.")

    async def _ping(self, request: Request, caller: Caller) -> Reply:
        return reply("OK", version=__version__)


def _ignoring_session(call: Callable[[Request, Caller], Awaitable[Reply]]) -> Handler:
    """`call` in the table's shape; it returns call's own coroutine (no frame of its own)."""
    return lambda request, caller, session: call(request, caller)
