"""Readers for the files other TOTP tools keep, so people keep the phone entries they have.

Pure parsing: each reader turns a file into `Imported` accounts plus notes for the
admin, and raises ImportFileError naming the file and line for anything it cannot
read. Nothing here talks to the daemon or stores anything.

- google-authenticator-libpam: `~/.google_authenticator` (secret on line 1, `" KEY`
  option lines, then 8-digit scratch codes, which become recovery codes); TOTP, or
  HOTP with its counter.
- pam_oath: its usersfile (`HOTP[/E|/T30][/DIGITS] user pin hexsecret [moving-factor
  [last-otp [time]]]`); TOTP entries, and HOTP entries with their counters.
- tsv: `user<TAB>base32secret[<TAB>algorithm<TAB>digits<TAB>period]`, for bulk provisioning.
- PSKC (RFC 6030) key containers: pskc.py, which returns the same records.
"""

from __future__ import annotations

import binascii
import dataclasses
import hmac
import re
import time

from . import otp
from .errors import ImportFileError, ProtocolError
from .protocol import check_user


@dataclasses.dataclass
class Imported:
    user: str
    secret: str  # base32
    algorithm: str = "SHA1"
    digits: int = 6
    period: int = 30
    last_step: int = -1  # the last time step the old tool accepted: a used code stays used
    recovery_codes: list[str] | None = None
    line: int = 0  # where it came from: the line, or (PSKC) the key package's number
    token: str = "default"  # the token's name within the account
    type: str = "totp"  # "totp" or "hotp"
    counter: int = 0  # HOTP: the next counter value to accept; codes below it stay used


@dataclasses.dataclass
class ImportResult:
    accounts: list[Imported]
    notes: list[str]


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ImportFileError(f"{path}: not a text file") from None


def _user(path: str, number: int, user: str) -> str:
    try:
        return check_user(user)
    except ProtocolError as exc:
        raise ImportFileError(f"{path}:{number}: {exc}") from None


def _params(path: str, number: int, algorithm: str, digits: int, period: int) -> otp.Params:
    try:
        return otp.Params(algorithm, digits, period)
    except ValueError as exc:
        raise ImportFileError(f"{path}:{number}: {exc}") from None


def _secret(path: str, number: int, text: str) -> str:
    try:
        return otp.encode_secret(otp.decode_secret(text))
    except ValueError as exc:
        raise ImportFileError(f"{path}:{number}: {exc}") from None


def google_authenticator(path: str, user: str) -> ImportResult:
    lines = _lines(path)
    user = _user(path, 0, user)
    if not lines or not lines[0].strip():
        raise ImportFileError(f"{path}:1: no secret on the first line")
    secret = _secret(path, 1, lines[0])
    options: dict[str, list[str]] = {}
    scratch: list[str] = []
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith('" '):
            words = line[2:].split()
            if words:
                options[words[0]] = words[1:]
        elif re.fullmatch(r"\d{8}", line.strip()):
            scratch.append(line.strip())
        elif line.strip():
            raise ImportFileError(f"{path}:{number}: neither an option line nor an 8-digit scratch code")
    notes = []
    if "WINDOW_SIZE" in options:
        setting = "hotp_window" if "HOTP_COUNTER" in options else "window"
        notes.append(
            f"{user}: google-authenticator's WINDOW_SIZE {' '.join(options['WINDOW_SIZE'])} is not carried over;"
            f" totpd's '{setting}' applies to every account"
        )
    if "RATE_LIMIT" in options:
        notes.append(f"{user}: RATE_LIMIT is replaced by totpd's per-account throttling")
    notes.append(f"{user}: {len(scratch)} scratch code(s) become recovery codes (stored hashed)")
    if "HOTP_COUNTER" in options:
        # pam_google_authenticator writes HOTP_COUNTER = (the matched counter) + 1 after a
        # good code, and one more after a failed try: it is the next counter it would accept.
        value = options["HOTP_COUNTER"]
        if len(value) != 1 or not value[0].isdigit() or int(value[0]) < 1:
            raise ImportFileError(f"{path}: HOTP_COUNTER is not a counter (a whole number from 1)")
        account = Imported(user, secret, "SHA1", 6, 30, -1, scratch, 1, type="hotp", counter=int(value[0]))
        return ImportResult([account], notes)
    if "TOTP_AUTH" not in options:
        raise ImportFileError(f"{path}: neither TOTP_AUTH nor HOTP_COUNTER: not a file google-authenticator wrote")
    period = 30
    if "STEP_SIZE" in options:
        try:
            period = int(options["STEP_SIZE"][0])
        except (IndexError, ValueError):
            raise ImportFileError(f"{path}: STEP_SIZE is not a number") from None
    params = _params(path, 0, "SHA1", 6, period)
    last_step = -1
    for value in options.get("DISALLOW_REUSE", []):
        if value.isdigit():
            last_step = max(last_step, int(value))
    account = Imported(user, secret, params.algorithm, params.digits, params.period, last_step, scratch, 1)
    return ImportResult([account], notes)


