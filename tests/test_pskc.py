"""PSKC (RFC 6030) key containers: plain, pre-shared-key and password encrypted, as vendors ship them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from totpd import otp, pskc
from totpd.errors import ImportFileError

RFC_SECRET = b"12345678901234567890"  # the secret of every RFC 6030 example (and of RFC 4226's vectors)
PSKC_NS = 'xmlns="urn:ietf:params:xml:ns:keyprov:pskc"'
NAMESPACES = (
    f'{PSKC_NS} xmlns:ds="http://www.w3.org/2000/09/xmldsig#" xmlns:xenc="http://www.w3.org/2001/04/xmlenc#"'
    ' xmlns:xenc11="http://www.w3.org/2009/xmlenc11#" xmlns:pkcs5="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#"'
)

# -- RFC 6030's own examples, from the RFC's text -----------------------------------

FIGURE_2 = f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" Id="exampleID1" {PSKC_NS}>
    <KeyPackage>
        <Key Id="12345678" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
            <Issuer>Issuer-A</Issuer>
            <Data>
                <Secret>
                    <PlainValue>MTIzNA==
                    </PlainValue>
                </Secret>
            </Data>
        </Key>
    </KeyPackage>
</KeyContainer>
"""

FIGURE_3 = f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" Id="exampleID1" {PSKC_NS}>
    <KeyPackage>
        <DeviceInfo>
            <Manufacturer>Manufacturer</Manufacturer>
            <SerialNo>987654321</SerialNo>
            <UserId>DC=example-bank,DC=net</UserId>
        </DeviceInfo>
        <CryptoModuleInfo>
            <Id>CM_ID_001</Id>
        </CryptoModuleInfo>
        <Key Id="12345678" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
            <Issuer>Issuer</Issuer>
            <AlgorithmParameters>
                <ResponseFormat Length="8" Encoding="DECIMAL"/>
            </AlgorithmParameters>
            <Data>
                <Secret>
                    <PlainValue>MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=
                    </PlainValue>
                </Secret>
                <Counter>
                    <PlainValue>0</PlainValue>
                </Counter>
            </Data>
            <UserId>UID=jsmith,DC=example-bank,DC=net</UserId>
        </Key>
    </KeyPackage>
</KeyContainer>
"""

FIGURE_5 = f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" Id="exampleID1" {PSKC_NS}>
    <KeyPackage>
        <DeviceInfo>
            <Manufacturer>Manufacturer</Manufacturer>
            <SerialNo>987654321</SerialNo>
        </DeviceInfo>
        <CryptoModuleInfo>
            <Id>CM_ID_001</Id>
        </CryptoModuleInfo>
        <Key Id="12345678" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
            <Issuer>Issuer</Issuer>
            <AlgorithmParameters>
                <ResponseFormat Length="8" Encoding="DECIMAL"/>
            </AlgorithmParameters>
            <Data>
                <Secret>
                    <PlainValue>MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=
                    </PlainValue>
                </Secret>
                <Counter>
                    <PlainValue>0</PlainValue>
                </Counter>
            </Data>
            <Policy>
                <PINPolicy MinLength="4" MaxLength="4"
                    PINKeyId="123456781" PINEncoding="DECIMAL"
                    PINUsageMode="Local"/>
                <KeyUsage>OTP</KeyUsage>
            </Policy>
        </Key>
    </KeyPackage>
    <KeyPackage>
        <DeviceInfo>
            <Manufacturer>Manufacturer</Manufacturer>
            <SerialNo>987654321</SerialNo>
        </DeviceInfo>
        <CryptoModuleInfo>
            <Id>CM_ID_001</Id>
        </CryptoModuleInfo>
        <Key Id="123456781" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:pin">
            <Issuer>Issuer</Issuer>
            <AlgorithmParameters>
                <ResponseFormat Length="4" Encoding="DECIMAL"/>
            </AlgorithmParameters>
            <Data>
                <Secret>
                    <PlainValue>MTIzNA==</PlainValue>
                </Secret>
            </Data>
        </Key>
    </KeyPackage>
</KeyContainer>
"""

