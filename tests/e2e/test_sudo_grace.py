"""sudo_grace through a real sshd and a real sudo: sudo inside the SSH session whose
login took a code asks none within the grace; after it, in another session, and after
a failure, sudo asks again."""

from __future__ import annotations

import json
import time
from typing import Callable

import pyotp

from conftest import SshSession, TotpSetup, entry_point_argv
from test_sshd import SHIPPED

PROMPT = "Verification code: "


TRUSTED = "127.0.0.2"  # a login from there takes no code (trusted_networks)


def grace_setup(make_totp: Callable[..., TotpSetup], seconds: int) -> TotpSetup:
    """The test user enrolled, `[services.sudo] sudo_grace = seconds`, the shipped
    stacks, and sshd's session stack opening the audit session first, as Debian's does."""
    setup = make_totp(config=f'trusted_networks = ["{TRUSTED}/32"]\n[services.sudo]\nsudo_grace = {seconds}\n', **SHIPPED)
    stack = setup.host.workdir / "etc" / "pam.d" / "sshd"
    setup.host.write_pam_service("sshd", "session required pam_loginuid.so\n" + stack.read_text())
    return setup


def next_code(setup: TotpSetup) -> str:
    """The code of the next time step (inside the window): a second code in the same step."""
    return pyotp.TOTP(setup.secret).at(time.time() + 30)


def sudo(session: SshSession, answer: str = "") -> tuple[bool, int]:
    """`sudo true` inside the SSH session, `answer` on stdin: (was a code asked, exit status)."""
    done = session.run("sudo -S -k true", input=answer + "\n" if answer else "")
    return PROMPT in done.stderr, done.returncode


def status(setup: TotpSetup) -> dict[str, object]:
    done = setup.host.run(entry_point_argv("totpd.cli:main", "--socket", setup.socket, "status", "--json",
                                           setup.host.user))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sudo_in_the_same_ssh_session_inside_the_grace_asks_no_code(make_totp):
    setup = grace_setup(make_totp, 300)
    with setup.host.ssh_session([setup.code()]) as session:
        assert session.result.authenticated, session.result.error
        assert sudo(session) == (False, 0)
        assert sudo(session) == (False, 0)  # as often as needed inside the grace
    assert setup.host.wait_for_log("totpd", "result=accepted_grace")
    assert "event=check user=totptest service=sudo uid=0 result=accepted_grace" in setup.host.log("totpd")


def test_totpctl_status_shows_the_grace_while_its_session_lasts(make_totp):
    setup = grace_setup(make_totp, 300)
    with setup.host.ssh_session([setup.code()]) as session:
        assert session.result.authenticated, session.result.error
        shown = status(setup)
        assert shown["sudo_graces"] == 1 and time.time() + 250 < shown["sudo_grace_until"] <= time.time() + 300  # type: ignore[operator]
        text = setup.host.run(entry_point_argv("totpd.cli:main", "--socket", setup.socket, "status", setup.host.user))
        assert "sudo grace:      1 session(s), the newest until " in text.stdout, text.stdout
    deadline = time.monotonic() + 10  # sshd's monitor exits just after the client hangs up
    while status(setup)["sudo_graces"] != 0:
        assert time.monotonic() < deadline, "the grace outlived its SSH session"
        time.sleep(0.1)


def test_sudo_after_the_grace_asks_for_a_code(make_totp):
    seconds = 6
    setup = grace_setup(make_totp, seconds)
    with setup.host.ssh_session([setup.code()]) as session:
        accepted = time.monotonic()
        assert session.result.authenticated, session.result.error
        assert sudo(session) == (False, 0)
        time.sleep(max(0.0, accepted + seconds + 1 - time.monotonic()))
        assert sudo(session) == (True, 1)


def test_sudo_in_a_second_ssh_session_asks_for_a_code(make_totp):
    setup = grace_setup(make_totp, 300)
    with setup.host.ssh_session([setup.code()]) as first:
        assert first.result.authenticated, first.result.error
        with setup.host.ssh_session([], source=TRUSTED) as second:
            assert second.result.authenticated and second.result.prompts == [], second.result
            assert sudo(first) == (False, 0)
            assert sudo(second) == (True, 1)


def test_a_failure_for_the_account_ends_the_grace_of_its_session(make_totp):
    setup = grace_setup(make_totp, 300)
    with setup.host.ssh_session([setup.code()]) as session:
        assert session.result.authenticated, session.result.error
        refused = setup.host.ssh([setup.wrong_code()])  # another login, a wrong code
        assert not refused.authenticated
        assert setup.host.wait_for_log("totpd", "result=rejected")
        assert sudo(session) == (True, 1)
        assert status(setup)["sudo_graces"] == 0


def test_a_code_given_to_sudo_starts_a_grace_in_its_session(make_totp):
    setup = grace_setup(make_totp, 300)
    with setup.host.ssh_session([setup.code()]) as session:
        assert session.result.authenticated, session.result.error
        assert not setup.host.ssh([setup.wrong_code()]).authenticated  # ends the login's grace
        assert setup.host.wait_for_log("totpd", "result=rejected")
        assert sudo(session) == (True, 1)
        assert sudo(session, next_code(setup)) == (True, 0)
        assert sudo(session) == (False, 0)


def test_an_unlock_of_the_account_ends_the_grace_of_its_session(make_totp):
    setup = grace_setup(make_totp, 300)
    with setup.host.ssh_session([setup.code()]) as session:
        assert session.result.authenticated, session.result.error
        unlocked = setup.host.run(entry_point_argv("totpd.cli:main", "--socket", setup.socket, "unlock",
                                                   setup.host.user))
        assert unlocked.returncode == 0, unlocked.stderr
        assert sudo(session) == (True, 1)
