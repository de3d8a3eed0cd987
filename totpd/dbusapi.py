"""The D-Bus API: org.totpd.Totpd1 on the system bus, a second door into the same service.

A D-Bus call becomes the same typed `Request` a socket client would send, built and
held to the same checks by totpd.protocol (`make_request`, no bytes in between), with a
`Caller` whose uid and pid the bus reports for the sender (GetConnectionUnixUser /
GetConnectionUnixProcessID, never an argument). It is admitted under the socket's own
caps (admission.py, one count for both doors) and goes through `Service.handle`: one
identity step, one authorization, one audit line, one throttle. What D-Bus adds is
polkit: once the service has resolved the account (so the name is looked up once),
polkit decides whether the caller may manage its own account (org.totpd.manage-own) or
any account (org.totpd.manage-any), and the service reads that grant from
`Caller.granted`. Root needs no polkit; without polkit on the bus only root may call a
method. Signals mirror the service's durable events; no secret is ever in a signal or
a property (docs/dbus.md).

Method calls are dispatched by `Api._on_message` rather than by dbus-fast's method
handlers, because only the message knows the sender and the interactive-authorization
flag; the `@method` declarations of `TotpdInterface` are the one description of the
interface (introspection, signature checks), checked against
packaging/dbus/org.totpd.Totpd1.xml by the tests.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any, Awaitable, Callable

from dbus_fast import BusType, DBusError, ErrorType, Message, MessageFlag, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property

try:
    from dbus_fast.service import dbus_method, dbus_signal
except ImportError:  # older dbus-fast (Debian 12: 1.84, Debian 13: 2.44) names them method and signal
    from dbus_fast.service import method as dbus_method, signal as dbus_signal

from . import __version__
from .admission import Admission
from .config import Config
from .errors import CallRefused, ProtocolError
from .protocol import Reply, Request, make_request
from .service import Caller, Service

log = logging.getLogger("totpd")

BUS_NAME = "org.totpd.Totpd1"
INTERFACE = "org.totpd.Totpd1"
OBJECT_PATH = "/org/totpd/Totpd1"
ERROR = INTERFACE + ".Error."

ACTION_OWN = "org.totpd.manage-own"
ACTION_ANY = "org.totpd.manage-any"
POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
POLKIT_ALLOW_USER_INTERACTION = 1

CONNECT_TIMEOUT = 5.0
BUS_CALL_TIMEOUT = 10.0
# An interactive polkit check waits for a person to type a password in an agent.
INTERACTIVE_TIMEOUT = 300.0
SHUTDOWN_GRACE = 10.0

# Methods a caller may call on its own account under org.totpd.manage-own; the others
# (and any of these on someone else's account) need org.totpd.manage-any.
SELF_METHODS = frozenset(
    {"GetStatus", "BeginEnrollment", "ConfirmEnrollment", "RegenerateRecoveryCodes", "AddToken", "ListTokens"}
)

# Service reply status -> D-Bus error name.
ERRORS = {
    "FORBIDDEN": ERROR + "PermissionDenied",
    "UNKNOWN_USER": ERROR + "UnknownAccount",
    "NOT_ENROLLED": ERROR + "NotEnrolled",
    "EXISTS": ERROR + "AlreadyEnrolled",
    "REJECTED": ERROR + "CodeRejected",
    "LOCKED": ERROR + "Locked",
    "BAD_REQUEST": ErrorType.INVALID_ARGS.value,
    "UNAVAILABLE": ERROR + "Unavailable",
    "BUSY": ERROR + "Busy",
}
INTERACTIVE_REQUIRED = ErrorType.INTERACTIVE_AUTHORIZATION_REQUIRED.value

BOOLEAN_FIELDS = frozenset({"enrolled", "pending", "locked"})
ENROLL_OPTIONS = {
    "algorithm": "s", "digits": "u", "period": "u", "force": "b", "proof": "s", "token": "s", "type": "s", "counter": "t",
}
TOKEN_OPTIONS = {key: sig for key, sig in ENROLL_OPTIONS.items() if key != "force"}


class TotpdInterface(ServiceInterface):
    """org.totpd.Totpd1: the methods' declarations, the properties and the signals.

    The method bodies are never run: `Api._on_message` answers every call to this
    interface (it needs the message's sender); they exist so introspection and the
    signature checks come from one declaration. dbus-fast reads each D-Bus signature
    from the annotation strings ("s", "a{sv}"), hence annotations that are not types.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(INTERFACE)
        self._config = config

    # -- methods (declarations; see Api for the calls) --------------------------------------

    @dbus_method()
    def GetStatus(self, user: "s") -> "a{sv}":
        raise _not_dispatched()

    @dbus_method()
    def ListAccounts(self, offset: "u", limit: "u") -> "uaa{sv}":
        raise _not_dispatched()

    @dbus_method()
    def BeginEnrollment(self, user: "s", options: "a{sv}") -> "ssay":
        raise _not_dispatched()

    @dbus_method()
    def ConfirmEnrollment(self, user: "s", code: "s") -> "as":
        raise _not_dispatched()

    @dbus_method()
    def RegenerateRecoveryCodes(self, user: "s", proof: "s") -> "as":
        raise _not_dispatched()

    @dbus_method()
    def AddToken(self, user: "s", options: "a{sv}") -> "ssay":
        raise _not_dispatched()

    @dbus_method()
    def ListTokens(self, user: "s") -> "aa{sv}":
        raise _not_dispatched()

    @dbus_method()
    def RemoveToken(self, user: "s", name: "s") -> None:
        raise _not_dispatched()

    @dbus_method()
    def Reset(self, user: "s") -> None:
        raise _not_dispatched()

    @dbus_method()
    def Unlock(self, user: "s") -> None:
        raise _not_dispatched()

    # -- properties -----------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def Policy(self) -> "a{sv}":
        return policy_summary(self._config)

    # -- signals (emitted by Api._on_event once an event is durable) ----------------------

    @dbus_signal()
    def Enrolled(self, user: str) -> "s":
        return user

    @dbus_signal(name="Reset")
    def ResetSignal(self, user: str) -> "s":
        return user

    @dbus_signal()
    def RecoveryCodeUsed(self, user: str, service: str) -> "ss":
        return [user, service]

    @dbus_signal()
    def Locked(self, user: str, service: str) -> "ss":
        return [user, service]

    @dbus_signal()
    def Unlocked(self, user: str) -> "s":
        return user


def _not_dispatched() -> DBusError:
    return DBusError(ErrorType.FAILED, "this call was not dispatched by totpd")


def policy_summary(config: Config) -> dict[str, Variant]:
    """What a client may show about the policy: no account names, no paths, no secrets."""
    return {
        "self_enroll": Variant("b", config.self_enroll),
        "unenrolled": Variant("s", config.unenrolled),
        "allow_until": Variant("s", config.allow_until.isoformat() if config.allow_until else ""),
        "window": Variant("u", config.window),
        "max_failures": Variant("u", config.max_failures),
        "backoff_after": Variant("u", config.backoff_after),
        "recovery_codes": Variant("u", config.recovery_codes),
        "remember_host": Variant("u", config.remember_host),
    }


@dataclasses.dataclass(frozen=True)
class Call:
    """One method call and who sent it, as the bus says."""

    msg: Message
    uid: int
    pid: int


class Api:
    """One connection to a bus, the exported object, and the calls in flight on it."""

    def __init__(self, config: Config, service: Service, admission: Admission, bus: MessageBus) -> None:
        self.config = config
        self.service = service
        self.admission = admission
        self.bus = bus
        self.interface = TotpdInterface(config)
        self._signatures = {item.name: item.in_signature for item in self.interface.introspect().methods}
        self._calls: dict[str, Callable[[Call], Awaitable[tuple[str, list[Any]]]]] = {
            "GetStatus": self._get_status,
            "ListAccounts": self._list_accounts,
            "BeginEnrollment": self._begin_enrollment,
            "ConfirmEnrollment": self._confirm_enrollment,
            "RegenerateRecoveryCodes": self._regenerate_recovery_codes,
            "AddToken": self._add_token,
            "ListTokens": self._list_tokens,
            "RemoveToken": self._remove_token,
            "Reset": self._reset,
            "Unlock": self._unlock,
        }
        assert self._calls.keys() == self._signatures.keys()
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._watcher: asyncio.Task | None = None

    # -- start and stop ---------------------------------------------------------------------

    async def publish(self) -> bool:
        """Export the object and take the name; False (logged once) if the bus refuses the name."""
        self.bus.export(OBJECT_PATH, self.interface)
        self.bus.add_message_handler(self._on_message)
        try:
            reply = await asyncio.wait_for(self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE), BUS_CALL_TIMEOUT)
        except (DBusError, asyncio.TimeoutError) as exc:
            log.warning("D-Bus: cannot own %s (%s); serving the socket only", BUS_NAME, _why(exc))
            return False
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            log.warning("D-Bus: %s is owned by another process; serving the socket only", BUS_NAME)
            return False
        self.service.listeners.append(self._on_event)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        log.info("D-Bus: serving %s at %s", BUS_NAME, OBJECT_PATH)
        return True

    async def _watch(self) -> None:
        """Say once if the bus goes away; the socket serves on regardless."""
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()
        if not self._closing:
            log.warning("D-Bus: lost the connection to the bus; serving the socket only")

    async def close(self) -> None:
        """Stop taking calls, let those in flight finish (bounded), then leave the bus."""
        self._closing = True
        if self._on_event in self.service.listeners:
            self.service.listeners.remove(self._on_event)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=SHUTDOWN_GRACE)
        self.bus.disconnect()

    # -- calls -------------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool | Message:
        """Take every call to our interface; anything else goes on to dbus-fast."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.path != OBJECT_PATH:
            return False
        if msg.interface not in (INTERFACE, None) or msg.member not in self._calls:
            return False
        if msg.signature != self._signatures[msg.member]:
            return Message.new_error(
                msg, ErrorType.INVALID_ARGS, f"{msg.member} takes ({self._signatures[msg.member]}), not ({msg.signature})"
            )
        if self._closing:
            return Message.new_error(msg, ERRORS["UNAVAILABLE"], "totpd is stopping; try again shortly.")
        # A bound on calls not yet admitted, before even asking the bus who calls.
        if len(self._tasks) >= self.config.max_connections:
            return Message.new_error(msg, ERRORS["BUSY"], "The two-factor service is busy; try again.")
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, msg: Message) -> None:
        try:
            signature, body = await self._call(msg)
            reply = Message.new_method_return(msg, signature, body)
        except CallRefused as exc:
            reply = Message.new_error(msg, exc.name, exc.text)
        except Exception:  # a bug must cost one call, never the daemon: fail closed
            log.exception("D-Bus: internal error while answering %s", msg.member)
            reply = Message.new_error(msg, ERRORS["UNAVAILABLE"], "The two-factor service hit an internal error; try again.")
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.bus.connected:
            self.bus.send(reply)

    async def _call(self, msg: Message) -> tuple[str, list[Any]]:
        assert msg.sender is not None and msg.member is not None
        uid = await self._bus_call("GetConnectionUnixUser", msg.sender)
        pid = await self._bus_call("GetConnectionUnixProcessID", msg.sender)
        if not self.admission.admit(uid):  # a call in flight holds a place, as a connection does
            raise CallRefused(ERRORS["BUSY"], "The two-factor service is busy; try again.")
        try:
            return await self._calls[msg.member](Call(msg, uid, pid))
        finally:
            self.admission.release(uid)

    async def _bus_call(self, member: str, sender: str) -> int:
        reply = await self._call_on_bus(
            Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                member=member, signature="s", body=[sender],
            ),
            BUS_CALL_TIMEOUT,
        )
        if reply.message_type is MessageType.ERROR:
            raise CallRefused(ERRORS["UNAVAILABLE"], f"the bus did not say who is calling ({reply.error_name})")
        return int(reply.body[0])

    async def _call_on_bus(self, message: Message, timeout: float) -> Message:
        try:
            reply = await asyncio.wait_for(self.bus.call(message), timeout)
        except asyncio.TimeoutError:
            raise CallRefused(ErrorType.TIMEOUT.value, f"{message.destination} did not answer in {timeout:g}s") from None
        assert reply is not None
        return reply

    # -- authorization: polkit grants, the service decides ---------------------------------------

    async def _authorize(self, msg: Message, uid: int, request: Request) -> tuple[str, CallRefused | None]:
        """What polkit grants this call ("any", "own", "none") and, for "none", the error to give.

        `request` has passed the service's identity step: its `user_uid` says whose account
        it names. The refusal itself is the service's (audited there); the error only says
        why when polkit asked for a password the caller did not allow it to ask for.
        """
        if uid == 0:
            return "any", None
        own = msg.member in SELF_METHODS and request.user_uid == uid
        action = ACTION_OWN if own else ACTION_ANY
        interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        answer = await self._call_on_bus(
            Message(
                destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_INTERFACE, member="CheckAuthorization",
                signature="(sa{sv})sa{ss}us",
                body=[
                    # The bus name, not the pid, is the subject: polkit asks the bus itself, so a
                    # caller cannot race a pid it no longer owns (as fprintd does).
                    ["system-bus-name", {"name": Variant("s", msg.sender)}],
                    action, {}, POLKIT_ALLOW_USER_INTERACTION if interactive else 0, "",
                ],
            ),
            INTERACTIVE_TIMEOUT if interactive else BUS_CALL_TIMEOUT,
        )
        if answer.message_type is MessageType.ERROR:
            if answer.error_name == ErrorType.SERVICE_UNKNOWN.value:
                return "none", CallRefused(ERRORS["FORBIDDEN"], f"uid {uid}: no polkit on this bus, so only root may call {msg.member}")
            log.warning("D-Bus: polkit failed for %s (%s): refusing", action, answer.error_name)
            return "none", CallRefused(ERRORS["FORBIDDEN"], f"polkit could not decide {action}; refused")
        authorized, challenge, _details = answer.body[0]
        if authorized:
            return ("own" if own else "any"), None
        if challenge:
            return "none", CallRefused(
                INTERACTIVE_REQUIRED,
                f"{action} needs authentication: call again allowing interactive authorization, with a polkit agent running",
            )
        return "none", CallRefused(ERRORS["FORBIDDEN"], f"polkit does not authorize uid {uid} for {action}")

    # -- the methods: each one request to the service -------------------------------------------

    async def _handle(self, call: Call, verb: str, **fields: str) -> Reply:
        """The call's one request to the service; its OK reply, or the error to answer."""
        try:
            request = make_request(verb, fields)  # the socket's own checks, not a copy of them
        except ProtocolError as exc:
            raise CallRefused(ErrorType.INVALID_ARGS.value, str(exc)) from None
        refusal: CallRefused | None = None

        async def grant(identified: Request) -> Caller:
            nonlocal refusal
            granted, refusal = await self._authorize(call.msg, call.uid, identified)
            # gid -1: over D-Bus polkit (Caller.granted), not admin_group, says who administers.
            return Caller(pid=call.pid, uid=call.uid, gid=-1, granted=granted)

        # Until polkit has answered, the caller is granted nothing.
        reply = await self.service.handle(request, Caller(call.pid, call.uid, -1, "none"), grant=grant)
        if reply.status == "OK":
            return reply
        if refusal is not None and reply.status == "FORBIDDEN":
            raise refusal
        name = ERRORS.get(reply.status, ERROR + "Failed")
        raise CallRefused(name, reply.message or _default_text(reply.status, fields.get("user", "")))

    async def _get_status(self, call: Call) -> tuple[str, list[Any]]:
        reply = await self._handle(call, "status", user=call.msg.body[0], service="dbus")
        return "a{sv}", [_status_dict(reply.fields)]

    async def _list_accounts(self, call: Call) -> tuple[str, list[Any]]:
        offset, limit = call.msg.body
        reply = await self._handle(call, "list", offset=str(offset), limit=str(limit))
        accounts = [_status_dict({key: str(value) for key, value in entry.items()}) for entry in json.loads(reply.fields["accounts"])]
        return "uaa{sv}", [int(reply.fields["total"]), accounts]

    async def _begin_enrollment(self, call: Call) -> tuple[str, list[Any]]:
        return await self._new_token(call, "enroll", ENROLL_OPTIONS)

    async def _add_token(self, call: Call) -> tuple[str, list[Any]]:
        return await self._new_token(call, "token_add", TOKEN_OPTIONS)

    async def _new_token(self, call: Call, verb: str, allowed: dict[str, str]) -> tuple[str, list[Any]]:
        user, options = call.msg.body
        fields = {"user": user, "service": "dbus"}
        for key, value in options.items():
            if allowed.get(key) != value.signature:
                known = ", ".join(f"{name} ({sig})" for name, sig in allowed.items())
                raise CallRefused(ErrorType.INVALID_ARGS.value, f"unknown option or wrong type '{key}'; options: {known}")
            fields[key] = str(int(value.value)) if value.signature == "b" else str(value.value)
        reply = await self._handle(call, verb, **fields)
        uri = reply.fields["uri"]
        png = await asyncio.to_thread(_qr_png, uri)
        # The one answer that carries a secret: a method return, sent to the enrolling caller only.
        return "ssay", [uri, reply.fields["secret"], png]

    async def _confirm_enrollment(self, call: Call) -> tuple[str, list[Any]]:
        user, code = call.msg.body
        reply = await self._handle(call, "confirm", user=user, code=code, service="dbus")
        # A token added beside others keeps the account's recovery codes: none are new.
        return "as", [reply.fields.get("recovery_codes", "").split()]

    async def _list_tokens(self, call: Call) -> tuple[str, list[Any]]:
        reply = await self._handle(call, "token_list", user=call.msg.body[0], service="dbus")
        tokens = [_status_dict({key: str(value) for key, value in entry.items()}) for entry in json.loads(reply.fields["tokens"])]
        return "aa{sv}", [tokens]

    async def _remove_token(self, call: Call) -> tuple[str, list[Any]]:
        user, name = call.msg.body
        await self._handle(call, "token_remove", user=user, token=name, service="dbus")
        return "", []

    async def _regenerate_recovery_codes(self, call: Call) -> tuple[str, list[Any]]:
        user, proof = call.msg.body
        fields = {"user": user, "service": "dbus"}
        if proof:
            fields["proof"] = proof
        reply = await self._handle(call, "recovery_codes", **fields)
        return "as", [reply.fields["recovery_codes"].split()]

    async def _reset(self, call: Call) -> tuple[str, list[Any]]:
        await self._handle(call, "reset", user=call.msg.body[0], service="dbus")
        return "", []

    async def _unlock(self, call: Call) -> tuple[str, list[Any]]:
        await self._handle(call, "unlock", user=call.msg.body[0], service="dbus")
        return "", []

    # -- signals -----------------------------------------------------------------------------

    def _on_event(self, event: str, fields: dict[str, object]) -> None:
        """A Service listener: one signal per durable event, names only, never a secret."""
        if not self.bus.connected:
            return
        user, service = str(fields.get("user") or ""), str(fields.get("service") or "")
        if event == "enrolled":
            self.interface.Enrolled(user)
        elif event == "reset":
            self.interface.ResetSignal(user)
        elif event == "recovery_code_used":
            self.interface.RecoveryCodeUsed(user, service)
        elif event == "locked":
            self.interface.Locked(user, service)
        elif event == "unlocked":
            self.interface.Unlocked(user)