# Figure 6: AES-128-CBC with the pre-shared key 12345678901234567890123456789012 (hex);
# the MAC key 1122334455667788990011223344556677889900 is encrypted with it.
FIGURE_6_KEY = bytes.fromhex("12345678901234567890123456789012")
FIGURE_6 = """<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0"
    xmlns="urn:ietf:params:xml:ns:keyprov:pskc"
    xmlns:ds="http://www.w3.org/2000/09/xmldsig#"
    xmlns:xenc="http://www.w3.org/2001/04/xmlenc#">
    <EncryptionKey>
        <ds:KeyName>Pre-shared-key</ds:KeyName>
    </EncryptionKey>
    <MACMethod Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1">
        <MACKey>
            <xenc:EncryptionMethod
            Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
            <xenc:CipherData>
                <xenc:CipherValue>
    ESIzRFVmd4iZABEiM0RVZgKn6WjLaTC1sbeBMSvIhRejN9vJa2BOlSaMrR7I5wSX
                </xenc:CipherValue>
            </xenc:CipherData>
        </MACKey>
    </MACMethod>
    <KeyPackage>
        <DeviceInfo>
            <Manufacturer>Manufacturer</Manufacturer>
            <SerialNo>987654321</SerialNo>
        </DeviceInfo>
        <CryptoModuleInfo>
            <Id>CM_ID_001</Id>
        </CryptoModuleInfo>
        <Key Id="12345678"
            Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
            <Issuer>Issuer</Issuer>
            <AlgorithmParameters>
                <ResponseFormat Length="8" Encoding="DECIMAL"/>
            </AlgorithmParameters>
            <Data>
                <Secret>
                    <EncryptedValue>
                        <xenc:EncryptionMethod
                        Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
                        <xenc:CipherData>
                            <xenc:CipherValue>
    AAECAwQFBgcICQoLDA0OD+cIHItlB3Wra1DUpxVvOx2lef1VmNPCMl8jwZqIUqGv
                            </xenc:CipherValue>
                        </xenc:CipherData>
                    </EncryptedValue>
                    <ValueMAC>Su+NvtQfmvfJzF6bmQiJqoLRExc=
                    </ValueMAC>
                </Secret>
                <Counter>
                    <PlainValue>0</PlainValue>
                </Counter>
            </Data>
        </Key>
    </KeyPackage>
</KeyContainer>
"""

# Figure 7: the key derived from the password "qwerty" by PBKDF2 (1000 iterations).
FIGURE_7 = """<?xml version="1.0" encoding="UTF-8"?>
<pskc:KeyContainer
  xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc"
  xmlns:xenc11="http://www.w3.org/2009/xmlenc11#"
  xmlns:pkcs5="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#"
  xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" Version="1.0">
    <pskc:EncryptionKey>
        <xenc11:DerivedKey>
            <xenc11:KeyDerivationMethod
              Algorithm="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2">
                <pkcs5:PBKDF2-params>
                    <Salt>
                        <Specified>Ej7/PEpyEpw=</Specified>
                    </Salt>
                    <IterationCount>1000</IterationCount>
                    <KeyLength>16</KeyLength>
                    <PRF/>
                </pkcs5:PBKDF2-params>
            </xenc11:KeyDerivationMethod>
            <xenc:ReferenceList>
                <xenc:DataReference URI="#ED"/>
            </xenc:ReferenceList>
            <xenc11:MasterKeyName>My Password 1</xenc11:MasterKeyName>
        </xenc11:DerivedKey>
    </pskc:EncryptionKey>
    <pskc:MACMethod
        Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1">
        <pskc:MACKey>
            <xenc:EncryptionMethod
            Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
            <xenc:CipherData>
                <xenc:CipherValue>
2GTTnLwM3I4e5IO5FkufoOEiOhNj91fhKRQBtBJYluUDsPOLTfUvoU2dStyOwYZx
                </xenc:CipherValue>
            </xenc:CipherData>
        </pskc:MACKey>
    </pskc:MACMethod>
    <pskc:KeyPackage>
        <pskc:DeviceInfo>
            <pskc:Manufacturer>TokenVendorAcme</pskc:Manufacturer>
            <pskc:SerialNo>987654321</pskc:SerialNo>
        </pskc:DeviceInfo>
        <pskc:CryptoModuleInfo>
            <pskc:Id>CM_ID_001</pskc:Id>
        </pskc:CryptoModuleInfo>
        <pskc:Key Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp" Id="123456">
            <pskc:Issuer>Example-Issuer</pskc:Issuer>
            <pskc:AlgorithmParameters>
                <pskc:ResponseFormat Length="8" Encoding="DECIMAL"/>
            </pskc:AlgorithmParameters>
            <pskc:Data>
                <pskc:Secret>
                <pskc:EncryptedValue Id="ED">
                    <xenc:EncryptionMethod
                        Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
                        <xenc:CipherData>
                            <xenc:CipherValue>
      oTvo+S22nsmS2Z/RtcoF8Hfh+jzMe0RkiafpoDpnoZTjPYZu6V+A4aEn032yCr4f
                        </xenc:CipherValue>
                    </xenc:CipherData>
                    </pskc:EncryptedValue>
                    <pskc:ValueMAC>LP6xMvjtypbfT9PdkJhBZ+D6O4w=
                    </pskc:ValueMAC>
                </pskc:Secret>
            </pskc:Data>
        </pskc:Key>
    </pskc:KeyPackage>
</pskc:KeyContainer>
"""


