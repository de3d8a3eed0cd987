"""A lockout, whichever door reached it, is announced the same way (totpd/judging.py):
one `locked` mail (a real SMTP server, aiosmtpd), one D-Bus `Locked` signal on a real
private bus, and the account's remembered hosts forgotten; a proof sent over D-Bus is
audited as D-Bus. Every door that judges a code is tried, on the socket and on D-Bus."""

from __future__ import annotations

import queue
import time

import pyotp
import pytest
from dbus_fast import MessageType, Variant

import wire
from daemonproc import wrong_code
from privatebus import IFACE, NOBODY, gdbus_as, gdbus_error
from test_notify import Inbox, free_port, smtp_settings

OWN = "org.totpd.manage-own"
RHOST = "192.0.2.44"


@pytest.fixture
def inbox():
    from aiosmtpd.controller import Controller

    mail = Inbox()
    controller = Controller(mail, hostname="127.0.0.1", port=free_port())
    controller.start()
    mail.port = controller.port
    yield mail
    controller.stop()


def remember_a_host(daemon, user: str, secret: str) -> None:
    """A root PAM login with a code from RHOST: its next logins from there skip the code."""
    code = pyotp.TOTP(secret).now()
    assert wire.request(daemon.socket_path, "verify", user=user, code=code, service="sshd", rhost=RHOST).status == "ACCEPTED"
    assert check(daemon, user) == "ACCEPTED"


def check(daemon, user: str) -> str:
    return wire.request(daemon.socket_path, "check", user=user, service="sshd", rhost=RHOST).status


# Each door: lock an account through it with two wrong attempts (max_failures = 2), after
# a host was remembered for it where the door allows one. Returns (account, the service
# the Locked signal names, whether a host was remembered).


def by_verify(daemon, bus):
    secret = daemon.enroll("alice")
    remember_a_host(daemon, "alice", secret)
    for _ in range(2):
        wire.request(daemon.socket_path, "verify", user="alice", code=wrong_code(secret), service="sudo")
    return "alice", "sudo", True


def by_resync(daemon, bus):
    secret = daemon.enroll("alice")
    remember_a_host(daemon, "alice", secret)
    for _ in range(2):
        answer = wire.request(daemon.socket_path, "resync", user="alice", code=wrong_code(secret), next_code="000000")
        assert answer.status in ("REJECTED", "LOCKED"), answer
    return "alice", "", True


def by_confirm(daemon, bus):
    secret = daemon.enroll("alice")
    added = wire.request(daemon.socket_path, "token_add", user="alice", token="second")  # pending its first code
    assert added.status == "OK" and added.fields["pending"] == "1", added
    remember_a_host(daemon, "alice", secret)
    for _ in range(2):
        wire.request(daemon.socket_path, "confirm", user="alice", code=wrong_code(added.fields["secret"]))
    return "alice", "", True


def by_login_confirm(daemon, bus):
    # An account that enrolls at login has no active token, so no host can be remembered for it.
    login = {"user": "alice", "service": "sshd", "rhost": RHOST}
    shown = wire.request(daemon.socket_path, "login_enroll", **login)
    assert shown.status == "NEED_CODE", shown
    for _ in range(2):
        wire.request(daemon.socket_path, "login_confirm", code="000000", **login)
    return "alice", "sshd", False


def by_token_add_proof(daemon, bus):
    secret = daemon.enroll("nobody")
    remember_a_host(daemon, "nobody", secret)
    for _ in range(2):
        status, _ = daemon.call_as(NOBODY, "token_add", user="nobody", token="second", proof=wrong_code(secret))
        assert status == "REJECTED"
    return "nobody", "totpctl", True


def by_dbus_confirm(daemon, bus):
    secret = daemon.enroll("alice")
    added = bus.totpd("AddToken", "sa{sv}", "alice", {"token": Variant("s", "second")})
    assert added.message_type is MessageType.METHOD_RETURN, added.body
    remember_a_host(daemon, "alice", secret)
    for _ in range(2):
        refused = bus.totpd("ConfirmEnrollment", "ss", "alice", wrong_code(added.body[1]))
        assert refused.message_type is MessageType.ERROR
    return "alice", "dbus", True


