"""SSH login through a real sshd: public key, then a TOTP code from pam_totpd."""

from __future__ import annotations

import re
import sys
import time

import pytest

PROMPT = "Verification code: "


def test_ssh_login_with_key_and_right_code_succeeds(totp):
    result = totp.host.ssh([totp.code()])
    assert result.authenticated, f"{result}\nsshd log:\n{totp.host.log('sshd')[-3000:]}"
    assert result.prompts == [PROMPT]
    assert result.output == f"{totp.host.user}\n"
    assert result.exit_status == 0
    assert totp.host.wait_for_log("sshd", f"Accepted keyboard-interactive/pam for {totp.host.user}")


def test_ssh_login_with_wrong_code_is_refused(totp):
    result = totp.host.ssh([totp.wrong_code()])
    assert not result.authenticated
    assert result.prompts == [PROMPT]
    assert totp.host.wait_for_log("sshd", f"Failed keyboard-interactive/pam for {totp.host.user}")


def test_ssh_replayed_code_is_refused(totp):
    code = totp.code()
    first = totp.host.ssh([code])
    assert first.authenticated, first
    replay = totp.host.ssh([code])
    assert not replay.authenticated
    assert replay.output == ""
    # refused as a replay, not for some other reason (the daemon's audit line)
    assert totp.host.wait_for_log("totpd", "result=replayed")


def test_ssh_login_is_refused_when_the_daemon_is_down(totp):
    totp.stop_daemon()
    result = totp.host.ssh([totp.code()])
    assert not result.authenticated
    assert result.output == ""


def test_openssh_client_login_with_key_and_right_code_succeeds(totp):
    transcript, status = totp.host.openssh(totp.code())
    assert status == 0, transcript
    assert f"({totp.host.user}@127.0.0.1) {PROMPT}" in transcript
    assert transcript.rstrip().endswith(totp.host.user)


def test_openssh_client_login_with_wrong_code_is_refused(totp):
    transcript, status = totp.host.openssh(totp.wrong_code())
    assert status == 255, transcript
    assert "Permission denied (keyboard-interactive)." in transcript


# The stack of packaging/pam.d/sshd: an IGNORE from pam_totpd reaches pam_permit,
# which stands for the key sshd already checked.
SHIPPED = {"control": "[success=done ignore=ignore default=die]", "auth_after": "auth required pam_permit.so\n"}


def test_ssh_from_a_trusted_network_needs_no_code_and_from_another_address_does(make_totp):
    totp = make_totp(config='trusted_networks = ["127.0.0.2/32"]\n', **SHIPPED)
    trusted = totp.host.ssh([], source="127.0.0.2")
    assert trusted.authenticated and trusted.prompts == [], trusted
    assert trusted.output.strip() == totp.host.user
    asked = totp.host.ssh([totp.wrong_code()], source="127.0.0.1")
    assert not asked.authenticated and asked.prompts == ["Verification code: "], asked
    assert "result=trusted_network" in totp.host.log("totpd")


def test_ssh_with_the_shipped_stack_lets_an_unenrolled_account_in_where_policy_allows(make_totp):
    totp = make_totp(config='unenrolled = "allow"\n', **SHIPPED)
    reset = totp.host.run([sys.executable, "-m", "totpd.cli", "--socket", totp.socket, "reset", totp.host.user])
    assert reset.returncode == 0, reset.stderr
    result = totp.host.ssh([])
    assert result.authenticated and result.prompts == [], result  # the key alone, as before enrollment


# -- enroll_at_login -------------------------------------------------------------

def _scan(screen: str, tmp_path, name: str) -> str:
    """The secret a phone that does not invert reads off `screen` (what the client showed),
    on a light, a dark and a palette-swapped light theme alike."""
    import urllib.parse

    import terminal

    (tmp_path / name).mkdir(exist_ok=True)
    uri = terminal.read_on_every_theme(screen.replace("\r", ""), tmp_path / name)
    assert uri.startswith("otpauth://totp/"), uri
    return urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0]


