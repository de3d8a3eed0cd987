"""The wire protocol (totpd/protocol.py): the documented vectors, the limits, and
hypothesis fuzzing of the parser (it raises only ProtocolError, FrameError for the
framing) and of encode/decode round trips.
"""

from __future__ import annotations

import importlib.util
import re
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from totpd import protocol
from totpd.errors import FrameError, ProtocolError
from totpd.protocol import (
    HEADER_SIZE, MAX_REQUEST_PAYLOAD, VERBS, Reply, Request, decode_reply, decode_request,
    encode_reply, encode_request, parse_header,
)

# The statuses of docs/protocol.md's table, and nothing else.
DOCUMENTED_STATUSES = {
    "ACCEPTED", "NEED_CODE", "IGNORE", "REJECTED", "DENIED", "LOCKED", "UNKNOWN_USER", "OK",
    "EXISTS", "NOT_ENROLLED", "FORBIDDEN", "BAD_REQUEST", "UNAVAILABLE", "BUSY", "ENROLL",
}

FAST = settings(max_examples=1500, deadline=None, derandomize=True)


def test_the_documented_statuses_are_the_ones_docs_protocol_md_lists():
    table = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `") and line.split("`")[1].isupper()}
    assert DOCUMENTED_STATUSES == {name for name in listed if not name.startswith("MAX_")}

REPO = Path(__file__).resolve().parent.parent


def _limits_of_the_daemon() -> dict[str, object]:
    names = [name for name in vars(protocol) if name.startswith("MAX_")]
    return {"MAGIC": protocol.MAGIC, "VERSION": protocol.VERSION, "HEADER_SIZE": protocol.HEADER_SIZE} | {
        name: getattr(protocol, name) for name in names
    }


def _limits_of_the_pam_module() -> dict[str, object]:
    """pam/wire.h's #defines of numbers, under protocol.py's names."""
    header = (REPO / "pam" / "wire.h").read_text()
    defines = {name: int(value, 0) for name, value in re.findall(r"^#define (\w+) (0x[0-9A-Fa-f]+|\d+)\b", header, re.M)}
    limits = {name: value for name, value in defines.items() if name.startswith("MAX_")}
    return limits | {
        "MAGIC": bytes([defines["FRAME_MAGIC_0"], defines["FRAME_MAGIC_1"]]),
        "VERSION": defines["FRAME_VERSION"],
        "HEADER_SIZE": defines["FRAME_HEADER_SIZE"],
    }


def _limits_of_the_fake_daemon() -> dict[str, object]:
    """tests/helpers/fakedaemon.py's constants, written apart from protocol.py on purpose."""
    spec = importlib.util.spec_from_file_location("fakedaemon_limits", REPO / "tests" / "helpers" / "fakedaemon.py")
    fake = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look themselves up there
    spec.loader.exec_module(fake)
    names = [name for name in vars(fake) if name.startswith("MAX_")]
    return {"MAGIC": fake.MAGIC, "VERSION": fake.VERSION, "HEADER_SIZE": fake.HEADER.size} | {
        name: getattr(fake, name) for name in names
    }


def _limits_of_the_document() -> dict[str, object]:
    """docs/protocol.md's table of limits: | `MAX_...` | number | what it bounds |."""
    text = (REPO / "docs" / "protocol.md").read_text()
    return {name: int(value) for name, value in re.findall(r"^\| `(MAX_\w+)` *\| *(\d+) *\|", text, re.M)}


