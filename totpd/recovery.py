"""Recovery codes: generated here, stored only as argon2id hashes.

Parameters: argon2id, t=2, m=19 MiB, p=1 (OWASP's minimum for argon2id). Codes we
generate carry 60 bits of entropy, so the hash mostly protects imported scratch
codes (8 digits, ~27 bits) if the database leaks. Each check is tens of
milliseconds of CPU by design, so the service runs them on its argon2 worker, and
only once the throttle has admitted the attempt.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

try:
    from argon2.exceptions import InvalidHashError
except ImportError:  # argon2-cffi before 23.1 (Debian 12 and 13: 21.1) names it InvalidHash
    from argon2.exceptions import InvalidHash as InvalidHashError

from .otp import new_recovery_code, normalize_recovery_code

_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def generate(count: int) -> tuple[list[str], list[str]]:
    """New codes (to show once) and their hashes (to store)."""
    codes = [new_recovery_code() for _ in range(count)]
    return codes, hash_codes(codes)


def hash_codes(codes: list[str]) -> list[str]:
    return [_hasher.hash(normalize_recovery_code(code)) for code in codes]


def find(code: str, hashes: list[tuple[int, str]]) -> int | None:
    """The id of the stored code that `code` matches, or None. Checks every hash."""
    candidate = normalize_recovery_code(code)
    found = None
    for code_id, encoded in hashes:
        try:
            if _hasher.verify(encoded, candidate):
                found = code_id
        except (VerificationError, InvalidHashError):
            continue
    return found