def _figure_10_package(serial: str, key_id: int, start: str, expiry: str) -> str:
    return f"""
    <KeyPackage>
        <DeviceInfo>
            <Manufacturer>TokenVendorAcme</Manufacturer>
            <SerialNo>{serial}</SerialNo>
        </DeviceInfo>
        <Key Id="{key_id}" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
            <Issuer>Issuer</Issuer>
            <AlgorithmParameters>
                <ResponseFormat Length="8" Encoding="DECIMAL"/>
            </AlgorithmParameters>
            <Data>
                <Secret>
                    <PlainValue>
                        MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=
                    </PlainValue>
                </Secret>
                <Counter>
                    <PlainValue>0</PlainValue>
                </Counter>
            </Data>
            <Policy>
                <StartDate>{start}</StartDate>
                <ExpiryDate>{expiry}</ExpiryDate>
            </Policy>
        </Key>
    </KeyPackage>"""


# Figure 10 (bulk provisioning): four packages, two of them for device 9999999 (its key for March, then April).
FIGURE_10 = (
    f'<?xml version="1.0" encoding="UTF-8"?>\n<KeyContainer Version="1.0" {PSKC_NS}>'
    + _figure_10_package("654321", 1, "2006-05-01T00:00:00Z", "2006-05-31T00:00:00Z")
    + _figure_10_package("123456", 2, "2006-05-01T00:00:00Z", "2006-05-31T00:00:00Z")
    + _figure_10_package("9999999", 3, "2006-03-01T00:00:00Z", "2006-03-31T00:00:00Z")
    + _figure_10_package("9999999", 4, "2006-04-01T00:00:00Z", "2006-04-30T00:00:00Z")
    + "\n</KeyContainer>\n"
)


# -- building containers in the test, with `cryptography` ---------------------------


class Sealer:
    """Encrypts values as RFC 6030 §6.1 says: AES-CBC, IV||ciphertext, HMAC over both."""

    def __init__(self, key: bytes, mac_key: bytes | None = None) -> None:
        self.key = key
        self.mac_key = mac_key or os.urandom(20)
        self.method = f"http://www.w3.org/2001/04/xmlenc#aes{len(key) * 8}-cbc"

    def cipher_value(self, plain: bytes) -> bytes:
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plain) + padder.finalize()
        iv = os.urandom(16)
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        return iv + encryptor.update(padded) + encryptor.finalize()

    def encrypted(self, plain: bytes, tag: str = "EncryptedValue") -> str:
        value = base64.b64encode(self.cipher_value(plain)).decode()
        return (
            f'<{tag}><xenc:EncryptionMethod Algorithm="{self.method}"/>'
            f"<xenc:CipherData><xenc:CipherValue>{value}</xenc:CipherValue></xenc:CipherData></{tag}>"
        )

    def value(self, plain: bytes) -> str:
        """An EncryptedValue and its ValueMAC."""
        raw = self.cipher_value(plain)
        mac = base64.b64encode(hmac.new(self.mac_key, raw, hashlib.sha1).digest()).decode()
        value = base64.b64encode(raw).decode()
        return (
            f'<EncryptedValue><xenc:EncryptionMethod Algorithm="{self.method}"/>'
            f"<xenc:CipherData><xenc:CipherValue>{value}</xenc:CipherValue></xenc:CipherData></EncryptedValue>"
            f"<ValueMAC>{mac}</ValueMAC>"
        )

    def mac_method(self) -> str:
        return (
            '<MACMethod Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1">'
            + self.encrypted(self.mac_key, "MACKey")
            + "</MACMethod>"
        )