def test_the_wire_limits_agree_across_the_daemon_the_pam_module_its_fake_daemon_and_the_document():
    daemon = _limits_of_the_daemon()
    framing = {"MAGIC", "VERSION", "HEADER_SIZE", "MAX_REQUEST_PAYLOAD", "MAX_AUTH_REPLY_PAYLOAD",
               "MAX_ENROLL_REPLY_PAYLOAD", "MAX_LINES", "MAX_MESSAGE", "MAX_TOKEN"}
    for where, limits in [("pam/wire.h", _limits_of_the_pam_module()),
                          ("tests/helpers/fakedaemon.py", _limits_of_the_fake_daemon()),
                          ("docs/protocol.md", _limits_of_the_document())]:
        assert {name: daemon.get(name, "missing from protocol.py") for name in limits} == limits, where
        assert framing - {"MAGIC", "VERSION", "HEADER_SIZE", "MAX_TOKEN"} <= limits.keys(), where
    assert framing <= _limits_of_the_pam_module().keys() & _limits_of_the_fake_daemon().keys() & daemon.keys()


# -- protocol -----------------------------------------------------------------------

VECTORS = {
    "ping": "5444 0100 0000 0005 70696e670a",
    "ok": "5444 0100 0000 000d 4f4b0a76657273696f6e3d310a",
    "check": "5444 0100 0000 001e 636865636b0a757365723d616c6963650a736572766963653d7375646f0a",
    "need_code": "5444 0100 0000 0025 4e4545445f434f44450a70726f6d70743d566572696669636174696f6e20636f64653a200a",
    "enroll": "5444 0100 0000 0007 454e524f4c4c0a",
    "need_code_lines": "5444 0100 0000 002a 4e4545445f434f44450a696e666f3d5363616e3a0a71723d20e29688e296800a696e666f3d414243440a",
}
LINES = (("info", "Scan:"), ("qr", " \u2588\u2580"), ("info", "ABCD"))


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_the_protocol_documents_vectors_match_the_encoder():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    for vector in VECTORS.values():
        assert vector in doc
    assert protocol.encode_request("ping", {}) == _hex(VECTORS["ping"])
    assert protocol.encode_reply(protocol.Reply("OK", {"version": "1"})) == _hex(VECTORS["ok"])
    assert protocol.encode_request("check", {"user": "alice", "service": "sudo"}) == _hex(VECTORS["check"])
    assert protocol.encode_reply(protocol.Reply("NEED_CODE", {"prompt": "Verification code: "})) == _hex(VECTORS["need_code"])
    assert protocol.encode_reply(protocol.Reply("ENROLL")) == _hex(VECTORS["enroll"])
    assert protocol.encode_reply(protocol.Reply("NEED_CODE", {}, LINES)) == _hex(VECTORS["need_code_lines"])
    raw = _hex(VECTORS["check"])
    length = protocol.parse_header(raw[:8], protocol.MAX_REQUEST_PAYLOAD)
    request = protocol.decode_request(raw[8 : 8 + length])
    assert request.verb == "check" and request.fields == {"user": "alice", "service": "sudo"}


def test_a_replys_lines_may_repeat_and_keep_their_order_but_no_other_key_may():
    decoded = protocol.decode_reply(_hex(VECTORS["need_code_lines"])[8:])
    assert decoded.status == "NEED_CODE" and decoded.fields == {} and decoded.lines == LINES
    with pytest.raises(ProtocolError, match="twice"):
        protocol.decode_reply(b"NEED_CODE\nmessage=a\nmessage=b\n")


@pytest.mark.parametrize("payload", [
    b"NEED_CODE\n" + b"info=x\n" * 65,
    b"NEED_CODE\ninfo=" + b"x" * 513 + b"\n",
    b"NEED_CODE\nqr=\x1b[0m\n",
])
def test_too_many_or_too_long_lines_or_a_control_character_in_one_are_refused(payload):
    with pytest.raises(ProtocolError):
        protocol.decode_reply(payload)


@pytest.mark.parametrize(
    "header",
    ["5845 0100 0000 0005", "5444 0200 0000 0005", "5444 0101 0000 0005", "5444 0100 0000 0000", "5444 0100 0000 1001"],
)
def test_the_documented_malformed_headers_are_refused(header):
    with pytest.raises(FrameError):
        protocol.parse_header(_hex(header), protocol.MAX_REQUEST_PAYLOAD)


