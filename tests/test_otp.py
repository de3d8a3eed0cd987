"""TOTP maths (totpd/otp.py) against the RFC vectors and pyotp.
"""

from __future__ import annotations

import hashlib

import pytest

from totpd import otp

# RFC 6238 Appendix B: seeds are the ASCII strings below, 8 digits, 30 s steps.
RFC_SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC_VECTORS = [
    (59, {"SHA1": "94287082", "SHA256": "46119246", "SHA512": "90693936"}),
    (1111111109, {"SHA1": "07081804", "SHA256": "68084774", "SHA512": "25091201"}),
    (1111111111, {"SHA1": "14050471", "SHA256": "67062674", "SHA512": "99943326"}),
    (1234567890, {"SHA1": "89005924", "SHA256": "91819424", "SHA512": "93441116"}),
    (2000000000, {"SHA1": "69279037", "SHA256": "90698825", "SHA512": "38618901"}),
    (20000000000, {"SHA1": "65353130", "SHA256": "77737706", "SHA512": "47863826"}),
]


@pytest.mark.parametrize("when, codes", RFC_VECTORS)
@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_rfc6238_appendix_b_vectors_pass_through_the_verifier(when, codes, algorithm):
    params = otp.Params(algorithm, 8, 30)
    seed = RFC_SEEDS[algorithm]
    step = when // 30
    assert otp.hotp(seed, step, 8, algorithm.lower()) == codes[algorithm]

    def match(now: float, window: int) -> int | None:
        return otp.match_any(seed, params, codes[algorithm], otp.candidates("totp", params, -1, 0, now, window, 0))

    assert match(when, window=0) == step
    assert match(when + 30, window=1) == step
    assert match(when + 60, window=1) is None


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
@pytest.mark.parametrize("digits", [6, 8])
def test_the_fast_hotp_agrees_with_pyotp(algorithm, digits):
    import random

    import pyotp

    rng = random.Random(f"{algorithm}{digits}")
    for _ in range(300):
        secret = rng.randbytes(rng.choice([16, 20, 32, 64]))
        counter = rng.choice([0, 1, rng.randrange(1 << 32), rng.randrange(1 << 40)])
        reference = pyotp.HOTP(otp.encode_secret(secret), digits=digits, digest=getattr(hashlib, algorithm.lower()))
        assert otp.hotp(secret, counter, digits, algorithm.lower()) == reference.at(counter)


def test_a_code_of_the_wrong_shape_matches_no_step():
    params = otp.Params()
    seed = RFC_SEEDS["SHA1"]
    good = otp.hotp(seed, 1000, 6, "sha1")
    assert otp.match_any(seed, params, good, range(999, 1002)) == 1000
    for bad in ["", good[:-1], good + "0", " " + good[1:], "١٢٣٤٥٦", "12345a"]:
        assert otp.match_any(seed, params, bad, range(999, 1002)) is None


def test_secrets_are_parsed_the_way_people_write_them():
    assert otp.decode_secret("jbsw y3dp ehpk 3pxp") == otp.decode_secret("JBSWY3DPEHPK3PXP")
    assert otp.decode_secret("JBSWY3DPEHPK3PXP====") == otp.decode_secret("JBSWY3DPEHPK3PXP")
    for bad in ["", "JBSW1", "JBSWY3DP", "!!!!!!!!!!!!!!!!"]:
        with pytest.raises(ValueError):
            otp.decode_secret(bad)


def test_recovery_codes_are_random_readable_and_normalized():
    codes = {otp.new_recovery_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(code) == 14 and code.count("-") == 2 for code in codes)
    assert otp.normalize_recovery_code(" ABCD-efgh ijkm ") == "abcdefghijkm"


def test_params_refuse_unsupported_tokens():
    for bad in [("MD5", 6, 30), ("SHA1", 7, 30), ("SHA1", 6, 5)]:
        with pytest.raises(ValueError):
            otp.Params(*bad)

def test_hashlib_names_match_the_algorithms_we_offer():
    assert set(otp.ALGORITHMS) == {"SHA1", "SHA256", "SHA512"}
    assert otp.ALGORITHMS["SHA256"] is hashlib.sha256