def _unenrolled_with_enroll_at_login(make_totp, issuer: str = ""):
    totp = make_totp(config="enroll_at_login = true\n" + (f'issuer = "{issuer}"\n' if issuer else ""), **SHIPPED)
    reset = totp.host.run([sys.executable, "-m", "totpd.cli", "--socket", totp.socket, "reset", totp.host.user])
    assert reset.returncode == 0, reset.stderr
    return totp


def test_a_new_account_enrolls_at_its_first_ssh_login_by_scanning_the_qr_code_and_its_next_login_needs_a_code(
    make_totp, tmp_path
):
    import pyotp

    totp = _unenrolled_with_enroll_at_login(make_totp)
    found: dict[str, str] = {}

    def answer(prompt: str) -> str:
        if prompt.endswith("Code from the app: "):
            found["secret"] = _scan(prompt, tmp_path, "paramiko")
            found["code"] = pyotp.TOTP(found["secret"]).now()
            return found["code"]
        found["recovery"] = prompt
        return ""

    first = totp.host.ssh(answer)
    assert first.authenticated, f"{first}\nsshd log:\n{totp.host.log('sshd')[-3000:]}"
    assert first.output.strip() == totp.host.user
    assert len(first.prompts) == 2 and first.prompts[1].endswith("Press Enter to continue: ")
    key = "".join(line for line in first.prompts[0].splitlines() if re.fullmatch(r"  ([A-Z2-7]{4} ?)+", line)).replace(" ", "")
    assert key == found["secret"]  # the key for typing in is the one in the QR code
    codes = re.findall(r"\b[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}\b", found["recovery"])
    assert len(codes) == 10, found["recovery"]
    assert "result=confirmed" in totp.host.log("totpd") and found["secret"] not in totp.host.log("totpd")
    # The second login asks for a code, as for any enrolled account: a wrong one is refused,
    # the next step's code (the first one was used at enrollment) lets it in.
    refused = totp.host.ssh([totp.wrong_code()])
    assert not refused.authenticated and refused.prompts == [PROMPT], refused
    again = totp.host.ssh([pyotp.TOTP(found["secret"]).at(time.time() + 30)])
    assert again.authenticated and again.prompts == [PROMPT], again


# A short issuer's two copies of the code go side by side, a long one's one above the other.
@pytest.mark.parametrize("issuer", ["web", "build-server-03.example.com"])
def test_openssh_client_enrolls_at_login_and_sees_the_qr_code_key_and_recovery_codes(make_totp, tmp_path, issuer):
    import pyotp

    totp = _unenrolled_with_enroll_at_login(make_totp, issuer)
    seen: list[str] = []

    def answer(screen: str) -> str:
        seen.append(screen)
        if screen.rstrip().endswith("Code from the app:"):
            return pyotp.TOTP(_scan(screen, tmp_path, "openssh")).now()
        return ""

    transcript, status = totp.host.openssh_dialog(answer)
    assert status == 0, transcript
    assert len(seen) == 2 and f"({totp.host.user}@127.0.0.1) Two-factor login is required" in seen[0]
    widest = max(len(line.rstrip("\r")) for line in seen[0].splitlines() if "\u2588" in line)
    assert widest <= 80 and (widest > 60) == (issuer == "web"), seen[0]  # side by side, or one above the other
    assert len(re.findall(r"\b[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}\b", seen[1])) == 10, seen[1]
    assert transcript.rstrip().endswith(totp.host.user)


def test_without_enroll_at_login_an_unenrolled_account_is_refused_with_no_qr_code(make_totp):
    totp = make_totp(**SHIPPED)
    reset = totp.host.run([sys.executable, "-m", "totpd.cli", "--socket", totp.socket, "reset", totp.host.user])
    assert reset.returncode == 0, reset.stderr
    result = totp.host.ssh([])
    assert not result.authenticated and result.prompts == [], result
