"""Migration from google-authenticator-libpam and pam_oath files and PSKC key containers, and bulk TSV provisioning."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

import wire
from test_pskc import Sealer, container, package, password_header, psk_header

import pamdriver  # noqa: E402


def verify(daemon, user: str, code: str):
    return wire.request(daemon.socket_path, "verify", user=user, code=code, service="sshd")


def oathtool(secret_base32: str, *options: str, at: float | None = None) -> str:
    args = ["oathtool", "--totp", "-b", secret_base32, *options]
    if at is not None:
        args.append(f"--now=@{int(at)}")
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


def google_authenticator_file(path) -> tuple[str, list[str]]:
    """Write a file with the real google-authenticator CLI, non-interactively."""
    subprocess.run(
        ["google-authenticator", "-t", "-d", "-f", "-r", "3", "-R", "30", "-w", "3", "-Q", "NONE", "-q", "-e", "5", "-s", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    lines = path.read_text().splitlines()
    return lines[0], [line for line in lines if line.isdigit()]


def test_a_google_authenticator_file_imports_and_its_codes_and_scratch_codes_work(daemon, tmp_path):
    path = tmp_path / ".google_authenticator"
    secret, scratch = google_authenticator_file(path)
    assert len(scratch) == 5
    result = daemon.ctl("import", "google-authenticator", "--user", "alice", str(path))
    assert result.returncode == 0, result.stderr
    assert "imported: 1 new" in result.stdout
    assert "5 scratch code(s) become recovery codes" in result.stderr
    assert verify(daemon, "alice", oathtool(secret)).status == "ACCEPTED"
    assert verify(daemon, "alice", scratch[2]).status == "ACCEPTED"
    assert verify(daemon, "alice", scratch[2]).status == "REJECTED"
    status = json.loads(daemon.ctl("status", "alice", "--json").stdout)
    assert status["recovery_codes_left"] == 4


def test_a_code_google_authenticator_already_accepted_stays_used(daemon, tmp_path):
    path = tmp_path / ".google_authenticator"
    secret, _ = google_authenticator_file(path)
    now = time.time()
    used_step = int(now) // 30
    path.write_text(path.read_text().replace('" DISALLOW_REUSE', f'" DISALLOW_REUSE {used_step}'))
    assert daemon.ctl("import", "google-authenticator", "--user", "alice", str(path)).returncode == 0
    assert verify(daemon, "alice", oathtool(secret, at=used_step * 30)).status == "REJECTED"
    assert verify(daemon, "alice", oathtool(secret, at=(used_step + 1) * 30)).status == "ACCEPTED"


def test_a_pam_oath_usersfile_imports_its_totp_entries(daemon, tmp_path):
    alice, carol = "3132333435363738393031323334353637383930", "00112233445566778899aabbccddeeff00112233"
    usersfile = tmp_path / "users.oath"
    usersfile.write_text(
        "# pam_oath usersfile\n"
        f"HOTP/T30 alice - {alice}\n"
        f"HOTP/T60/8 carol - {carol} 0\n"
    )
    dry = daemon.ctl("import", "oath", str(usersfile), "--dry-run")
    assert dry.returncode == 0 and "would import: 2 new" in dry.stdout
    assert verify(daemon, "alice", "123456").status == "DENIED"  # the dry run wrote nothing
    assert daemon.ctl("import", "oath", str(usersfile)).returncode == 0
    alice_code = subprocess.run(["oathtool", "--totp", alice], capture_output=True, text=True, check=True).stdout.strip()
    carol_code = subprocess.run(["oathtool", "--totp", "--digits=8", "-s", "60s", carol], capture_output=True, text=True, check=True).stdout.strip()
    assert verify(daemon, "alice", alice_code).status == "ACCEPTED"
    assert verify(daemon, "carol", carol_code).status == "ACCEPTED"


def test_a_totp_code_pam_oath_accepted_before_the_import_stays_used(daemon, tmp_path):
    secret = "3132333435363738393031323334353637383930"
    usersfile = tmp_path / "users.oath"
    usersfile.write_text(f"HOTP/T30 root - {secret}\n")
    usersfile.chmod(0o600)
    step = int(time.time()) // 30
    code = subprocess.run(["oathtool", "--totp", secret, f"--now=@{step * 30 + 1}"], capture_output=True, text=True, check=True).stdout.strip()
    confdir = pamdriver.write_confdir(str(tmp_path / "pam.d"), "oathlogin", f"auth required pam_oath.so usersfile={usersfile} window=5")
    assert pamdriver.authenticate("oathlogin", "root", confdir, code).retcode == pamdriver.PAM_SUCCESS
    assert daemon.ctl("import", "oath", str(usersfile)).returncode == 0
    assert verify(daemon, "root", code).status == "REJECTED"
    later = subprocess.run(["oathtool", "--totp", secret, f"--now=@{(step + 1) * 30 + 1}"], capture_output=True, text=True, check=True).stdout.strip()
    assert verify(daemon, "root", later).status == "ACCEPTED"


def test_one_entry_of_an_oath_usersfile_with_user(daemon, tmp_path):
    usersfile = tmp_path / "users.oath"
    usersfile.write_text("HOTP/T30 alice - 3132333435363738393031323334353637383930\nHOTP/T30 dave - 3132333435363738393031323334353637383930\n")
    assert daemon.ctl("import", "oath", "--user", "dave", str(usersfile)).returncode == 0
    listed = [entry["user"] for entry in json.loads(daemon.ctl("list", "--json").stdout)]
    assert listed == ["dave"]


def test_a_bad_file_gets_an_error_naming_the_line_and_nothing_is_imported(daemon, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"alice\t{pyotp.random_base32()}\nbob\tnot-base32!\n")
    result = daemon.ctl("import", "tsv", str(bad))
    assert result.returncode == 2 and f"{bad}:2:" in result.stderr and "base32" in result.stderr
    assert json.loads(daemon.ctl("list", "--json").stdout) == []
    oath_file = tmp_path / "users.oath"
    oath_file.write_text("HOTP/T30 alice - zz\n")
    result = daemon.ctl("import", "oath", str(oath_file))
    assert result.returncode == 2 and f"{oath_file}:1:" in result.stderr


def test_tsv_provisions_in_bulk_with_parameters_and_keeps_existing_accounts_unless_forced(daemon, tmp_path):
    secrets = {f"user{i:03d}": pyotp.random_base32(32) for i in range(300)}
    path = tmp_path / "accounts.tsv"
    lines = [f"{user}\t{secret}" for user, secret in secrets.items()]
    lines.append(f"sha\t{pyotp.random_base32(32)}\tSHA256\t8\t60")
    path.write_text("\n".join(lines) + "\n")
    result = daemon.ctl("import", "tsv", str(path), "--json")
    assert json.loads(result.stdout) == {"created": 301, "replaced": 0, "skipped": 0, "dry_run": False, "skipped_users": []}
    assert verify(daemon, "user123", pyotp.TOTP(secrets["user123"]).now()).status == "ACCEPTED"
    sha = json.loads(daemon.ctl("status", "sha", "--json").stdout)
    assert (sha["algorithm"], sha["digits"], sha["period"]) == ("SHA256", 8, 60)
    again = json.loads(daemon.ctl("import", "tsv", str(path), "--json").stdout)
    assert again["skipped"] == 301 and again["created"] == 0
    forced = json.loads(daemon.ctl("import", "tsv", str(path), "--json", "--force").stdout)
    assert forced["replaced"] == 301


def test_a_tampered_pskc_file_is_refused_in_one_line_and_nothing_is_imported(daemon, tmp_path):
    sealer = Sealer(os.urandom(16))
    text = container(package("HW-1", os.urandom(20), user="alice", sealer=sealer), header=psk_header(sealer))
    start = text.index("<ValueMAC>") + len("<ValueMAC>")
    text = text[:start] + base64.b64encode(os.urandom(20)).decode() + text[text.index("</ValueMAC>") :]
    path = tmp_path / "tokens.pskcxml"
    path.write_text(text)
    result = daemon.ctl("import", "pskc", str(path), "--key-file", _key_file(tmp_path, sealer))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"totpctl: {path}: key package 1 (serial HW-1): MAC mismatch: the file was changed, or the key or password is wrong"]
    assert sealer.key.hex() not in result.stderr
    assert json.loads(daemon.ctl("list", "--json").stdout) == []


def test_pskc_options_belong_to_import_pskc(daemon, tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text(f"alice\t{pyotp.random_base32()}\n")
    result = daemon.ctl("import", "tsv", str(path), "--user-map", str(path))
    assert result.returncode == 2 and "--user-map is for import pskc only" in result.stderr
    result = daemon.ctl("import", "pskc", str(path), "--key-file", str(path), "--password-file", str(path))
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    doctype = tmp_path / "bomb.pskcxml"
    doctype.write_text('<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "aaaa">]>\n<KeyContainer/>\n')
    result = daemon.ctl("import", "pskc", str(doctype))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "DTD" in result.stderr


def _key_file(tmp_path, sealer: Sealer) -> str:
    key_file = tmp_path / "transport.hex"
    key_file.write_text(sealer.key.hex() + "\n")
    return str(key_file)


def test_a_pskc_totp_token_imports_and_takes_oathtools_code_once(daemon, tmp_path):
    sealer = Sealer(os.urandom(16))
    secret = os.urandom(20)
    path = tmp_path / "tokens.pskcxml"
    path.write_text(container(package("TT-0002", secret, kind="totp", digits=8, sealer=sealer), header=psk_header(sealer)))
    owners = tmp_path / "owners.tsv"
    owners.write_text("TT-0002\talice\n")
    result = daemon.ctl("import", "pskc", str(path), "--key-file", _key_file(tmp_path, sealer), "--user-map", str(owners))
    assert result.returncode == 0, result.stderr
    assert "imported: 1 new" in result.stdout
    code = subprocess.run(["oathtool", "--totp", "--digits=8", secret.hex()], capture_output=True, text=True, check=True).stdout.strip()
    assert verify(daemon, "alice", code).status == "ACCEPTED"
    assert verify(daemon, "alice", code).status == "REJECTED"


def test_a_password_encrypted_pskc_file_dry_run_writes_nothing(daemon, tmp_path):
    salt, password = os.urandom(16), "a long transport password"
    key = PBKDF2HMAC(algorithm=hashes.SHA1(), length=16, salt=salt, iterations=1000).derive(password.encode())
    sealer = Sealer(key)
    secret = os.urandom(20)
    path = tmp_path / "tokens.pskcxml"
    path.write_text(container(package("PW-1", secret, kind="totp", user="bob", sealer=sealer), header=password_header(sealer, salt, 1000)))
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    dry = daemon.ctl("import", "pskc", str(path), "--password-file", str(password_file), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["created"] == 1
    assert json.loads(daemon.ctl("list", "--json").stdout) == []
    assert password not in dry.stdout + dry.stderr
    assert daemon.ctl("import", "pskc", str(path), "--password-file", str(password_file)).returncode == 0
    assert verify(daemon, "bob", pyotp.TOTP(base64.b32encode(secret).decode()).now()).status == "ACCEPTED"


def hotp_code(secret_hex: str, counter: int, digits: int = 6) -> str:
    return subprocess.run(
        ["oathtool", "--hotp", f"--digits={digits}", "-c", str(counter), secret_hex], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_pskc_hotp_and_totp_tokens_of_one_account_log_in_with_oathtools_codes(daemon, tmp_path):
    sealer = Sealer(os.urandom(16))
    hotp_secret, totp_secret = os.urandom(20), os.urandom(20)
    path = tmp_path / "tokens.pskcxml"
    path.write_text(container(
        package("HW-0001", hotp_secret, user="alice", counter=5, sealer=sealer),
        package("TT-0002", totp_secret, kind="totp", user="alice", sealer=sealer),
        header=psk_header(sealer),
    ))
    result = daemon.ctl("import", "pskc", str(path), "--key-file", _key_file(tmp_path, sealer))
    assert result.returncode == 0, result.stderr
    assert verify(daemon, "alice", hotp_code(hotp_secret.hex(), 4)).status == "REJECTED"  # below the device's counter
    assert verify(daemon, "alice", hotp_code(hotp_secret.hex(), 5)).status == "ACCEPTED"
    assert verify(daemon, "alice", hotp_code(hotp_secret.hex(), 5)).status == "REJECTED"
    totp = subprocess.run(["oathtool", "--totp", totp_secret.hex()], capture_output=True, text=True, check=True).stdout.strip()
    assert verify(daemon, "alice", totp).status == "ACCEPTED"


def test_a_google_authenticator_hotp_code_used_before_the_import_stays_used(daemon, tmp_path):
    path = tmp_path / "root"
    subprocess.run(["google-authenticator", "-c", "-f", "-u", "-w", "3", "-Q", "NONE", "-q", "-s", str(path)], check=True, capture_output=True)
    secret_hex = base64.b32decode(path.read_text().splitlines()[0] + "=" * (-len(path.read_text().splitlines()[0]) % 8)).hex()
    confdir = pamdriver.write_confdir(str(tmp_path / "pam.d"), "galogin", f"auth required pam_google_authenticator.so user=root secret={tmp_path}/${{USER}}")
    assert pamdriver.authenticate("galogin", "root", confdir, hotp_code(secret_hex, 1)).retcode == pamdriver.PAM_SUCCESS
    assert daemon.ctl("import", "google-authenticator", "--user", "root", str(path)).returncode == 0
    assert verify(daemon, "root", hotp_code(secret_hex, 1)).status == "REJECTED"
    assert verify(daemon, "root", hotp_code(secret_hex, 2)).status == "ACCEPTED"


def test_a_pam_oath_hotp_code_used_before_the_import_stays_used(daemon, tmp_path):
    secret_hex = "3132333435363738393031323334353637383930"
    usersfile = tmp_path / "users.oath"
    usersfile.write_text(f"HOTP root - {secret_hex} 0\n")
    usersfile.chmod(0o600)
    confdir = pamdriver.write_confdir(str(tmp_path / "pam.d"), "oathlogin", f"auth required pam_oath.so usersfile={usersfile} window=5")
    assert pamdriver.authenticate("oathlogin", "root", confdir, hotp_code(secret_hex, 3)).retcode == pamdriver.PAM_SUCCESS
    assert daemon.ctl("import", "oath", str(usersfile)).returncode == 0
    assert verify(daemon, "root", hotp_code(secret_hex, 3)).status == "REJECTED"
    assert verify(daemon, "root", hotp_code(secret_hex, 4)).status == "ACCEPTED"
