"""totpd/recovery.py: codes shown once, stored as argon2id hashes, each matched at most by its own."""

from __future__ import annotations

import re

from argon2 import PasswordHasher

from totpd import recovery
from totpd.otp import RECOVERY_ALPHABET


def test_generated_codes_are_distinct_and_only_their_hashes_are_kept():
    codes, hashes = recovery.generate(10)
    assert len(set(codes)) == 10 and len(hashes) == 10
    for code, encoded in zip(codes, hashes):
        assert re.fullmatch(rf"[{RECOVERY_ALPHABET}]+(-[{RECOVERY_ALPHABET}]+)+", code)
        assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")  # OWASP's minimum for argon2id
        assert code not in encoded and code.replace("-", "") not in encoded
        assert PasswordHasher().verify(encoded, code.replace("-", "").lower())  # any argon2 verifier agrees


def test_a_code_is_found_by_its_own_hash_however_it_is_spelled():
    codes, hashes = recovery.generate(3)
    stored = list(enumerate(hashes, start=7))
    assert recovery.find(codes[1], stored) == 8
    assert recovery.find(" " + codes[1].upper().replace("-", " ") + " ", stored) == 8
    assert recovery.find(codes[2].replace("-", ""), stored) == 9


def test_a_wrong_or_used_code_matches_nothing():
    codes, hashes = recovery.generate(2)
    assert recovery.find(codes[0][:-1] + ("a" if codes[0][-1] != "a" else "b"), list(enumerate(hashes))) is None
    assert recovery.find(codes[0], [(1, hashes[1])]) is None  # its hash gone: used
    assert recovery.find(codes[0], []) is None


def test_a_damaged_hash_is_skipped_and_the_rest_still_checked():
    codes, hashes = recovery.generate(1)
    assert recovery.find(codes[0], [(1, "not a hash"), (2, hashes[0][:-4] + "AAAA"), (3, hashes[0])]) == 3


def test_imported_scratch_codes_hash_and_match_like_generated_ones():
    (encoded,) = recovery.hash_codes(["12345678"])
    assert recovery.find("1234 5678", [(4, encoded)]) == 4
    assert recovery.find("12345679", [(4, encoded)]) is None
