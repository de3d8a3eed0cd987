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

sys.path.insert(0, str(Path(__file__).resolve().parent / "pam"))
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
    assert otp.code_at_step(SECRET, params, account.last_step) == code