def test_a_payload_without_a_final_line_feed_is_refused():
    with pytest.raises(ProtocolError, match="line feed"):
        protocol.decode_request(b"ping")


@pytest.mark.parametrize("user", ["alice", "Alice Smith", "alice@EXAMPLE.COM", "DOMAIN\\alice", "ölçü", "a" * 256])
def test_names_that_directories_produce_are_accepted(user):
    assert protocol.check_user(user) == user


@pytest.mark.parametrize("user", ["", ".", "..", "a/b", "/etc", "a\nb", "a\tb", "a\x7fb", "a\u0085b", "a" * 257, "é" * 129])
def test_hostile_account_names_are_refused(user):
    with pytest.raises(ProtocolError):
        protocol.check_user(user)

# -- the protocol parser -----------------------------------------------------------

# Text the protocol can carry in a value: no C0/C1 controls, no DEL.
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=[chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]), max_size=40)
KEYS = st.sampled_from(sorted({key for required, optional in VERBS.values() for key in required | optional} | {"x", "message"}))


@st.composite
def near_valid_payloads(draw) -> bytes:
    """Payloads built from the grammar, then sometimes broken: reach deep into the parser."""
    verb = draw(st.sampled_from([*VERBS, "explode", "", "VERIFY", "a" * 33]))
    lines = [verb]
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.one_of(KEYS, st.text(max_size=5)))
        value = draw(st.one_of(SAFE_TEXT, st.text(max_size=8), st.just("a" * 1025), st.just(".."), st.just("")))
        lines.append(f"{key}={value}" if draw(st.booleans()) or not key else key)
    payload = ("\n".join(lines) + draw(st.sampled_from(["\n", "\n", "", "\r\n", "\n\n"]))).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0 and payload:
        at = draw(st.integers(0, len(payload) - 1))
        payload = payload[:at] + draw(st.binary(min_size=1, max_size=3)) + payload[at + 1:]
    return payload


@FAST
@given(header=st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE), limit=st.sampled_from([1, 4096, 65536]))
def test_parse_header_returns_a_bounded_length_or_raises_frame_error(header, limit):
    try:
        length = parse_header(header, limit)
    except FrameError:
        return
    assert 1 <= length <= limit
    assert header[:2] == b"TD" and header[2] == 1 and header[3] == 0
    assert struct.unpack(">I", header[4:])[0] == length


@FAST
@given(payload=st.one_of(st.binary(max_size=200), near_valid_payloads()))
def test_decode_request_returns_a_well_formed_request_or_raises_protocol_error(payload):
    try:
        request = decode_request(payload)
    except ProtocolError:
        return
    required, optional = VERBS[request.verb]
    assert required <= request.fields.keys() <= required | optional
    if "user" in request.fields:
        assert protocol.check_user(request.user) == request.user
    assert all(len(value.encode()) <= protocol.MAX_VALUE for value in request.fields.values())
    # What the parser accepted re-encodes to a frame it accepts again, unchanged.
    frame = encode_request(request.verb, request.fields)
    assert decode_request(frame[HEADER_SIZE:]) == request


@FAST
@given(payload=st.binary(max_size=200))
def test_decode_reply_returns_a_reply_or_raises_protocol_error(payload):
    try:
        reply = decode_reply(payload)
    except ProtocolError:
        return
    assert re.fullmatch(r"[A-Z_]{1,32}", reply.status)
    assert all(re.fullmatch(r"[a-z_]{1,32}", key) for key in reply.fields)


@st.composite
def valid_requests(draw) -> Request:
    verb = draw(st.sampled_from(sorted(VERBS)))
    required, optional = VERBS[verb]
    keys = set(required) | draw(st.sets(st.sampled_from(sorted(optional)))) if optional else set(required)
    fields = {}
    for key in sorted(keys):
        if key == "user":
            fields[key] = draw(SAFE_TEXT.filter(lambda u: u and u not in (".", "..") and "/" not in u))
        else:
            fields[key] = draw(SAFE_TEXT)
    return Request(verb, fields)


