"""The wire protocol of docs/protocol.md: framing, payload parsing and every limit.

This module owns bytes <-> typed messages and nothing else: it knows which keys a
verb takes, never what the verb does.
"""

from __future__ import annotations

import dataclasses
import re
import struct

from .errors import FrameError, ProtocolError

MAGIC = b"TD"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
HEADER_SIZE = HEADER.size  # 8

MAX_REQUEST_PAYLOAD = 4096
MAX_REPLY_PAYLOAD = 65536
MAX_AUTH_REPLY_PAYLOAD = 4096
MAX_ENROLL_REPLY_PAYLOAD = 16384  # login_enroll's reply: a QR code drawn as text
MAX_LINES = 64  # `info` and `qr` lines in one reply
MAX_VALUE = 1024
MAX_MESSAGE = 512
MAX_USER = 256
MAX_LIST_LIMIT = 200
MAX_TOKEN = 32  # a verb, status or key

_VERB = re.compile(rf"[a-z_]{{1,{MAX_TOKEN}}}")
_STATUS = re.compile(rf"[A-Z_]{{1,{MAX_TOKEN}}}")
_KEY = re.compile(rf"[a-z_]{{1,{MAX_TOKEN}}}")
# C0 controls, DEL and C1 controls: forbidden in every value and every account name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_COMMON = {"user", "service", "rhost", "tty"}
# Reply keys that may repeat: each is one line shown to the person, in order
# (`qr`: a row of a QR code drawn in text).
LINE_KEYS = ("info", "qr")
TOKEN_NAME = re.compile(r"[a-z0-9_.-]{1,32}")
TOKEN_TYPES = ("totp", "hotp")
DEFAULT_TOKEN = "default"
# verb -> (required keys, optional keys)
VERBS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "ping": (frozenset(), frozenset()),
    "check": (frozenset({"user"}), frozenset(_COMMON)),
    "verify": (frozenset({"user", "code"}), frozenset(_COMMON)),
    "enroll": (
        frozenset({"user"}),
        frozenset(_COMMON | {"algorithm", "digits", "period", "issuer", "secret", "activate", "force", "proof", "token", "type", "counter"}),
    ),
    "token_add": (
        frozenset({"user"}),
        frozenset(_COMMON | {"algorithm", "digits", "period", "issuer", "secret", "activate", "proof", "token", "type", "counter"}),
    ),
    "token_list": (frozenset({"user"}), frozenset(_COMMON)),
    "resync": (frozenset({"user", "code", "next_code"}), frozenset(_COMMON | {"token"})),
    "token_remove": (frozenset({"user", "token"}), frozenset(_COMMON)),
    "confirm": (frozenset({"user", "code"}), frozenset(_COMMON)),
    "login_enroll": (frozenset({"user"}), frozenset(_COMMON)),
    "login_confirm": (frozenset({"user", "code"}), frozenset(_COMMON)),
    "status": (frozenset({"user"}), frozenset(_COMMON)),
    "list": (frozenset(), frozenset({"offset", "limit"})),
    "reset": (frozenset({"user"}), frozenset(_COMMON)),
    "unlock": (frozenset({"user"}), frozenset(_COMMON)),
    "recovery_codes": (frozenset({"user"}), frozenset(_COMMON | {"proof"})),
    "import_add": (
        frozenset({"user", "secret"}),
        frozenset({"algorithm", "digits", "period", "last_step", "recovery_codes", "token", "type", "counter"}),
    ),
    "import_commit": (frozenset(), frozenset({"force", "dry_run"})),
}

_ALLOWED = {verb: required | optional for verb, (required, optional) in VERBS.items()}


@dataclasses.dataclass(frozen=True)
class Request:
    verb: str
    fields: dict[str, str]
    # The account name as the client spelled it, where the service resolved it to
    # another (totpd/identity.py); never read from the wire.
    as_given: str = ""
    # The uid of the account `user` names, as the service's identity step resolved it
    # (-1: NSS knows no such account; None: not resolved); never read from the wire.
    user_uid: int | None = None

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    @property
    def user(self) -> str:
        return self.fields.get("user", "")

    def flag(self, key: str) -> bool:
        value = self.fields.get(key, "0")
        if value not in ("0", "1"):
            raise ProtocolError(f"'{key}' must be 0 or 1")
        return value == "1"


@dataclasses.dataclass(frozen=True)
class Reply:
    status: str
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    # (key, text) in order, key one of LINE_KEYS: lines for the person, after the fields
    lines: tuple[tuple[str, str], ...] = ()

    @property
    def message(self) -> str:
        return self.fields.get("message", "")


def encode_frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, 0, len(payload)) + payload