_OATH_TYPE = re.compile(r"HOTP(?:/(?P<mode>T(?P<period>\d+)|E))?(?:/(?P<digits>\d+))?(?:/(?P<algorithm>SHA1|SHA256|SHA512))?", re.I)


def oath(path: str, only_user: str | None = None) -> ImportResult:
    accounts: list[Imported] = []
    notes: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(_lines(path), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 4:
            raise ImportFileError(f"{path}:{number}: expected 'TYPE USER PIN SECRET [MOVING-FACTOR ...]'")
        kind, user, pin, hexsecret = fields[:4]
        match = _OATH_TYPE.fullmatch(kind)
        if not match:
            raise ImportFileError(f"{path}:{number}: unknown token type '{kind}'")
        if only_user is not None and user != only_user:
            continue
        event_based = not match.group("mode") or match.group("mode").upper() == "E"
        user = _user(path, number, user)
        if user in seen:
            raise ImportFileError(f"{path}:{number}: {user} appears twice")
        seen.add(user)
        try:
            secret_bytes = binascii.unhexlify(hexsecret)
        except (binascii.Error, ValueError):
            raise ImportFileError(f"{path}:{number}: the secret is not hexadecimal") from None
        secret = _secret(path, number, otp.encode_secret(secret_bytes))
        params = _params(
            path,
            number,
            (match.group("algorithm") or "SHA1").upper(),
            int(match.group("digits") or 6),
            30 if event_based else int(match.group("period")),
        )
        moving_factor = None
        if len(fields) >= 5:
            if not fields[4].isdigit():
                raise ImportFileError(f"{path}:{number}: the moving factor is not a number")
            moving_factor = int(fields[4])
        if pin not in ("-", "+"):
            notes.append(f"{path}:{number}: {user}: the PIN is not carried over (the password module asks for the first factor)")
        if event_based:
            # liboath (usersfile.c) validates from the moving factor onwards and, after a good
            # code, writes back the matched counter itself with that code in the next column:
            # with a last code there, the moving factor is used and the next counter is one more.
            counter = (moving_factor or 0) + (1 if len(fields) >= 6 else 0)
            accounts.append(
                Imported(user, secret, params.algorithm, params.digits, params.period, -1, None, number, type="hotp", counter=counter)
            )
            continue
        last_step = max(-1 if moving_factor is None else moving_factor, _oath_last_step(path, number, secret_bytes, params, fields))
        accounts.append(Imported(user, secret, params.algorithm, params.digits, params.period, last_step, None, number))
    if only_user is not None and not accounts:
        raise ImportFileError(f"{path}: no entry for {only_user}")
    return ImportResult(accounts, notes)


OATH_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SL"  # liboath's, in local time
OATH_SEARCH_STEPS = 20  # around the last login's time: wider than any pam_oath window in use


def _oath_last_step(path: str, number: int, secret: bytes, params: otp.Params, fields: list[str]) -> int:
    """The time step of the code pam_oath last accepted, so that it stays used.

    For TOTP entries liboath (usersfile.c) keeps no time step: its moving factor
    stays the window offset it started from, and it records the accepted code and the
    local time of the login instead; the step is the one near that time with that code.
    """
    if len(fields) < 7:
        return -1
    try:
        when = time.mktime(time.strptime(fields[6], OATH_TIME_FORMAT))
    except (ValueError, OverflowError):
        raise ImportFileError(f"{path}:{number}: the last login's time is not liboath's YYYY-MM-DDTHH:MM:SSL") from None
    around = otp.time_step(when, params)
    digest = params.algorithm.lower()
    matched = [
        step
        for step in range(max(0, around - OATH_SEARCH_STEPS), around + OATH_SEARCH_STEPS + 1)
        if hmac.compare_digest(otp.hotp(secret, step, params.digits, digest), fields[5])
    ]
    return max(matched, default=around)


def tsv(path: str) -> ImportResult:
    accounts: list[Imported] = []
    seen: set[str] = set()
    for number, raw in enumerate(_lines(path), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        fields = raw.split("\t")
        if len(fields) not in (2, 5):
            raise ImportFileError(
                f"{path}:{number}: expected user<TAB>base32secret[<TAB>algorithm<TAB>digits<TAB>period], found {len(fields)} field(s)"
            )
        user = _user(path, number, fields[0])
        if user in seen:
            raise ImportFileError(f"{path}:{number}: {user} appears twice")
        seen.add(user)
        secret = _secret(path, number, fields[1])
        params = otp.Params()
        if len(fields) == 5:
            if not fields[3].isdigit() or not fields[4].isdigit():
                raise ImportFileError(f"{path}:{number}: digits and period must be whole numbers")
            params = _params(path, number, fields[2].upper(), int(fields[3]), int(fields[4]))
        accounts.append(Imported(user, secret, params.algorithm, params.digits, params.period, -1, None, number))
    return ImportResult(accounts, [])
