"""Bulk import staged on one connection (totpd/bulk_import.py): import_add and
import_commit, against a real daemon."""

from __future__ import annotations

import json
import subprocess

import pyotp

import wire


def verify(daemon, user: str, code: str):
    return wire.request(daemon.socket_path, "verify", user=user, code=code, service="sshd")


def oathtool(secret_base32: str, *options: str) -> str:
    """The code Debian's oathtool computes now (TOTP unless options say otherwise)."""
    return subprocess.run(["oathtool", *(options or ("--totp",)), "-b", secret_base32],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_imports_are_for_admins_only(daemon):
    status, message = daemon.call_as(65534, "import_add", user="nobody", secret=pyotp.random_base32())
    assert status == "FORBIDDEN" and "may not import" in message
    assert daemon.call_as(65534, "import_commit")[0] == "FORBIDDEN"


def test_importing_accounts_this_host_does_not_know_is_refused_whole(make_daemon, tmp_path):
    daemon = make_daemon(check_accounts=True)
    path = tmp_path / "mixed.tsv"
    path.write_text(f"root\t{pyotp.random_base32()}\nno-such-user-qq\t{pyotp.random_base32()}\n")
    result = daemon.ctl("import", "tsv", str(path))
    assert result.returncode == 1 and f"{path}:2: no-such-user-qq" in result.stderr
    assert json.loads(daemon.ctl("list", "--json").stdout) == []


def test_import_add_takes_a_token_name_type_and_counter(daemon):
    from totpd.client import Client

    secret = pyotp.random_base32()
    with Client(daemon.socket_path) as client:
        assert client.call("import_add", user="alice", secret=secret, token="phone", type="totp", counter=0).status == "OK"
        bad = client.call("import_add", user="bob", secret=secret, token="Not A Name")
        assert bad.status == "BAD_REQUEST" and "'token'" in bad.message
        bad = client.call("import_add", user="bob", secret=secret, type="sms")
        assert bad.status == "BAD_REQUEST" and "'type'" in bad.message
        bad = client.call("import_add", user="bob", secret=secret, type="hotp", counter="-3")
        assert bad.status == "BAD_REQUEST"
        assert client.call("import_commit").fields["created"] == "1"
    assert verify(daemon, "alice", pyotp.TOTP(secret).now()).status == "ACCEPTED"


def test_an_import_stores_several_tokens_of_an_account_with_their_hotp_counters(daemon):
    from totpd.client import Client

    phone, key = pyotp.random_base32(), pyotp.random_base32()
    with Client(daemon.socket_path) as client:
        assert client.call("import_add", user="alice", secret=phone, last_step=-1).status == "OK"
        assert client.call("import_add", user="alice", secret=key, token="key", type="hotp", counter=5).status == "OK"
        twice = client.call("import_add", user="alice", secret=key, token="key", type="hotp")
        assert twice.status == "BAD_REQUEST" and "appears twice" in twice.message
        assert client.call("import_commit").fields["created"] == "1"
    hotp = lambda counter: oathtool(key, "--hotp", "-c", str(counter))  # noqa: E731
    assert verify(daemon, "alice", hotp(4)).status == "REJECTED"  # the old tool's counter had passed it
    assert verify(daemon, "alice", hotp(5)).status == "ACCEPTED"
    assert verify(daemon, "alice", oathtool(phone)).status == "ACCEPTED"
    listed = json.loads(daemon.ctl("token", "list", "alice", "--json").stdout)
    assert [(t["name"], t["type"]) for t in listed] == [("default", "totp"), ("key", "hotp")]