def by_dbus_token_add_proof(daemon, bus):
    secret = daemon.enroll("nobody")
    remember_a_host(daemon, "nobody", secret)
    bus.polkit_mock("SetAllowed", "as", [OWN])
    for _ in range(2):
        options = f"{{'token': <'second'>, 'proof': <'{wrong_code(secret)}'>}}"
        assert gdbus_error(gdbus_as(NOBODY, bus, "AddToken", "nobody", options)) == IFACE + ".Error.CodeRejected"
    return "nobody", "dbus", True


DOORS = {
    "verify": by_verify,
    "resync": by_resync,
    "confirm": by_confirm,
    "login_confirm": by_login_confirm,
    "token_add_proof": by_token_add_proof,
    "dbus_confirm": by_dbus_confirm,
    "dbus_token_add_proof": by_dbus_token_add_proof,
}


def signals_after(subscriber, wanted: str, settle: float = 0.5) -> list[tuple[str, list]]:
    """Every signal up to the first named `wanted`, and those that came within `settle` after it."""
    seen: list[tuple[str, list]] = []
    deadline = time.monotonic() + 10
    while not any(name == wanted for name, _ in seen) and time.monotonic() < deadline:
        try:
            seen.append(subscriber.signals.get(timeout=0.1))
        except queue.Empty:
            pass
    time.sleep(settle)
    while not subscriber.signals.empty():
        seen.append(subscriber.signals.get_nowait())
    return seen


@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_lockout_through_any_door_is_mailed_and_signalled_once_and_forgets_remembered_hosts(
    door, bus, totpd_on, subscriber, inbox
):
    daemon = totpd_on(
        bus, smtp=smtp_settings(inbox.port, events=["locked"]), max_failures=2, backoff_after=100,
        remember_host=3600, self_enroll=True, enroll_at_login=True,
    )
    user, service, remembered = DOORS[door](daemon, bus)
    locked = [args for name, args in signals_after(subscriber, "Locked") if name == "Locked"]
    assert locked == [[user, service]], daemon.log()
    inbox.wait(1)
    time.sleep(0.3)
    subjects = [line for _, body in inbox.messages for line in body.splitlines() if line.startswith("Subject:")]
    assert len(subjects) == 1 and subjects[0].startswith(f"Subject: Account {user} locked on "), subjects
    assert inbox.messages[0][0] == [f"{user}@example.test"]
    assert daemon.ctl("unlock", user).returncode == 0
    if remembered:
        assert check(daemon, user) == "NEED_CODE"  # the host remembered before the lockout must prove itself again


def test_a_proof_sent_over_dbus_is_audited_as_dbus(bus, totpd_on):
    daemon = totpd_on(bus, self_enroll=True)
    secret = daemon.enroll("nobody")
    bus.polkit_mock("SetAllowed", "as", [OWN])
    wrong = f"{{'token': <'second'>, 'proof': <'{wrong_code(secret)}'>}}"
    assert gdbus_error(gdbus_as(NOBODY, bus, "AddToken", "nobody", wrong)) == IFACE + ".Error.CodeRejected"
    right = f"{{'token': <'third'>, 'proof': <'{pyotp.TOTP(secret).now()}'>}}"
    assert gdbus_as(NOBODY, bus, "AddToken", "nobody", right).returncode == 0
    deadline = time.monotonic() + 5
    while "result=pending" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    proofs = [line for line in daemon.log().splitlines() if "event=verify user=nobody" in line]
    assert len(proofs) == 2 and all("service=dbus" in line and "uid=65534" in line for line in proofs), proofs
    assert "result=rejected" in proofs[0] and "result=accepted" in proofs[1]
    assert "service=totpctl" not in daemon.log()