def package(
    serial: str, secret: bytes, *, kind: str = "hotp", user: str | None = None, digits: int = 6,
    counter: int | None = None, period: int | None = None, suite: str | None = None, sealer: Sealer | None = None,
) -> str:
    def value(plain: bytes) -> str:
        return sealer.value(plain) if sealer else f"<PlainValue>{base64.b64encode(plain).decode()}</PlainValue>"

    def integer(number: int) -> str:
        return sealer.value(number.to_bytes(8, "big")) if sealer else f"<PlainValue>{number}</PlainValue>"

    parts = [f"<Secret>{value(secret)}</Secret>"]
    if counter is not None:
        parts.append(f"<Counter>{integer(counter)}</Counter>")
    if period is not None:
        parts.append(f"<TimeInterval>{integer(period)}</TimeInterval>")
    suite_xml = f"<Suite>{suite}</Suite>" if suite else ""
    user_xml = f"<UserId>{user}</UserId>" if user else ""
    return (
        f"<KeyPackage><DeviceInfo><Manufacturer>Acme</Manufacturer><SerialNo>{serial}</SerialNo></DeviceInfo>"
        f'<Key Id="{serial}" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:{kind}">'
        f'<AlgorithmParameters>{suite_xml}<ResponseFormat Length="{digits}" Encoding="DECIMAL"/></AlgorithmParameters>'
        f"<Data>{''.join(parts)}</Data>{user_xml}</Key></KeyPackage>"
    )


def container(*packages: str, header: str = "") -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<KeyContainer Version="1.0" {NAMESPACES}>{header}{"".join(packages)}</KeyContainer>\n'


def psk_header(sealer: Sealer) -> str:
    return f"<EncryptionKey><ds:KeyName>Acme transport key</ds:KeyName></EncryptionKey>{sealer.mac_method()}"


def password_header(sealer: Sealer, salt: bytes, iterations: int, prf: str = "") -> str:
    prf_xml = f'<PRF Algorithm="{prf}"/>' if prf else "<PRF/>"
    return (
        "<EncryptionKey><xenc11:DerivedKey>"
        '<xenc11:KeyDerivationMethod Algorithm="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2">'
        f"<pkcs5:PBKDF2-params><Salt><Specified>{base64.b64encode(salt).decode()}</Specified></Salt>"
        f"<IterationCount>{iterations}</IterationCount><KeyLength>{len(sealer.key)}</KeyLength>{prf_xml}</pkcs5:PBKDF2-params>"
        "</xenc11:KeyDerivationMethod><xenc11:MasterKeyName>Acme password</xenc11:MasterKeyName></xenc11:DerivedKey></EncryptionKey>"
        + sealer.mac_method()
    )


