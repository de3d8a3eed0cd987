"""TOTP maths (RFC 6238), on pyotp.

This module turns (secret, parameters, code, time) into "which time step matched",
and builds enrollment URIs. It knows nothing of accounts, replay or throttling:
deciding "accepted" is the service's job, with the store's replay state.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import secrets as _secrets

import pyotp

ALGORITHMS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
DIGITS = (6, 8)
MIN_PERIOD, MAX_PERIOD = 15, 300
# New secrets are 160 bits (RFC 4226's recommendation). Secrets brought in from
# elsewhere may be shorter: google-authenticator-libpam writes 80-bit secrets, and
# people's phones already hold them, so 80 bits is the floor we accept.
NEW_SECRET_BYTES = 20
MIN_IMPORTED_SECRET_BYTES = 10
MAX_SECRET_BYTES = 128

RECOVERY_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: read aloud, typed from paper
RECOVERY_GROUPS, RECOVERY_GROUP_LEN = 3, 4  # 12 symbols x 5 bits = 60 bits


@dataclasses.dataclass(frozen=True)
class Params:
    algorithm: str = "SHA1"
    digits: int = 6
    period: int = 30

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError("algorithm must be SHA1, SHA256 or SHA512")
        if self.digits not in DIGITS:
            raise ValueError("digits must be 6 or 8")
        if not MIN_PERIOD <= self.period <= MAX_PERIOD:
            raise ValueError(f"period must be from {MIN_PERIOD} to {MAX_PERIOD} seconds")


class _TOTP(pyotp.TOTP):
    """pyotp's TOTP for the enrollment URI, accepting the 80-bit secrets we import."""

    min_secret_length_bits = MIN_IMPORTED_SECRET_BYTES * 8

    def __init__(self, secret: bytes, **options: object) -> None:
        super().__init__(encode_secret(secret), **options)  # type: ignore[arg-type]


def new_secret() -> bytes:
    return _secrets.token_bytes(NEW_SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")


def decode_secret(text: str) -> bytes:
    """Parse a base32 secret as people and other tools write it (spaces, lower case, padding)."""
    cleaned = re.sub(r"[\s-]", "", text).upper().rstrip("=")
    if not cleaned or not re.fullmatch(r"[A-Z2-7]+", cleaned):
        raise ValueError("the secret is not base32 (letters A-Z and digits 2-7)")
    try:
        secret = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except binascii.Error:
        raise ValueError("the secret is not valid base32") from None
    if len(secret) < MIN_IMPORTED_SECRET_BYTES:
        raise ValueError(f"the secret is shorter than {MIN_IMPORTED_SECRET_BYTES * 8} bits")
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"the secret is longer than {MAX_SECRET_BYTES} bytes")
    return secret


def _totp(secret: bytes, params: Params) -> _TOTP:
    return _TOTP(secret, digits=params.digits, digest=ALGORITHMS[params.algorithm], interval=params.period)


def time_step(now: float, params: Params) -> int:
    return int(now) // params.period


def candidates(kind: str, params: Params, last_step: int, skew: int, now: float, window: int, hotp_window: int) -> range:
    """The moving factors a code for one token is compared against.

    TOTP: the steps within `window` of now and of now moved by the token's learned
    `skew` (and those between: at most |skew| more candidates). HOTP:
    the `hotp_window` counter values after the next one expected, and as many at or
    below the last accepted one, so that a replay is told from a wrong code.
    """
    if kind == "hotp":
        return range(max(0, last_step + 1 - hotp_window), last_step + 2 + hotp_window)
    current = time_step(now, params)
    # From this host's clock to the learned offset, `window` steps beyond each: learning
    # an offset never refuses a code this host's own window would take.
    return range(max(0, min(current, current + skew) - window), max(current, current + skew) + window + 1)


def match_any(secret: bytes, params: Params, code: str, factors: range) -> int | None:
    """The latest moving factor in `factors` whose code equals `code`, or None.

    Every candidate is computed and compared in constant time, so the time taken
    does not say which factor (if any) matched. When two share a code, the later one
    wins: it burns the most replay state.
    """
    if len(code) != params.digits or not code.isascii() or not code.isdigit():
        return None
    digest = params.algorithm.lower()
    matched = None
    for factor in factors:
        if hmac.compare_digest(hotp(secret, factor, params.digits, digest), code):
            matched = factor
    return matched


def match_pair(secret: bytes, params: Params, first: str, second: str, factors: range) -> int | None:
    """The factor f in `factors` whose code is `first` and f+1's `second`, or None; every
    pair computed and compared in constant time, the latest match winning."""
    for code in (first, second):
        if len(code) != params.digits or not code.isascii() or not code.isdigit():
            return None
    digest = params.algorithm.lower()
    matched = None
    following = hotp(secret, factors.start, params.digits, digest) if len(factors) else ""
    for factor in factors:
        this, following = following, hotp(secret, factor + 1, params.digits, digest)
        if hmac.compare_digest(this, first) & hmac.compare_digest(following, second):
            matched = factor
    return matched


def hotp(secret: bytes, counter: int, digits: int, digest: str) -> str:
    """RFC 4226 HOTP with one C call for the HMAC: the code pyotp computes.

    A login computes 2*window+1 of these, and pyotp builds objects for each one; a
    test checks that both agree for every algorithm, digit count and many counters.
    """
    mac = hmac.digest(secret, counter.to_bytes(8, "big"), digest)
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def provisioning_uri(secret: bytes, user: str, issuer: str, params: Params, kind: str = "totp", counter: int = 0) -> str:
    """otpauth:// URI; algorithm, digits and period appear only when not the defaults.
    HOTP: otpauth://hotp/...&counter=N, N the next counter value the daemon expects."""
    if kind == "hotp":
        return pyotp.HOTP(
            encode_secret(secret), digits=params.digits, digest=ALGORITHMS[params.algorithm], initial_count=counter
        ).provisioning_uri(name=user, issuer_name=issuer)
    return _totp(secret, params).provisioning_uri(name=user, issuer_name=issuer)


def new_recovery_code() -> str:
    symbols = "".join(_secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_GROUPS * RECOVERY_GROUP_LEN))
    groups = [symbols[i : i + RECOVERY_GROUP_LEN] for i in range(0, len(symbols), RECOVERY_GROUP_LEN)]
    return "-".join(groups)


def normalize_recovery_code(text: str) -> str:
    """Recovery codes are compared without case, spaces or dashes."""
    return re.sub(r"[\s-]", "", text).lower()


def looks_like_totp(code: str, params: Params) -> bool:
    return len(code) == params.digits and code.isascii() and code.isdigit()
