"""The e2e harness itself, proven with stock modules (pam_unix, a known password).

When a pam_totpd end-to-end test fails, these say whether the harness (namespace,
sshd, sudo, the clients) still works: if they pass, look at the product.
"""

from __future__ import annotations

import filecmp
import pwd
import subprocess

import pytest

PASSWORD = "correct horse battery staple"


@pytest.fixture
def stock_host(make_login_host):
    hashed = subprocess.run(["openssl", "passwd", "-6", "-salt", "totpde2e", PASSWORD],
                            capture_output=True, text=True, check=True).stdout.strip()
    return make_login_host(auth="auth required pam_unix.so nodelay\n", password_hash=hashed)


def test_harness_ssh_login_with_key_and_right_password_succeeds(stock_host):
    result = stock_host.ssh([PASSWORD])
    assert result.authenticated, result
    assert result.prompts == ["Password: "]
    assert result.output == f"{stock_host.user}\n"
    assert result.exit_status == 0


def test_harness_ssh_login_with_wrong_password_is_refused(stock_host):
    result = stock_host.ssh(["wrong"])
    assert not result.authenticated
    assert result.prompts and result.prompts[0] == "Password: "


def test_harness_sudo_with_right_password_runs_the_command(stock_host):
    result = stock_host.sudo(["id", "-u"], PASSWORD)
    assert (result.returncode, result.stdout) == (0, "0\n"), result


def test_harness_sudo_with_wrong_password_is_refused(stock_host):
    result = stock_host.sudo(["id", "-u"], "wrong")
    assert result.returncode == 1, result
    assert "sudo: 1 incorrect password attempt" in result.stderr
    assert result.stdout == ""


def test_harness_changes_nothing_on_the_host(stock_host):
    user = stock_host.user
    inside = stock_host.run(["getent", "passwd", user])
    assert inside.returncode == 0 and inside.stdout.startswith(f"{user}:x:")
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    namespace_copy = stock_host.workdir / "etc" / "pam.d" / "sshd"
    assert not filecmp.cmp(namespace_copy, "/etc/pam.d/sshd", shallow=False)
