"""SSH login through a real sshd: public key, then a TOTP code from pam_totpd."""

from __future__ import annotations

import sys

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