def parse_header(header: bytes, limit: int) -> int:
    """Check an 8-byte header and return the payload length it announces."""
    magic, version, flags, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError("not a totpd frame (bad magic)")
    if version != VERSION:
        raise FrameError(f"unsupported protocol version {version} (this daemon speaks {VERSION})")
    if flags != 0:
        raise FrameError("reserved header flags are set")
    if length == 0:
        raise FrameError("empty payload")
    if length > limit:
        raise FrameError(f"frame of {length} bytes is over the limit of {limit}")
    return length


def _lines(payload: bytes) -> list[str]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("payload is not valid UTF-8") from None
    if not text.endswith("\n"):
        raise ProtocolError("payload does not end with a line feed")
    return text[:-1].split("\n")


def _fields(
    lines: list[str], value_limit: int | None, listed: list[tuple[str, str]] | None = None
) -> dict[str, str]:
    """key=value lines; with `listed`, LINE_KEYS lines go there, in order, and may repeat."""
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise ProtocolError("malformed line: expected key=value with a lowercase key")
        if key in fields:
            raise ProtocolError(f"key '{key}' appears twice")
        _check_field(key, value, value_limit)
        if listed is not None and key in LINE_KEYS:
            if len(listed) >= MAX_LINES or len(value.encode()) > MAX_MESSAGE:
                raise ProtocolError(f"more than {MAX_LINES} lines, or a line over {MAX_MESSAGE} bytes")
            listed.append((key, value))
            continue
        fields[key] = value
    return fields


def _check_field(key: str, value: str, value_limit: int | None) -> None:
    if not _KEY.fullmatch(key):
        raise ProtocolError("malformed line: expected key=value with a lowercase key")
    if _CONTROL.search(value):
        raise ProtocolError(f"value of '{key}' contains a control character")
    if value_limit is not None and len(value.encode()) > value_limit:
        raise ProtocolError(f"value of '{key}' is longer than {value_limit} bytes")


def check_user(user: str) -> str:
    """Refuse account names that are hostile or simply not names."""
    if not user:
        raise ProtocolError("'user' is empty")
    if len(user.encode()) > MAX_USER:
        raise ProtocolError(f"'user' is longer than {MAX_USER} bytes")
    if _CONTROL.search(user) or "/" in user or user in (".", ".."):
        raise ProtocolError("'user' is not a valid account name")
    return user


def decode_request(payload: bytes) -> Request:
    lines = _lines(payload)
    verb = lines[0]
    _check_verb(verb)
    return _checked(verb, _fields(lines[1:], MAX_VALUE))


def make_request(verb: str, fields: dict[str, str]) -> Request:
    """A request built inside the daemon (the D-Bus door), held to every check a request
    read from the wire gets, its size included, without becoming bytes first."""
    _check_verb(verb)
    size = len(verb.encode()) + 1
    for key, value in fields.items():
        _check_field(key, value, MAX_VALUE)
        size += len(key) + len(value.encode()) + 2  # key=value and the line feed
    if size > MAX_REQUEST_PAYLOAD:
        raise ProtocolError(f"request is longer than {MAX_REQUEST_PAYLOAD} bytes")
    return _checked(verb, dict(fields))


def _check_verb(verb: str) -> None:
    if not _VERB.fullmatch(verb):
        raise ProtocolError("first line must be a lowercase verb")
    if verb not in VERBS:
        raise ProtocolError(f"unknown verb '{verb}'")


def _checked(verb: str, fields: dict[str, str]) -> Request:
    """The request, once its keys are the verb's and its account name is a name."""
    required, optional = VERBS[verb]
    if not fields.keys() <= _ALLOWED[verb]:
        key = next(key for key in fields if key not in _ALLOWED[verb])
        raise ProtocolError(f"verb '{verb}' takes no key '{key}'")
    if not required <= fields.keys():
        raise ProtocolError(f"verb '{verb}' needs key '{sorted(required - fields.keys())[0]}'")
    if "user" in fields:
        check_user(fields["user"])
    return Request(verb, fields)


def encode_request(verb: str, fields: dict[str, str]) -> bytes:
    return encode_frame(_payload(verb, fields))


def encode_reply(reply: Reply) -> bytes:
    return encode_frame(_payload(reply.status, reply.fields, reply.lines))


def decode_reply(payload: bytes) -> Reply:
    lines = _lines(payload)
    if not _STATUS.fullmatch(lines[0]):
        raise ProtocolError("reply does not start with a status")
    listed: list[tuple[str, str]] = []
    fields = _fields(lines[1:], None, listed)
    return Reply(lines[0], fields, tuple(listed))


def _payload(first: str, fields: dict[str, str], listed: tuple[tuple[str, str], ...] = ()) -> bytes:
    parts = [first]
    for key, value in [*fields.items(), *listed]:
        value = str(value)
        if _CONTROL.search(value):
            raise ProtocolError(f"value of '{key}' contains a control character")
        parts.append(f"{key}={value}")
    return ("\n".join(parts) + "\n").encode()
