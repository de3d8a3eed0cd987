"""The layers below the daemon, tested directly: otp maths, protocol, config, sealing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from totpd import config, otp, protocol
from totpd.errors import ConfigError, FrameError, ProtocolError, SealingError
from totpd.sealing import Sealer, load_key

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
    assert otp.code_at_step(seed, params, step) == codes[algorithm]
    assert otp.match_step(seed, params, codes[algorithm], when, window=0) == step
    assert otp.match_step(seed, params, codes[algorithm], when + 30, window=1) == step
    assert otp.match_step(seed, params, codes[algorithm], when + 60, window=1) is None


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


def test_match_step_refuses_codes_of_the_wrong_shape():
    params = otp.Params()
    seed = RFC_SEEDS["SHA1"]
    good = otp.code_at_step(seed, params, 1000)
    assert otp.match_step(seed, params, good, 30000, 1) == 1000
    for bad in ["", good[:-1], good + "0", " " + good[1:], "١٢٣٤٥٦", "12345a"]:
        assert otp.match_step(seed, params, bad, 30000, 1) is None


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


# -- protocol -----------------------------------------------------------------------

VECTORS = {
    "ping": "5444 0100 0000 0005 70696e670a",
    "ok": "5444 0100 0000 000d 4f4b0a76657273696f6e3d310a",
    "check": "5444 0100 0000 001e 636865636b0a757365723d616c6963650a736572766963653d7375646f0a",
    "need_code": "5444 0100 0000 0025 4e4545445f434f44450a70726f6d70743d566572696669636174696f6e20636f64653a200a",
}


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_the_protocol_documents_vectors_match_the_encoder():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    for vector in VECTORS.values():
        assert vector in doc
    assert protocol.encode_request("ping", {}) == _hex(VECTORS["ping"])
    assert protocol.encode_reply(protocol.Reply("OK", {"version": "1"})) == _hex(VECTORS["ok"])
    assert protocol.encode_request("check", {"user": "alice", "service": "sudo"}) == _hex(VECTORS["check"])
    assert protocol.encode_reply(protocol.Reply("NEED_CODE", {"prompt": "Verification code: "})) == _hex(VECTORS["need_code"])
    raw = _hex(VECTORS["check"])
    length = protocol.parse_header(raw[:8], protocol.MAX_REQUEST_PAYLOAD)
    request = protocol.decode_request(raw[8 : 8 + length])
    assert request.verb == "check" and request.fields == {"user": "alice", "service": "sudo"}


@pytest.mark.parametrize(
    "header",
    ["5845 0100 0000 0005", "5444 0200 0000 0005", "5444 0101 0000 0005", "5444 0100 0000 0000", "5444 0100 0000 1001"],
)
def test_the_documented_malformed_headers_are_refused(header):
    with pytest.raises(FrameError):
        protocol.parse_header(_hex(header), protocol.MAX_REQUEST_PAYLOAD)


def test_a_payload_without_a_final_line_feed_is_refused():
    with pytest.raises(ProtocolError, match="line feed"):
        protocol.decode_request(b"ping")


@pytest.mark.parametrize("user", ["alice", "Alice Smith", "alice@EXAMPLE.COM", "DOMAIN\\alice", "ölçü", "a" * 256])
def test_names_that_directories_produce_are_accepted(user):
    assert protocol.check_user(user) == user


@pytest.mark.parametrize("user", ["", ".", "..", "a/b", "/etc", "a\nb", "a\tb", "a\x7fb", "a\u0085b", "a" * 257, "é" * 129])
def test_hostile_account_names_are_refused(user):
    with pytest.raises(ProtocolError):
        protocol.check_user(user)


# -- config -------------------------------------------------------------------------


def test_every_config_key_is_documented_with_its_default():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    defaults = config.Config()
    for key in config.known_keys():
        assert f"`{key}`" in doc, key
        assert hasattr(defaults, key)


@pytest.mark.parametrize(
    "text, message",
    [
        ('sockett = "/x"\n', "unknown key 'sockett'"),
        ("window = \"1\"\n", "key 'window' must be a whole number"),
        ("window = 11\n", "key 'window' must be a whole number from 0 to 10"),
        ("max_failures = 1000\n", "key 'max_failures'"),
        ("check_accounts = 1\n", "key 'check_accounts' must be true or false"),
        ('socket_mode = "999"\n', "key 'socket_mode'"),
        ('unenrolled = "maybe"\n', "key 'unenrolled' must be one of"),
        ("socket = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_names_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "totpd.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        config.load(str(path))
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_bad_config_stops_the_daemon_with_one_line(tmp_path):
    path = tmp_path / "totpd.conf"
    path.write_text("window = -1\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    result = subprocess.run([sys.executable, "-m", "totpd", "--config", str(path)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "key 'window'" in result.stderr and str(path) in result.stderr
    missing = subprocess.run([sys.executable, "-m", "totpd", "--config", str(tmp_path / "nope.conf")], capture_output=True, text=True, env=env, timeout=30)
    assert missing.returncode == 1 and "cannot read the configuration" in missing.stderr


# -- sealing ------------------------------------------------------------------------


def test_sealed_secrets_open_only_with_their_key_and_their_account():
    sealer = Sealer(os.urandom(32))
    sealed = sealer.seal(b"seed", "secret:alice")
    assert sealer.open(sealed, "secret:alice") == b"seed"
    with pytest.raises(SealingError):
        sealer.open(sealed, "secret:bob")
    with pytest.raises(SealingError):
        Sealer(os.urandom(32)).open(sealed, "secret:alice")


def test_the_master_key_is_created_private_and_refused_when_others_can_read_it(tmp_path):
    path = tmp_path / "state" / "master.key"
    key = load_key(str(path), create=True)
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert load_key(str(path), create=False) == key
    path.chmod(0o644)
    with pytest.raises(SealingError, match="chmod 600"):
        load_key(str(path), create=False)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(SealingError, match="exactly 32 bytes"):
        load_key(str(path), create=False)


def test_hashlib_names_match_the_algorithms_we_offer():
    assert set(otp.ALGORITHMS) == {"SHA1", "SHA256", "SHA512"}
    assert otp.ALGORITHMS["SHA256"] is hashlib.sha256
