"""The service (totpd/service.py): one entry, one dispatch table, failing closed.

Against callers who are not the PAM module: a real daemon spoken to over its
socket, as root (the PAM module's view) or as an ordinary uid (anyone who can reach
the socket). And property-based fuzzing (hypothesis) of a real Service on a real
SQLite store with a fixed clock, so that the oracle (pyotp, independent of
totpd/otp.py) knows exactly which codes are valid: the service never raises, answers
only with a status of docs/protocol.md, and never says ACCEPTED for a wrong code.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from totpd import otp
from totpd.audit import Audit
from totpd.config import Config
from totpd.errors import ProtocolError
from totpd.protocol import (
    HEADER_SIZE, VERBS, Reply, Request, decode_request, encode_request,
)
from totpd.sealing import Sealer, load_key
from totpd.sealing import key_check, secret_context
from totpd.service import Caller, Service, Session
from totpd.store import open_store

import wire
from daemonproc import NOBODY, RECOVERY_SHAPED, flood_as
from test_protocol import DOCUMENTED_STATUSES, SAFE_TEXT

import pamdriver  # noqa: E402

def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def pam_login(daemon, tmp_path, user: str, code: str) -> int:
    module = Path(__file__).resolve().parent.parent / "pam" / "pam_totpd.so"
    confdir = str(tmp_path / "pam.d")
    pamdriver.write_confdir(confdir, "sshd", [f"auth required {module} socket={daemon.socket_path}"])
    return pamdriver.authenticate("sshd", user, confdir, code, rhost="192.0.2.1").retcode


# -- expensive work is bounded --------------------------------------------------------


def test_a_flood_of_argon2_shaped_requests_from_one_uid_does_not_delay_root_logins(make_daemon, tmp_path):
    daemon = make_daemon(check_accounts=True, unenrolled="allow", max_connections_per_uid=64)
    daemon.enroll("nobody")  # the attacker's own account, with recovery codes to try
    secret = daemon.enroll("root")

    def root_check() -> None:  # an unenrolled account: NSS lookups, the work logins share with argon2 today
        assert wire.request(daemon.socket_path, "check", user="daemon", service="sshd").status == "IGNORE"

    baseline = statistics.median(timed(root_check) for _ in range(7))
    hostile = [("confirm", {"user": "nobody", "code": "123456"})] * 16
    hostile += [("verify", {"user": "nobody", "code": RECOVERY_SHAPED})] * 16
    attack = flood_as(NOBODY, daemon.socket_path, hostile)
    time.sleep(0.05)  # the flood is in the daemon: 32 requests, each asking for argon2 work
    login = timed(lambda: _accepted_login(daemon, tmp_path, secret))
    during = [timed(root_check) for _ in range(5)]
    out, err = attack.communicate(timeout=120)
    assert attack.returncode == 0, err
    statuses = json.loads(out)
    assert set(statuses[:16]) == {"NOT_ENROLLED"}  # no pending enrollment: refused before any hashing
    assert set(statuses[16:]) <= {"REJECTED", "LOCKED", "BUSY"}
    assert max(during) - baseline < 0.1, (baseline, during)  # the worst, not a typical, delay
    assert login < 0.1 + baseline * 4, (baseline, login)


def _accepted_login(daemon, tmp_path, secret: str) -> None:
    assert pam_login(daemon, tmp_path, "root", pyotp.TOTP(secret).now()) == pamdriver.PAM_SUCCESS


# -- context a non-root caller supplies is never believed -----------------------------


def test_a_non_root_caller_cannot_pick_a_service_policy_nor_forge_the_audit_context(make_daemon):
    daemon = make_daemon(check_accounts=True, unenrolled="deny", services={"lenient": {"unenrolled": "allow"}})
    status, _ = daemon.call_as(NOBODY, "check", user="nobody", service="lenient", rhost="198.51.100.7")
    assert status == "DENIED"  # the global rule, not the one of the service it named
    line = next(line for line in daemon.log().splitlines() if "event=check" in line and "uid=65534" in line)
    assert "service=" not in line and "rhost=" not in line


# -- fuzzing the service -------------------------------------------------------------------

NOW = 1_700_000_015.0  # a fixed clock: the oracle knows every valid code
WINDOW = 1
HOTP_WINDOW = Config().hotp_window
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
        if account is None:
            return False
        good: set[str] = set()
        for token in account.tokens:
            secret = base64.b32encode(self.sealer.open(token.secret, secret_context(user))).decode()
            if token.type == "hotp":
                hotp = pyotp.HOTP(secret, digits=token.digits, digest=DIGESTS[token.algorithm])
                good |= {hotp.at(value) for value in range(token.last_step + 1, token.last_step + 2 + HOTP_WINDOW)}
            else:
                totp = TOTP(secret, digits=token.digits, digest=DIGESTS[token.algorithm], interval=token.period)
                good |= {totp.at(NOW + (token.skew + k) * token.period) for k in range(-WINDOW, WINDOW + 1)}
        return code.strip() in good

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

    @settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
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

        monkeypatch.setattr(otp, "match_any", broken)
        with pytest.raises(RuntimeError):  # Server._handle answers it UNAVAILABLE "internal error"
            fresh.call(verify, ROOT)
        monkeypatch.undo()
        fresh.store.close()
        for request in (verify, Request("check", {"user": USERS[0]})):
            reply = fresh.call(request, ROOT)
            assert reply.status == "UNAVAILABLE" and "cannot decide" in reply.fields["message"], reply
    finally:
        fresh.close()


# -- the layer below the one entry ----------------------------------------------------------

HANDLERS = {"login", "enroll_login", "enrollment", "tokens", "admin", "recovery_codes", "bulk_import"}


def _imports_of(module: Path) -> set[str]:
    """The totpd modules `module` imports (`from . import x` and `from .x import y`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return names


def test_the_handlers_sit_side_by_side_below_the_service_and_none_imports_another():
    package = Path(__file__).resolve().parent.parent / "totpd"
    imports = {path.stem: _imports_of(path) for path in package.glob("*.py")}
    assert {name for name, imported in imports.items() if "handling" in imported} == HANDLERS | {"judging", "service"}
    for name in HANDLERS:
        assert not imports[name] & (HANDLERS | {"service"}), name
    assert HANDLERS <= imports["service"]
    assert not imports["judging"] & HANDLERS and not imports["handling"] & (HANDLERS | {"judging"})


def test_a_doors_grant_is_asked_once_the_account_is_resolved_and_decides_the_caller():
    """D-Bus asks polkit through this grant (dbusapi.py), after the identity step: it sees
    whose account the request names, and the handler sees the caller it returns."""
    fresh = World()
    seen: list[tuple[str, int | None]] = []

    def granting(granted: str):
        async def grant(identified: Request) -> Caller:
            seen.append((identified.user, identified.user_uid))
            return Caller(7, NOBODY, -1, granted=granted)

        return grant

    def status_of_nobody(granted: str) -> Reply:
        asked = fresh.service.handle(Request("status", {"user": "nobody"}), Caller(7, NOBODY, -1, "none"), grant=granting(granted))
        return fresh.loop.run_until_complete(asked)

    try:
        assert status_of_nobody("none").status == "FORBIDDEN"
        assert status_of_nobody("own").status == "NOT_ENROLLED"  # allowed on its own account: the handler answers
        assert seen == [("nobody", NOBODY)] * 2
    finally:
        fresh.close()
