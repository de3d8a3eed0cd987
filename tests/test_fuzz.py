"""Property-based fuzzing of the wire protocol and of the service (hypothesis).

The protocol parser is the first code any local user's bytes reach; the service is
the one place that says ACCEPTED. Both must turn anything at all into a documented
answer: the parser raises only ProtocolError (FrameError for the framing), the
service never raises and answers only with a status of docs/protocol.md, and it
never says ACCEPTED unless the code was right. The service runs on a real SQLite
store and a real master key in a temp dir, with a fixed clock so the oracle
(pyotp, independent of totpd/otp.py) knows exactly which codes are valid.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
import struct
import tempfile
from pathlib import Path

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from totpd import otp, protocol
from totpd.audit import Audit
from totpd.config import Config
from totpd.errors import FrameError, ProtocolError
from totpd.protocol import (
    HEADER_SIZE, MAX_REQUEST_PAYLOAD, VERBS, Reply, Request, decode_reply, decode_request,
    encode_reply, encode_request, parse_header,
)
from totpd.sealing import Sealer, load_key
from totpd.sealing import key_check, secret_context
from totpd.service import Caller, Service, Session
from totpd.store import open_store

# The statuses of docs/protocol.md's table, and nothing else.
DOCUMENTED_STATUSES = {
    "ACCEPTED", "NEED_CODE", "IGNORE", "REJECTED", "DENIED", "LOCKED", "UNKNOWN_USER", "OK",
    "EXISTS", "NOT_ENROLLED", "FORBIDDEN", "BAD_REQUEST", "UNAVAILABLE", "BUSY",
}

FAST = settings(max_examples=1500, deadline=None, derandomize=True)


def test_the_documented_statuses_are_the_ones_docs_protocol_md_lists():
    table = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `") and line.split("`")[1].isupper()}
    assert DOCUMENTED_STATUSES == {name for name in listed if not name.startswith("MAX_")}


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


# -- the service -------------------------------------------------------------------

NOW = 1_700_000_015.0  # a fixed clock: the oracle knows every valid code
WINDOW = 1
USERS = ["alice", "bob", "carol"]


class TOTP(pyotp.TOTP):
    """pyotp, allowing the 80-bit secrets totpd imports (google-authenticator's)."""

    min_secret_length_bits = 80


DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


class World:
    """A real Service on a real SQLite store, its event loop, and what the oracle knows."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="totpd-fuzz-"))
        self.config = Config(
            database=str(self.dir / "totpd.db"), key_file=str(self.dir / "master.key"),
            check_accounts=False, audit="stderr", recovery_codes=2, window=WINDOW, dbus="off",
            max_failures=100, backoff_after=100,
        )
        self.sealer = Sealer(load_key(self.config.key_file, create=True))
        self.store = open_store(self.config.database, key_check(self.sealer))
        self.service = Service(self.config, self.store, self.sealer, Audit("stderr"), clock=lambda: NOW)
        self.loop = asyncio.new_event_loop()
        self.session = Session()
        self.secrets: dict[str, list[str]] = {}  # base32 secrets the fuzzer has seen issued
        self.recovery: dict[str, set[str]] = {}
        root = Caller(1, 0, 0)
        for user in USERS[:2]:
            reply = self.call(Request("enroll", {"user": user, "activate": "1"}), root)
            assert reply.status == "OK", reply
            self.learn(Request("enroll", {"user": user}), reply)

    def call(self, request: Request, caller: Caller) -> Reply:
        """The service's answer, on its one path."""
        return self.loop.run_until_complete(asyncio.wait_for(self.service.handle(request, caller, self.session), 30))

    def learn(self, request: Request, reply: Reply) -> None:
        if reply.status != "OK":
            return
        user = request.user
        for secret in (reply.fields.get("secret"), request.fields.get("secret")):
            if secret:
                self.secrets.setdefault(user, []).append(secret)
        for codes in (reply.fields.get("recovery_codes"), request.fields.get("recovery_codes")):
            if codes:
                self.recovery.setdefault(user, set()).update(otp.normalize_recovery_code(c) for c in codes.split())

    def valid_now(self, user: str, code: str) -> bool:
        """The oracle: is `code` right for `user` at NOW, by pyotp on the stored secret and params?"""
        if otp.normalize_recovery_code(code) in self.recovery.get(user, set()):
            return True
        account = self.store.run(lambda tx: tx.get(user))
        if account is None or account.secret is None:
            return False
        secret = self.sealer.open(account.secret, secret_context(user))
        totp = TOTP(base64.b32encode(secret).decode(), digits=account.digits,
                          digest=DIGESTS[account.algorithm], interval=account.period)
        return code.strip() in {totp.at(NOW + k * account.period) for k in range(-WINDOW, WINDOW + 1)}

    def close(self) -> None:
        self.loop.close()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def world():
    made = World()
    yield made
    made.close()


def _codes_for(world: World) -> st.SearchStrategy[str]:
    """Codes that are right now, right a step away, near misses, recovery codes, junk.

    Drawn from what the world knows at draw time (an index with fixed bounds, as
    hypothesis wants), so re-enrollments keep the oracle fed."""

    @st.composite
    def current(draw) -> str:
        secrets = [secret for user in USERS if (secret := (world.secrets.get(user) or [None])[-1])]
        totp = TOTP(secrets[draw(st.integers(0, 1 << 16)) % len(secrets)])
        return totp.at(NOW + draw(st.integers(-2, 2)) * 30)

    @st.composite
    def recovery(draw) -> str:
        codes = sorted(code for codes in world.recovery.values() for code in codes)
        pick = draw(st.integers(0, 1 << 16))  # fixed bounds: hypothesis wants the same draws each time
        return codes[pick % len(codes)] if codes else "aaaa-bbbb-cccc"

    return st.one_of(
        current(), current(), recovery(),
        st.integers(0, 999_999).map(lambda n: f"{n:06d}"), st.integers(0, 10**8 - 1).map(lambda n: f"{n:08d}"),
        SAFE_TEXT, st.sampled_from([" 123456 ", "", "１２３４５６", "12345\u0663"]),
    )


def _value(key: str, codes: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    if key in ("code", "proof"):
        return codes
    if key == "user":
        return st.one_of(st.sampled_from(USERS), SAFE_TEXT)
    if key in ("force", "activate", "dry_run"):
        return st.sampled_from(["0", "1", "2", "", "yes"])
    if key == "digits":
        return st.sampled_from(["6", "8", "7", "", "-6", "99999999999"])
    if key == "period":
        return st.sampled_from(["30", "15", "300", "14", "301", "0", "x"])
    if key == "algorithm":
        return st.sampled_from(["SHA1", "sha256", "SHA512", "MD5", ""])
    if key == "secret":
        return st.one_of(st.sampled_from([pyotp.random_base32(32), "JBSWY3DPEHPK3PXP", "AAAA", "not base32!"]), SAFE_TEXT)
    if key in ("offset", "limit", "last_step"):
        return st.sampled_from(["0", "1", "-1", "200", "201", "999999999", "1e3", ""])
    if key == "recovery_codes":
        return st.sampled_from(["aaaa-bbbb-cccc", "", "x y z"])
    return SAFE_TEXT


CALLERS = st.builds(
    Caller,
    pid=st.integers(1, 1 << 22),
    uid=st.sampled_from([0, 0, 65534, 1000, 4_294_967_294]),
    gid=st.sampled_from([0, 65534, 1000]),
    granted=st.sampled_from([None, None, None, "any", "own", "none"]),
)


def test_service_fuzzing_never_raises_never_accepts_a_wrong_code_and_answers_only_documented_statuses(world):
    codes = _codes_for(world)

    @st.composite
    def requests(draw) -> Request:
        verb = draw(st.one_of(st.just("verify"), st.sampled_from(sorted(VERBS))))  # half are verifications
        required, optional = VERBS[verb]
        keys = set(required) | (draw(st.sets(st.sampled_from(sorted(optional)), max_size=4)) if optional else set())
        return Request(verb, {key: draw(_value(key, codes)) for key in sorted(keys)})

    seen: dict[str, int] = {}

    @settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(request=requests(), caller=CALLERS)
    def run(request: Request, caller: Caller) -> None:
        try:  # what the daemon does first: only requests the parser lets through reach the service
            request = decode_request(encode_request(request.verb, request.fields)[HEADER_SIZE:])
        except ProtocolError:
            return
        reply = world.call(request, caller)  # any exception fails the test
        assert reply.status in DOCUMENTED_STATUSES, reply
        assert reply.status != "UNAVAILABLE", reply  # the store is healthy: no excuse
        seen[reply.status] = seen.get(reply.status, 0) + 1
        if reply.status == "ACCEPTED":
            assert request.verb == "verify", request
            assert world.valid_now(request.user, request.get("code")), request
        world.learn(request, reply)
        for secret in world.secrets.get(request.user, []):  # no reply ever carries a secret it was not asked to issue
            if request.verb not in ("enroll",):
                assert secret not in str(reply.fields), (request, reply)

    run()
    # The oracle was exercised on both sides: codes were accepted and refused.
    assert seen.get("ACCEPTED", 0) >= 3 and seen.get("REJECTED", 0) >= 3, seen


# -- a login through every verdict, and failing closed -------------------------------

ROOT = Caller(1, 0, 0)


def _login_story(world: World) -> list[tuple[str, str]]:
    """Every verdict a login can meet, in order: (status, message) each."""
    user = USERS[0]
    totp = TOTP(world.secrets[user][-1])
    right, recovery = totp.at(NOW), sorted(world.recovery[user])[0]
    wrong = next(code for code in ("000000", "111111", "222222") if code not in {totp.at(NOW + k * 30) for k in range(-2, 3)})
    story = [
        Request("check", {"user": user, "service": "sshd"}),
        Request("verify", {"user": user, "code": wrong, "service": "sshd"}),
        Request("verify", {"user": user, "code": right, "service": "sshd", "rhost": "192.0.2.1"}),
        Request("verify", {"user": user, "code": right, "service": "sudo"}),  # replayed
        Request("verify", {"user": user, "code": recovery, "service": "sudo"}),
        Request("verify", {"user": user, "code": recovery, "service": "sudo"}),  # used up
        Request("check", {"user": "nobody-enrolled"}),
        Request("verify", {"user": "nobody-enrolled", "code": right}),
    ]
    answers = [world.call(request, ROOT) for request in story]
    while answers[-1].status != "LOCKED" and len(answers) < 400:
        answers.append(world.call(Request("verify", {"user": user, "code": wrong}), ROOT))
    answers.append(world.call(Request("check", {"user": user}), ROOT))
    return [(reply.status, reply.fields.get("message", "")) for reply in answers]


def test_a_login_meets_every_verdict_in_order():
    fresh = World()
    try:
        story = _login_story(fresh)
    finally:
        fresh.close()
    statuses = [status for status, _ in story]
    assert statuses[:6] == ["NEED_CODE", "REJECTED", "ACCEPTED", "REJECTED", "ACCEPTED", "REJECTED"], statuses
    assert story[3][1] == "That code was already used; wait for the next one."
    assert statuses[-2:] == ["LOCKED", "LOCKED"], statuses


def test_a_store_error_fails_closed_and_a_bug_reaches_the_daemon_as_an_exception(monkeypatch):
    fresh = World()
    try:
        code = TOTP(fresh.secrets[USERS[0]][-1]).at(NOW)
        verify = Request("verify", {"user": USERS[0], "code": code})

        def broken(*args, **kwargs):
            raise RuntimeError("a bug in the maths")

        monkeypatch.setattr(otp, "match_step", broken)
        with pytest.raises(RuntimeError):  # Daemon._handle answers it UNAVAILABLE "internal error"
            fresh.call(verify, ROOT)
        monkeypatch.undo()
        fresh.store.close()
        for request in (verify, Request("check", {"user": USERS[0]})):
            reply = fresh.call(request, ROOT)
            assert reply.status == "UNAVAILABLE" and "cannot decide" in reply.fields["message"], reply
    finally:
        fresh.close()