@FAST
@given(request=valid_requests())
def test_encoded_requests_decode_to_the_same_request(request):
    frame = encode_request(request.verb, request.fields)
    length = parse_header(frame[:HEADER_SIZE], MAX_REQUEST_PAYLOAD * 16)
    assert length == len(frame) - HEADER_SIZE
    try:
        decoded = decode_request(frame[HEADER_SIZE:])
    except ProtocolError as exc:  # only the documented limits may refuse a well-formed request
        assert "longer than" in str(exc), exc
        return
    assert decoded == request


@FAST
@given(
    status=st.from_regex(r"[A-Z_]{1,32}", fullmatch=True),
    fields=st.dictionaries(st.from_regex(r"[a-z_]{1,32}", fullmatch=True), SAFE_TEXT, max_size=6),
)
def test_encoded_replies_decode_to_the_same_reply(status, fields):
    frame = encode_reply(Reply(status, fields))
    assert parse_header(frame[:HEADER_SIZE], 1 << 20) == len(frame) - HEADER_SIZE
    assert decode_reply(frame[HEADER_SIZE:]) == Reply(status, fields)


@FAST
@given(value=st.text(max_size=10).filter(lambda v: any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in v)))
def test_a_control_character_is_never_encoded_into_a_frame(value):
    with pytest.raises(ProtocolError):
        encode_request("verify", {"user": "alice", "code": value})
    with pytest.raises(ProtocolError):
        encode_reply(Reply("REJECTED", {"message": value}))


@st.composite
def requests_built_in_the_daemon(draw) -> tuple[str, dict[str, str]]:
    """A verb and fields as the D-Bus door passes them: often right, sometimes not."""
    verb = draw(st.sampled_from([*VERBS, "explode", "", "VERIFY", "a" * 33]))
    required, optional = VERBS.get(verb, (frozenset({"user"}), frozenset()))
    keys = set(required) if draw(st.integers(0, 3)) else set()
    keys |= draw(st.sets(st.sampled_from(sorted(required | optional | {"user"})), max_size=8))
    if not draw(st.integers(0, 3)):  # a key no verb or not this verb takes
        keys.add(draw(st.one_of(KEYS, st.text(max_size=5).filter(lambda k: "=" not in k and "\n" not in k))))
    values = st.one_of(
        SAFE_TEXT, SAFE_TEXT, SAFE_TEXT, st.text(max_size=8), st.just(".."), st.just(""),
        st.text(alphabet="a\u00e9", min_size=900, max_size=1030),
    )
    return verb, {key: draw(values) for key in sorted(keys)}


def _read_from_the_wire(verb: str, fields: dict[str, str]) -> Request | None:
    """The same request sent over the socket: None where the daemon would refuse it."""
    try:
        frame = encode_request(verb, fields)
        if len(frame) - HEADER_SIZE > MAX_REQUEST_PAYLOAD:
            return None
        return decode_request(frame[HEADER_SIZE:])
    except ProtocolError:
        return None


@FAST
@given(built=requests_built_in_the_daemon())
def test_a_request_built_in_the_daemon_passes_exactly_the_checks_of_one_read_from_the_wire(built):
    verb, fields = built
    try:
        request = protocol.make_request(verb, fields)
    except ProtocolError:
        request = None
    assert request == _read_from_the_wire(verb, fields)


def test_a_request_built_in_the_daemon_is_held_to_the_frame_size_limit():
    fields = {key: "a" * protocol.MAX_VALUE for key in ("user", "algorithm", "issuer", "secret", "proof")}
    with pytest.raises(ProtocolError, match=f"longer than {MAX_REQUEST_PAYLOAD} bytes"):
        protocol.make_request("enroll", fields)
