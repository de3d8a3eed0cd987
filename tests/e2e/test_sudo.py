"""sudo confirmation through a real sudo: a TOTP code from pam_totpd before root."""

from __future__ import annotations

PROMPT = "Verification code: "
REFUSED = "sudo: 1 incorrect password attempt"


def test_sudo_with_right_code_runs_the_command(totp):
    result = totp.host.sudo(["id", "-u"], totp.code())
    assert (result.returncode, result.stdout) == (0, "0\n"), result
    assert PROMPT in result.stderr


def test_sudo_with_wrong_code_is_refused(totp):
    result = totp.host.sudo(["id", "-u"], totp.wrong_code())
    assert result.returncode == 1, result
    assert REFUSED in result.stderr
    assert result.stdout == ""


def test_sudo_replayed_code_is_refused(totp):
    code = totp.code()
    assert totp.host.sudo(["true"], code).returncode == 0
    replay = totp.host.sudo(["id", "-u"], code)
    assert replay.returncode == 1, replay
    assert REFUSED in replay.stderr
    assert replay.stdout == ""


def test_code_used_for_ssh_is_refused_by_sudo(totp):
    code = totp.code()
    assert totp.host.ssh([code]).authenticated
    result = totp.host.sudo(["id", "-u"], code)
    assert result.returncode == 1, result
    assert result.stdout == ""


def test_sudo_is_refused_when_the_daemon_is_down(totp):
    totp.stop_daemon()
    result = totp.host.sudo(["id", "-u"], totp.code())
    assert result.returncode == 1, result
    assert result.stdout == ""
