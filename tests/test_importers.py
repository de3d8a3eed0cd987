"""The readers of other tools' files: a code the old tool accepted stays used.

The files here are the ones the real tools write after a real login through libpam
(pam_oath, pam_google_authenticator), not files made up to match our reading.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from totpd import importers, otp
from totpd.errors import ImportFileError

import pamdriver  # noqa: E402

SECRET_HEX = "3132333435363738393031323334353637383930"  # RFC 4226's test secret
SECRET = bytes.fromhex(SECRET_HEX)


def hotp(counter: int, digits: int = 6) -> str:
    return subprocess.run(
        ["oathtool", "--hotp", f"--digits={digits}", "-c", str(counter), SECRET_HEX], capture_output=True, text=True, check=True
    ).stdout.strip()


def login(tmp_path, stack: str, code: str) -> int:
    confdir = pamdriver.write_confdir(str(tmp_path / "pam.d"), "importtest", stack)
    return pamdriver.authenticate("importtest", "root", confdir, code).retcode


def test_pam_oath_hotp_entry_after_a_login_continues_after_the_used_counter(tmp_path):
    usersfile = tmp_path / "users.oath"
    usersfile.write_text(f"HOTP root - {SECRET_HEX} 5\n")
    usersfile.chmod(0o600)
    [fresh] = importers.oath(str(usersfile)).accounts
    assert (fresh.type, fresh.counter, fresh.token) == ("hotp", 5, "default")  # nothing used yet: 5 is next
    stack = f"auth required pam_oath.so usersfile={usersfile} window=5"
    assert login(tmp_path, stack, hotp(7)) == pamdriver.PAM_SUCCESS
    assert login(tmp_path, stack, hotp(7)) != pamdriver.PAM_SUCCESS  # pam_oath itself: used
    result = importers.oath(str(usersfile))
    [account] = result.accounts
    assert (account.user, account.type, account.counter, account.digits) == ("root", "hotp", 8, 6)
    assert otp.decode_secret(account.secret) == SECRET
    assert not result.notes


def test_pam_oath_eight_digit_hotp_and_a_totp_entry_side_by_side(tmp_path):
    usersfile = tmp_path / "users.oath"
    usersfile.write_text(f"HOTP/E/8 alice - {SECRET_HEX} 0\nHOTP/T30 bob - {SECRET_HEX}\n")
    alice, bob = importers.oath(str(usersfile)).accounts
    assert (alice.type, alice.digits, alice.counter) == ("hotp", 8, 0)
    assert otp.hotp(otp.decode_secret(alice.secret), alice.counter, 8, "sha1") == hotp(0, 8)
    assert (bob.type, bob.period, bob.counter) == ("totp", 30, 0)


def test_pam_oath_seven_digit_hotp_is_refused_with_its_line(tmp_path):
    usersfile = tmp_path / "users.oath"
    usersfile.write_text(f"HOTP/T30 bob - {SECRET_HEX}\nHOTP/E/7 alice - {SECRET_HEX} 0\n")
    with pytest.raises(ImportFileError, match=rf"^{usersfile}:2: digits must be 6 or 8$"):
        importers.oath(str(usersfile))


def test_google_authenticator_hotp_file_after_a_login_continues_after_the_used_counter(tmp_path):
    path = tmp_path / "root"
    subprocess.run(
        ["google-authenticator", "-c", "-f", "-u", "-w", "3", "-Q", "NONE", "-q", "-e", "2", "-s", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    secret = otp.decode_secret(path.read_text().splitlines()[0])
    [fresh] = importers.google_authenticator(str(path), "root").accounts
    assert (fresh.type, fresh.counter) == ("hotp", 1)  # the file it writes starts at HOTP_COUNTER 1
    stack = f"auth required pam_google_authenticator.so user=root secret={tmp_path}/${{USER}}"
    assert login(tmp_path, stack, otp.hotp(secret, 2, 6, "sha1")) == pamdriver.PAM_SUCCESS
    result = importers.google_authenticator(str(path), "root")
    [account] = result.accounts
    assert (account.type, account.counter, account.digits, account.algorithm) == ("hotp", 3, 6, "SHA1")
    assert len(account.recovery_codes or []) == 2
    assert any("WINDOW_SIZE" in note and "'hotp_window'" in note for note in result.notes)


def test_a_google_authenticator_file_with_neither_mode_is_refused(tmp_path):
    path = tmp_path / "ga"
    path.write_text(f"{otp.encode_secret(SECRET)}\n\" RATE_LIMIT 3 30\n")
    with pytest.raises(ImportFileError, match="neither TOTP_AUTH nor HOTP_COUNTER"):
        importers.google_authenticator(str(path), "alice")
    path.write_text(f"{otp.encode_secret(SECRET)}\n\" HOTP_COUNTER 0\n")
    with pytest.raises(ImportFileError, match="HOTP_COUNTER is not a counter"):
        importers.google_authenticator(str(path), "alice")


def test_pam_oath_totp_code_accepted_just_before_the_import_stays_used(tmp_path):
    usersfile = tmp_path / "users.oath"
    usersfile.write_text(f"HOTP/T30 root - {SECRET_HEX}\n")
    usersfile.chmod(0o600)
    params = otp.Params()
    step = otp.time_step(time.time(), params)
    code = subprocess.run(["oathtool", "--totp", SECRET_HEX], capture_output=True, text=True, check=True).stdout.strip()
    assert login(tmp_path, f"auth required pam_oath.so usersfile={usersfile} window=5", code) == pamdriver.PAM_SUCCESS
    fields = usersfile.read_text().split()
    assert fields[4] == "0" and fields[5] == code  # liboath keeps the code and the time, not the step
    [account] = importers.oath(str(usersfile)).accounts
    assert account.type == "totp" and account.last_step in (step, step + 1)  # +1: the step may have turned since
    assert otp.hotp(SECRET, account.last_step, params.digits, params.algorithm.lower()) == code
