"""Mail notifications against a real SMTP server (aiosmtpd), and a dead one."""

from __future__ import annotations

import socket
import time

import pyotp
import pytest
from aiosmtpd.controller import Controller

import wire


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((list(envelope.rcpt_tos), envelope.content.decode("utf-8", "replace")))
        return "250 OK"

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[list[str], str]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def smtp_settings(port: int, **extra) -> dict:
    return {"host": "127.0.0.1", "port": port, "from": "totpd@example.test", "starttls": False,
            "address_template": "{user}@example.test", "timeout": 2.0, **extra}


def test_enrollment_reset_recovery_code_use_and_lockout_send_mail(make_daemon, smtp_server):
    controller, inbox = smtp_server
    daemon = make_daemon(smtp=smtp_settings(controller.port), max_failures=2, backoff_after=2)
    out = daemon.enroll_json("alice")
    assert wire.request(daemon.socket_path, "verify", user="alice", code=out["recovery_codes"][0], service="sshd", rhost="192.0.2.5").status == "ACCEPTED"
    for _ in range(2):
        wire.request(daemon.socket_path, "verify", user="alice", code="000001", service="sudo")
    assert daemon.ctl("reset", "alice").returncode == 0
    messages = inbox.wait(4)
    assert len(messages) == 4, daemon.log()
    subjects = [next(line for line in body.splitlines() if line.startswith("Subject:")) for _, body in messages]
    assert "New two-factor authenticator for alice" in subjects[0]
    assert "Recovery code used for alice" in subjects[1] and "from 192.0.2.5" in messages[1][1]
    assert "Account alice locked" in subjects[2]
    assert "removed for alice" in subjects[3]
    assert all(recipients == ["alice@example.test"] for recipients, _ in messages)
    for _, body in messages:
        assert out["secret"] not in body and out["recovery_codes"][0] not in body


def test_an_address_file_maps_accounts_and_events_can_be_chosen(make_daemon, smtp_server, tmp_path):
    controller, inbox = smtp_server
    addresses = tmp_path / "addresses"
    addresses.write_text("# account address\nbob bob.smith@example.test\n")
    daemon = make_daemon(smtp=smtp_settings(controller.port, address_template="", address_file=str(addresses), events=["reset"]))
    daemon.enroll("bob")
    daemon.ctl("reset", "bob")
    messages = inbox.wait(1)
    time.sleep(0.3)
    assert len(inbox.messages) == 1 and messages[0][0] == ["bob.smith@example.test"]


def test_a_dead_smtp_server_neither_slows_nor_fails_a_login(make_daemon):
    # A listener that accepts TCP and never speaks: the worst kind of dead server.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        daemon = make_daemon(smtp=smtp_settings(silent.getsockname()[1], timeout=3.0))
        out = daemon.enroll_json("alice")
        started = time.monotonic()
        reply = wire.request(daemon.socket_path, "verify", user="alice", code=out["recovery_codes"][0], service="sshd")
        elapsed = time.monotonic() - started
        assert reply.status == "ACCEPTED"
        assert elapsed < 1.0, elapsed
        secret = out["secret"]
        assert wire.request(daemon.socket_path, "verify", user="alice", code=pyotp.TOTP(secret).now()).status == "ACCEPTED"
        deadline = time.monotonic() + 10
        while "not sent" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "notification enroll for alice not sent" in daemon.log()
    finally:
        silent.close()


def test_an_enrollment_at_login_is_mailed_without_its_secret_or_codes(make_daemon, smtp_server):
    import re

    controller, inbox = smtp_server
    daemon = make_daemon(smtp=smtp_settings(controller.port), enroll_at_login=True)
    login = {"user": "bob", "service": "sshd", "rhost": "192.0.2.9"}
    shown = wire.request(daemon.socket_path, "login_enroll", **login)  # as root: the PAM module's view
    assert shown.status == "NEED_CODE", shown
    secret = next(text for _, text in shown.lines if re.fullmatch(r"  ([A-Z2-7]{4} ?)+", text)).replace(" ", "")
    done = wire.request(daemon.socket_path, "login_confirm", code=pyotp.TOTP(secret).now(), **login)
    assert done.status == "ACCEPTED", done
    [(recipients, body)] = inbox.wait(1)
    assert recipients == ["bob@example.test"] and "New two-factor authenticator for bob" in body
    import email

    text = email.message_from_string(body).get_payload(decode=True).decode()
    assert "bob on " in text and "(service sshd, from 192.0.2.9)" in text, text
    codes = re.findall(r"[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}", " ".join(text for _, text in done.lines))
    assert codes and secret not in body and not any(code in body for code in codes)