def _status_dict(fields: dict[str, str]) -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for key, value in fields.items():
        if key == "message" or value in ("", "unknown"):
            continue
        if key in BOOLEAN_FIELDS or key == "clock_synchronized":
            out[key] = Variant("b", value == "1")
        elif value.lstrip("-").isdigit():
            out[key] = Variant("x", int(value))
        else:
            out[key] = Variant("s", value)
    return out


def _default_text(status: str, user: str) -> str:
    return f"totpd answered {status} for account '{user}'" if user else f"totpd answered {status}"


def _qr_png(uri: str) -> bytes:
    from . import qr  # segno, only when a QR code is drawn

    return qr.png(uri)


def _why(exc: BaseException) -> str:
    if isinstance(exc, DBusError):
        return f"{exc.type}: {exc.text}"
    return str(exc) or type(exc).__name__


async def start(config: Config, service: Service, admission: Admission) -> Api | None:
    """Connect as `config.dbus` says and publish the API; None (one line logged) without a bus."""
    if config.dbus == "off":
        return None
    where = "the system bus" if config.dbus == "system" else config.dbus
    try:
        bus = MessageBus(bus_type=BusType.SYSTEM) if config.dbus == "system" else MessageBus(bus_address=config.dbus)
        await asyncio.wait_for(bus.connect(), CONNECT_TIMEOUT)
    except Exception as exc:  # any failure to reach a bus means "no D-Bus", never "no daemon"
        log.info("D-Bus: %s is not reachable (%s); serving the socket only", where, _why(exc))
        return None
    api = Api(config, service, admission, bus)
    if not await api.publish():
        bus.disconnect()
        return None
    return api
