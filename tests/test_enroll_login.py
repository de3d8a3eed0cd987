"""Enrollment at login (totpd/enroll_login.py): a real Service on a real SQLite store,
with a clock the test moves; the QR code in the reply is decoded with zbarimg."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pyotp
import pytest

import terminal
from totpd.audit import Audit
from totpd.config import Config, ServicePolicy
from totpd.protocol import HEADER_SIZE, Reply, Request, decode_reply, encode_reply
from totpd.sealing import Sealer, key_check, load_key
from totpd.service import Caller, Service
from totpd.store import open_store

ROOT = Caller(1, 0, 0)
USER = Caller(2, 1000, 1000)
NOW = 1_800_000_000.0


class World:
    def __init__(self, directory: Path, **config: object) -> None:
        self.now = NOW
        self.config = Config(
            database=str(directory / "totpd.db"), key_file=str(directory / "master.key"), check_accounts=False,
            audit="stderr", recovery_codes=4, dbus="off", **{"issuer": "build-server-03.example.com", **config},  # type: ignore[arg-type]
        )
        self.sealer = Sealer(load_key(self.config.key_file, create=True))
        self.store = open_store(self.config.database, key_check(self.sealer))
        self.service = Service(self.config, self.store, self.sealer, Audit("stderr"), clock=lambda: self.now)
        self.loop = asyncio.new_event_loop()

    def call(self, verb: str, caller: Caller = ROOT, **fields: str) -> Reply:
        fields.setdefault("user", "alice")
        fields.setdefault("service", "sshd")
        reply = self.loop.run_until_complete(self.service.handle(Request(verb, fields), caller))
        return decode_reply(encode_reply(reply)[HEADER_SIZE:])  # as the wire carries it

    def close(self) -> None:
        self.service.close()
        self.loop.close()
        self.store.close()


@pytest.fixture
def directory():
    path = Path(tempfile.mkdtemp(prefix="totpd-enroll-login-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def world(directory):
    made = World(directory, enroll_at_login=True)
    yield made
    made.close()


def scanned(reply: Reply, tmp_path: Path) -> str:
    """The otpauth URI a phone that does not invert reads off the lines as pam_totpd shows
    them (as they are, no colour), on a light, a dark and a palette-swapped light theme."""
    return terminal.read_on_every_theme("\n".join(value for _, value in reply.lines), tmp_path)


def secret_of(uri: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0]


def test_a_required_unenrolled_account_enrolls_at_login_and_then_needs_a_code(world, tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="totpd")  # the audit's info lines too
    assert world.call("check").status == "ENROLL"
    shown = world.call("login_enroll")
    assert shown.status == "NEED_CODE" and shown.fields == {}
    assert all("\x1b" not in value for _, value in shown.lines)
    uri = scanned(shown, tmp_path)
    secret = secret_of(uri)
    assert uri.startswith("otpauth://totp/") and "build-server-03.example.com" in uri
    typed_key = next(value for key, value in shown.lines if re.fullmatch(r"  ([A-Z2-7]{4} ?)+", value))
    assert typed_key.replace(" ", "") == secret  # the key for typing in is the one in the QR code
    totp = pyotp.TOTP(secret)
    wrong = next(c for c in ("000000", "111111") if c not in {totp.at(NOW + k * 30) for k in (-1, 0, 1)})
    assert world.call("login_confirm", code=wrong).status == "REJECTED"
    done = world.call("login_confirm", code=totp.at(NOW))
    assert done.status == "ACCEPTED"
    codes = re.findall(r"[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}", " ".join(value for _, value in done.lines))
    assert len(codes) == 4
    assert world.call("check").status == "NEED_CODE"  # the next login needs a code
    assert world.call("verify", code=totp.at(NOW)).status == "REJECTED"  # the first code was this login's
    assert world.call("verify", code=codes[0]).status == "ACCEPTED"  # a shown recovery code works
    assert world.call("login_enroll").status == "DENIED"  # no second enrollment at login
    world.service.audit.flush()
    logged = capfd.readouterr().err
    assert re.search(r"event=check user=alice .*result=enroll_offered", logged)
    assert re.search(r"event=login_enroll user=alice .*result=pending\n", logged)
    assert re.search(r"event=login_confirm user=alice .*result=confirmed", logged)
    assert secret not in logged and not any(code in logged for code in codes)


def test_only_roots_pam_login_may_enroll_and_only_where_it_is_on(world, directory):
    dbus_admin = Caller(3, 0, 0, granted="any")  # root over D-Bus: an admin, not the PAM module
    assert world.call("check", caller=dbus_admin).status == "DENIED"
    assert world.call("login_enroll", caller=dbus_admin).status == "FORBIDDEN"
    assert world.call("login_enroll", caller=USER).status == "FORBIDDEN"
    assert world.call("login_confirm", caller=USER, code="123456").status == "FORBIDDEN"
    (directory / "other").mkdir()
    off = World(directory / "other", enroll_at_login=True, services={"sudo": ServicePolicy(enroll_at_login=False)})
    try:
        assert off.call("check", service="sudo", user="bob").status == "DENIED"
        assert off.call("login_enroll", service="sudo", user="bob").status == "DENIED"
        assert off.call("check", service="sshd", user="bob").status == "ENROLL"
    finally:
        off.close()


def test_one_pending_enrollment_per_account_shown_again_until_it_expires(world, tmp_path):
    first = secret_of(scanned(world.call("login_enroll"), tmp_path))
    world.now += 300
    assert secret_of(scanned(world.call("login_enroll"), tmp_path)) == first  # the app already has it
    world.now += 301  # past enroll_at_login_timeout (600 s) since it started
    assert world.call("login_confirm", code=pyotp.TOTP(first).at(world.now)).status == "DENIED"
    second = secret_of(scanned(world.call("login_enroll"), tmp_path))
    assert second != first
    assert world.call("login_confirm", code=pyotp.TOTP(first).at(world.now)).status == "REJECTED"
    assert world.call("login_confirm", code=pyotp.TOTP(second).at(world.now)).status == "ACCEPTED"


def test_after_a_restart_a_pending_enrollment_started_at_login_counts_as_expired(world, directory, tmp_path):
    secret = secret_of(scanned(world.call("login_enroll"), tmp_path))
    world.close()
    again = World(directory, enroll_at_login=True)
    try:
        assert again.call("login_confirm", code=pyotp.TOTP(secret).at(NOW)).status == "DENIED"
        assert secret_of(scanned(again.call("login_enroll"), tmp_path)) != secret
    finally:
        again.close()
        world.close = lambda: None  # type: ignore[method-assign]


def test_wrong_first_codes_lock_the_account_and_a_locked_one_is_shown_no_qr_code(directory, tmp_path):
    world = World(directory, enroll_at_login=True, max_failures=3, backoff_after=3)
    try:
        secret = secret_of(scanned(world.call("login_enroll"), tmp_path))
        totp = pyotp.TOTP(secret)
        wrong = next(c for c in ("000000", "111111", "222222") if c not in {totp.at(NOW + k * 30) for k in (-1, 0, 1)})
        assert [world.call("login_confirm", code=wrong).status for _ in range(3)] == ["REJECTED", "REJECTED", "LOCKED"]
        again = world.call("login_enroll")
        assert again.status == "LOCKED" and again.lines == () and "totpctl unlock alice" in again.message
        assert world.call("login_confirm", code=totp.at(NOW)).status == "LOCKED"
    finally:
        world.close()


def test_an_issuer_too_long_for_two_copies_of_the_code_in_one_reply_is_refused_and_logged(directory, caplog):
    """Two copies of the code (one per terminal theme) must fit the 64 lines of a reply:
    a URI past QR version 9 does not, and the log names the key to shorten."""
    world = World(directory, enroll_at_login=True, issuer="x" * 90)
    try:
        answer = world.call("login_enroll")
        assert answer.status == "UNAVAILABLE" and answer.lines == ()
        assert "shorten 'issuer'" in caplog.text
    finally:
        world.close()