def write(tmp_path, text: str, name: str = "tokens.pskcxml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(path: str, *what: str, **options) -> str:
    with pytest.raises(ImportFileError) as caught:
        pskc.pskc(path, **options)
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "\n" not in message
    for part in what:
        assert part in message, message
    return message


def oathtool(secret: bytes, *options: str) -> str:
    return subprocess.run(["oathtool", *options, secret.hex()], capture_output=True, text=True, check=True).stdout.strip()


def code_of(account, *, counter: int | None = None, at: float | None = None) -> str:
    """The code totpd will compute for the imported token."""
    secret = otp.decode_secret(account.secret)
    if account.type == "hotp":
        return otp.hotp(secret, account.counter if counter is None else counter, account.digits, account.algorithm.lower())
    params = otp.Params(account.algorithm, account.digits, account.period)
    return otp.hotp(secret, otp.time_step(at, params), params.digits, params.algorithm.lower())


# -- the RFC's examples -------------------------------------------------------------


def test_rfc6030_figure3_needs_a_user_map_for_its_directory_user_id_then_gives_oathtools_codes(tmp_path):
    path = write(tmp_path, FIGURE_3)
    refused(path, "key package 1 (serial 987654321)", "UID=jsmith", "--user-map")
    [account] = pskc.pskc(path, user_map={"987654321": "jsmith"}).accounts
    assert (account.user, account.token, account.type, account.counter, account.digits) == ("jsmith", "987654321", "hotp", 0, 8)
    assert otp.decode_secret(account.secret) == RFC_SECRET
    for counter in (0, 1, 7):
        assert code_of(account, counter=counter) == oathtool(RFC_SECRET, "--hotp", "-d", "8", "-c", str(counter))


def test_rfc6030_figure2_has_no_serial_to_name_its_token(tmp_path):
    refused(write(tmp_path, FIGURE_2), "key package 1 (serial ?)", "SerialNo", user_map={"?": "alice"})


def test_rfc6030_figure5_imports_the_hotp_key_and_leaves_the_pin_out(tmp_path):
    result = pskc.pskc(write(tmp_path, FIGURE_5), user_map={"987654321": "alice"})
    [account] = result.accounts
    assert (account.type, account.digits, account.line) == ("hotp", 8, 1)
    assert any("key package 2" in note and "PIN" in note for note in result.notes)
    assert any("key package 1" in note and "Policy" in note for note in result.notes)


def test_rfc6030_figure6_pre_shared_key(tmp_path):
    path = write(tmp_path, FIGURE_6)
    [account] = pskc.pskc(path, key=FIGURE_6_KEY, user_map={"987654321": "alice"}).accounts
    assert otp.decode_secret(account.secret) == RFC_SECRET
    assert code_of(account) == oathtool(RFC_SECRET, "--hotp", "-d", "8", "-c", "0")
    refused(path, "key package 1 (serial 987654321)", "--key-file", "'Pre-shared-key'", user_map={"987654321": "alice"})
    refused(path, "--key-file, not --password-file", password=b"qwerty")


def test_rfc6030_figure7_password_based(tmp_path):
    path = write(tmp_path, FIGURE_7)
    [account] = pskc.pskc(path, password=b"qwerty", user_map={"987654321": "alice"}).accounts
    assert otp.decode_secret(account.secret) == RFC_SECRET
    assert (account.type, account.digits, account.counter) == ("hotp", 8, 0)
    refused(path, "--password-file", "'My Password 1'", user_map={"987654321": "alice"})
    refused(path, "--password-file, not --key-file", key=FIGURE_6_KEY)


def test_rfc6030_figure7_with_a_wrong_password_is_refused(tmp_path):
    message = refused(write(tmp_path, FIGURE_7), password=b"qwertz", user_map={"987654321": "alice"})
    assert "wrong" in message


def test_rfc6030_figure10_gives_one_device_two_keys_which_is_refused_as_one_name_twice(tmp_path):
    path = write(tmp_path, FIGURE_10)
    users = {"654321": "alice", "123456": "bob", "9999999": "carol"}
    refused(path, "key package 4 (serial 9999999)", "token '9999999' of carol", "key package 3", user_map=users)


# -- containers built here ------------------------------------------------------------


def test_a_plain_totp_key_with_sha256_eight_digits_and_sixty_seconds_agrees_with_oathtool(tmp_path):
    secret = os.urandom(32)
    path = write(tmp_path, container(package("TOTP-0001", secret, kind="totp", user="alice", digits=8, period=60, suite="HMAC-SHA256")))
    [account] = pskc.pskc(path).accounts
    assert (account.user, account.token, account.type) == ("alice", "totp-0001", "totp")
    assert (account.algorithm, account.digits, account.period, account.last_step) == ("SHA256", 8, 60, -1)
    now = time.time()
    expected = oathtool(secret, "--totp=sha256", "-d", "8", "-s", "60s", f"--now=@{int(now)}")
    assert code_of(account, at=now) == expected


@pytest.mark.parametrize("key_bytes", [16, 24, 32])
def test_pre_shared_key_encryption_with_aes_128_192_256_and_an_encrypted_counter(tmp_path, key_bytes):
    sealer = Sealer(os.urandom(key_bytes))
    secret = os.urandom(20)
    text = container(
        package("HW-1", secret, user="alice", counter=42, sealer=sealer),
        package("HW-2", os.urandom(20), kind="totp", user="alice", sealer=sealer),
        header=psk_header(sealer),
    )
    first, second = pskc.pskc(write(tmp_path, text), key=sealer.key).accounts
    assert (first.token, first.type, first.counter) == ("hw-1", "hotp", 42)
    assert otp.decode_secret(first.secret) == secret
    assert code_of(first) == oathtool(secret, "--hotp", "-c", "42")
    assert (second.token, second.type, second.user) == ("hw-2", "totp", "alice")


def test_password_based_encryption_with_pbkdf2(tmp_path):
    salt, password = os.urandom(16), b"correct horse"
    key = PBKDF2HMAC(algorithm=hashes.SHA256(), length=16, salt=salt, iterations=2000).derive(password)
    sealer = Sealer(key)
    secret = os.urandom(20)
    header = password_header(sealer, salt, 2000, prf="http://www.w3.org/2001/04/xmldsig-more#hmac-sha256")
    path = write(tmp_path, container(package("PB-1", secret, user="bob", counter=3, sealer=sealer), header=header))
    [account] = pskc.pskc(path, password=password).accounts
    assert otp.decode_secret(account.secret) == secret and account.counter == 3
    assert code_of(account) == oathtool(secret, "--hotp", "-c", "3")
    refused(path, "wrong", password=b"incorrect horse")


def test_a_tampered_ciphertext_fails_its_mac_and_the_whole_file_is_refused(tmp_path):
    sealer = Sealer(os.urandom(16))
    secret = os.urandom(20)
    good = package("GOOD-1", os.urandom(20), user="alice", sealer=sealer)
    bad = package("BAD-2", secret, user="bob", sealer=sealer)
    start = bad.index("<xenc:CipherValue>") + len("<xenc:CipherValue>")
    raw = bytearray(base64.b64decode(bad[start : bad.index("</xenc:CipherValue>")]))
    raw[20] ^= 0x01  # one bit of the ciphertext
    bad = bad[:start] + base64.b64encode(bytes(raw)).decode() + bad[bad.index("</xenc:CipherValue>") :]
    path = write(tmp_path, container(good, bad, header=psk_header(sealer)))
    message = refused(path, "key package 2 (serial BAD-2)", "MAC mismatch", key=sealer.key)
    for shown in (secret.hex(), base64.b64encode(secret).decode(), otp.encode_secret(secret), sealer.key.hex()):
        assert shown not in message


def test_a_changed_mac_and_a_missing_mac_are_refused(tmp_path):
    sealer = Sealer(os.urandom(16))
    text = container(package("T-1", os.urandom(20), user="alice", sealer=sealer), header=psk_header(sealer))
    start = text.index("<ValueMAC>") + len("<ValueMAC>")
    other = base64.b64encode(os.urandom(20)).decode()
    changed = text[:start] + other + text[text.index("</ValueMAC>") :]
    refused(write(tmp_path, changed, "changed.xml"), "key package 1 (serial T-1)", "MAC mismatch", key=sealer.key)
    missing = text[: text.index("<ValueMAC>")] + text[text.index("</ValueMAC>") + len("</ValueMAC>") :]
    refused(write(tmp_path, missing, "missing.xml"), "key package 1", "without a ValueMAC", key=sealer.key)


def test_a_wrong_pre_shared_key_is_refused(tmp_path):
    sealer = Sealer(os.urandom(16))
    path = write(tmp_path, container(package("T-1", os.urandom(20), user="alice", sealer=sealer), header=psk_header(sealer)))
    message = refused(path, key=os.urandom(16))
    assert "wrong" in message
    refused(path, "needs a 16-byte key", key=os.urandom(32))


def test_malformed_xml_is_refused_with_its_line(tmp_path):
    text = container(package("T-1", os.urandom(20), user="alice")).replace("</Data>", "</Dat>")
    refused(write(tmp_path, text), "not well-formed XML")
    path = write(tmp_path, "<html><body>not PSKC</body></html>", "other.xml")
    refused(path, "not a PSKC file")


@pytest.mark.parametrize(
    "prolog",
    [
        '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>',
        '<!DOCTYPE KeyContainer [<!ENTITY passwd SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE KeyContainer SYSTEM "http://192.0.2.1/pskc.dtd">',
    ],
    ids=["billion-laughs", "external-entity", "external-dtd"],
)
def test_a_dtd_is_refused_before_parsing(tmp_path, prolog):
    body = container(package("T-1", os.urandom(20), user="&lol3;" if "lol" in prolog else "alice"))
    text = body.replace("?>\n", "?>\n" + prolog + "\n", 1)
    refused(write(tmp_path, text), "DTD")


def test_a_key_package_without_a_user_is_named(tmp_path):
    text = container(package("A-1", os.urandom(20), user="alice"), package("B-2", os.urandom(20)))
    path = write(tmp_path, text)
    refused(path, "key package 2 (serial B-2)", "no UserId", "--user-map")
    users = [account.user for account in pskc.pskc(path, user_map={"B-2": "bob"}).accounts]
    assert users == ["alice", "bob"]


def test_the_user_map_wins_over_the_files_user_id(tmp_path):
    path = write(tmp_path, container(package("A-1", os.urandom(20), user="alice")))
    [account] = pskc.pskc(path, user_map={"A-1": "carol", "Z-9": "dave"}).accounts
    assert account.user == "carol"


def test_two_serials_that_give_one_token_name_for_one_user_are_refused(tmp_path):
    text = container(package("AB 1", os.urandom(20), user="alice"), package("ab/1", os.urandom(20), user="alice"))
    refused(write(tmp_path, text), "key package 2 (serial ab/1)", "token 'ab-1' of alice", "key package 1")
    ok = container(package("AB 1", os.urandom(20), user="alice"), package("ab/1", os.urandom(20), user="bob"))
    assert [a.token for a in pskc.pskc(write(tmp_path, ok, "ok.xml")).accounts] == ["ab-1", "ab-1"]


def test_token_names_from_serials():
    assert pskc.token_name("Yubi#0042/ÄX") == "yubi-0042--x"
    assert pskc.token_name("a" * 40) == "a" * 32
    assert pskc.token_name("  SN_1.2-3 ") == "sn_1.2-3"


def test_keys_that_are_neither_hotp_nor_totp_are_refused(tmp_path):
    text = container(package("OC-1", os.urandom(20), user="alice")).replace("pskc:hotp", "pskc:ocra")
    refused(write(tmp_path, text), "key package 1 (serial OC-1)", "neither HOTP nor TOTP")


def test_a_short_secret_and_a_seven_digit_code_are_refused(tmp_path):
    refused(write(tmp_path, container(package("S-1", b"1234", user="alice")), "short.xml"), "shorter than 80 bits")
    refused(write(tmp_path, container(package("S-2", os.urandom(20), user="alice", digits=7)), "seven.xml"), "digits must be 6 or 8")


def test_user_map_key_file_and_password_file(tmp_path):
    users = tmp_path / "users.tsv"
    users.write_text("# serial\tuser\nHW-1\talice\n\nHW-2\tbob\n")
    assert pskc.read_user_map(str(users)) == {"HW-1": "alice", "HW-2": "bob"}
    users.write_text("HW-1\talice\nHW-1 bob\n")
    with pytest.raises(ImportFileError, match=rf"^{users}:2: expected serial<TAB>user$"):
        pskc.read_user_map(str(users))
    key = tmp_path / "key.hex"
    key.write_text("12345678 90123456 78901234 56789012\n")
    assert pskc.read_key_file(str(key)) == FIGURE_6_KEY
    key.write_bytes(os.urandom(16) + b"\xff")
    with pytest.raises(ImportFileError, match="hexadecimal"):
        pskc.read_key_file(str(key))
    password = tmp_path / "password"
    password.write_bytes(b"qwerty\r\nsecond line\n")
    assert pskc.read_password_file(str(password)) == b"qwerty"
    password.write_text("\n")
    with pytest.raises(ImportFileError, match="empty"):
        pskc.read_password_file(str(password))
