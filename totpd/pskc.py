"""Reader for RFC 6030 PSKC key containers: the files hardware-token vendors ship.

Pure parsing, like importers.py: a container becomes one `Imported` token per key
package (named from the device's serial number, owned by its `<UserId>` or by the
user `--user-map` gives the serial), plus notes for the admin. Secrets may be plain,
encrypted with a pre-shared AES key (§6.1) or with a key derived from a password by
PBKDF2 (§6.2); every encrypted value must carry an HMAC, checked before anything is
decrypted. Any fault refuses the whole file with one line naming the file and the
key package; no message ever holds a secret or a key.

The XML comes from outside, so a DTD is refused before the parser sees the file:
without a DTD there are no entity declarations, hence no entity expansion ("billion
laughs") and no external entities; expat (2.4 and later) also bounds amplification
itself. That is all defusedxml would add here, so it is not a dependency.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from . import otp
from .errors import ImportFileError, ProtocolError
from .importers import Imported, ImportResult
from .protocol import check_user

PSKC = "urn:ietf:params:xml:ns:keyprov:pskc"
DS = "http://www.w3.org/2000/09/xmldsig#"
XENC = "http://www.w3.org/2001/04/xmlenc#"
XENC11 = "http://www.w3.org/2009/xmlenc11#"
PKCS5 = "http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#"

# Bounds on what a hostile or broken file can make totpctl do.
MAX_FILE_BYTES = 64 * 1024 * 1024  # about 40,000 key packages
MAX_PBKDF2_ITERATIONS = 10_000_000
MAX_COUNTER = 2**63 - 1
TOKEN_NAME_MAX = 32

_OTP_ALGORITHMS = {
    f"{PSKC}:hotp": "hotp",
    f"{PSKC}:totp": "totp",
    f"{PSKC}#hotp": "hotp",  # drafts and some vendors
    f"{PSKC}#totp": "totp",
}
_PIN_ALGORITHM = f"{PSKC}:pin"
_CBC_KEY_BYTES = {f"{XENC}aes128-cbc": 16, f"{XENC}aes192-cbc": 24, f"{XENC}aes256-cbc": 32}
_MAC_DIGESTS = {
    f"{DS}hmac-sha1": hashlib.sha1,
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha224": hashlib.sha224,
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256": hashlib.sha256,
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha384": hashlib.sha384,
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha512": hashlib.sha512,
}
_PBKDF2 = f"{PKCS5}pbkdf2"
_PRF_HASHES = {
    f"{DS}hmac-sha1": hashes.SHA1,
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256": hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#hmac-sha512": hashes.SHA512,
}
_FORBIDDEN_MARKUP = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_ENCODING_DECLARATION = re.compile(r"""^\s*<\?xml[^>]*\bencoding\s*=\s*["']([^"']+)["']""")


class _Refused(Exception):
    """A fault inside one key package; pskc() adds the file and the package to it."""


@dataclasses.dataclass
class _Keys:
    """The container's decryption key (PSK or derived) and its MAC key, once known."""

    kind: str | None  # "psk", "password", or None (nothing encrypted, or certificates)
    name: str  # the file's own name for the key, for messages
    key: bytes | None = None
    mac_key: bytes | None = None
    mac_digest: object = None


def token_name(serial: str) -> str:
    """A token name from a device serial: lower case, [a-z0-9_.-] only, at most 32 characters."""
    return re.sub(r"[^a-z0-9_.-]", "-", serial.strip().lower())[:TOKEN_NAME_MAX]


def _read(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from None


def read_key_file(path: str) -> bytes:
    """The pre-shared key: hexadecimal (32, 48 or 64 digits, spaces and newlines ignored)."""
    text = re.sub(rb"\s", b"", _read(path, 4096))
    if not re.fullmatch(rb"[0-9A-Fa-f]+", text) or len(text) not in (32, 48, 64):
        raise ImportFileError(f"{path}: the key file must hold an AES key as 32, 48 or 64 hexadecimal digits")
    return binascii.unhexlify(text)


def read_password_file(path: str) -> bytes:
    """The password: the file's first line, without its line ending."""
    password = _read(path, 65536).split(b"\n", 1)[0].rstrip(b"\r")
    if not password:
        raise ImportFileError(f"{path}: the first line (the password) is empty")
    return password


def read_user_map(path: str) -> dict[str, str]:
    """`serial<TAB>user` lines (blank lines and # comments allowed) to {serial: user}."""
    mapping: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ImportFileError(f"{path}: not a text file") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip():
            raise ImportFileError(f"{path}:{number}: expected serial<TAB>user")
        serial = fields[0].strip()
        try:
            user = check_user(fields[1].strip())
        except ProtocolError as exc:
            raise ImportFileError(f"{path}:{number}: {exc}") from None
        if serial in mapping:
            raise ImportFileError(f"{path}:{number}: serial {serial} appears twice")
        mapping[serial] = user
    return mapping


def pskc(
    path: str, key: bytes | None = None, password: bytes | None = None, user_map: dict[str, str] | None = None
) -> ImportResult:
    """Read a PSKC file into tokens; raise ImportFileError for anything wrong with it."""
    if key is not None and password is not None:
        raise ImportFileError(f"{path}: give a key or a password, not both")
    root = _parse(path)
    notes: list[str] = []
    keys = _container_keys(path, root, key, password, notes)
    user_map = user_map or {}
    accounts: list[Imported] = []
    owner_of: dict[tuple[str, str], int] = {}
    serials: set[str] = set()
    for number, package in enumerate(root.findall(_q("KeyPackage")), start=1):
        serial = _text(package.find(f"{_q('DeviceInfo')}/{_q('SerialNo')}")) or "?"
        serials.add(serial)
        shown = re.sub(r"[^\x20-\x7e]", "?", serial)[:64]  # one printable line, whatever the file holds
        try:
            account = _package(package, serial, keys, user_map, notes, f"{path}: key package {number} (serial {shown})")
        except _Refused as exc:
            raise ImportFileError(f"{path}: key package {number} (serial {shown}): {exc}") from None
        if account is None:
            continue
        account.line = number
        where = (account.user, account.token)
        if where in owner_of:
            raise ImportFileError(
                f"{path}: key package {number} (serial {shown}): token '{account.token}' of {account.user}"
                f" is already key package {owner_of[where]}'s"
            )
        owner_of[where] = number
        accounts.append(account)
    if not accounts:
        raise ImportFileError(f"{path}: no HOTP or TOTP key package to import")
    unused = sorted(set(user_map) - serials)
    if unused:
        notes.append(f"{path}: {len(unused)} serial(s) of the user map are not in the file, e.g. {unused[0]}")
    return ImportResult(accounts, notes)


# -- the document ------------------------------------------------------------------


def _q(name: str, ns: str = PSKC) -> str:
    return f"{{{ns}}}{name}"


def _text(element: ET.Element | None) -> str:
    return "" if element is None or element.text is None else element.text.strip()


def _parse(path: str) -> ET.Element:
    raw = _read(path, MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ImportFileError(f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; split the file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFileError(f"{path}: not UTF-8 text; PSKC files are UTF-8") from None
    declared = _ENCODING_DECLARATION.match(text)
    if declared and declared.group(1).lower().replace("_", "-") not in ("utf-8", "us-ascii", "ascii"):
        raise ImportFileError(f"{path}: declares encoding {declared.group(1)}; only UTF-8 is read")
    # Refused before parsing: a DTD is the only way to declare entities, so no entity
    # can be expanded or fetched. PSKC (an XML Schema format) never needs one.
    if _FORBIDDEN_MARKUP.search(text):
        raise ImportFileError(f"{path}: holds a DTD or an entity declaration (<!DOCTYPE/<!ENTITY); refused")
    try:
        root = ET.fromstring(text)  # a str: expat reads it as UTF-8 whatever the declaration says
    except ET.ParseError as exc:
        line, column = exc.position
        raise ImportFileError(f"{path}:{line}: not well-formed XML (column {column + 1})") from None
    if root.tag != _q("KeyContainer"):
        raise ImportFileError(f"{path}: not a PSKC file (the root element is not {PSKC} KeyContainer)")
    if root.get("Version", "1.0") != "1.0":
        raise ImportFileError(f"{path}: PSKC version {root.get('Version')!r}; only version 1.0 is read")
    return root


def _container_keys(path: str, root: ET.Element, key: bytes | None, password: bytes | None, notes: list[str]) -> _Keys:
    """Work out the decryption key and the MAC key from the container's header."""
    if root.find(_q("Signature", DS)) is not None:
        notes.append(f"{path}: the file's XML signature is not checked; check its origin")
    encryption = root.find(_q("EncryptionKey"))
    keys = _Keys(None, "")
    if encryption is not None:
        derived = encryption.find(_q("DerivedKey", XENC11))
        if derived is not None:
            keys = _Keys("password", _text(derived.find(_q("MasterKeyName", XENC11))) or "a password")
            if key is not None:
                raise ImportFileError(f"{path}: encrypted with a key derived from a password; give --password-file, not --key-file")
            if password is not None:
                keys.key = _derive(path, derived, password)
        elif encryption.find(_q("X509Data", DS)) is not None:
            raise ImportFileError(
                f"{path}: encrypted to a certificate (RFC 6030 §6.3); totpctl reads pre-shared-key and password-encrypted files only"
            )
        else:
            keys = _Keys("psk", _text(encryption.find(_q("KeyName", DS))) or "a pre-shared key")
            if password is not None:
                raise ImportFileError(f"{path}: encrypted with a pre-shared key ({keys.name!r}); give --key-file, not --password-file")
            keys.key = key
    elif password is not None:
        raise ImportFileError(f"{path}: names no key derivation (EncryptionKey/DerivedKey); --password-file cannot be used")
    elif key is not None:
        keys = _Keys("psk", "", key)
    method = root.find(_q("MACMethod"))
    if method is not None and keys.key is not None:
        algorithm = method.get("Algorithm", "")
        if algorithm not in _MAC_DIGESTS:
            raise ImportFileError(f"{path}: MACMethod {algorithm!r} is not supported (HMAC-SHA1 or SHA-2 are)")
        keys.mac_digest = _MAC_DIGESTS[algorithm]
        mac_key = method.find(_q("MACKey"))
        if mac_key is None:
            raise ImportFileError(f"{path}: MACMethod holds no MACKey; cannot check the values' integrity")
        try:
            keys.mac_key = _decrypt(mac_key, keys.key)
        except _Refused as exc:
            raise ImportFileError(f"{path}: MACMethod/MACKey {exc}") from None
    if (key is not None or password is not None) and not any(root.iter(_q("EncryptedValue"))):
        notes.append(f"{path}: nothing in the file is encrypted; the key or password was not needed")
    return keys


def _derive(path: str, derived: ET.Element, password: bytes) -> bytes:
    method = derived.find(_q("KeyDerivationMethod", XENC11))
    if method is None or method.get("Algorithm") != _PBKDF2:
        raise ImportFileError(f"{path}: the key derivation is not PBKDF2 (RFC 6030 §6.2); cannot derive the key")
    params = method.find(_q("PBKDF2-params", PKCS5))
    if params is None:
        raise ImportFileError(f"{path}: PBKDF2 without PBKDF2-params")

    def part(parent: ET.Element | None, name: str) -> ET.Element | None:
        # Files write these children in the pkcs5 namespace, the PSKC one or none at all.
        for child in parent if parent is not None else ():
            if _local(child) == name:
                return child
        return None

    specified = part(part(params, "Salt"), "Specified")
    try:
        salt = _base64(_text(specified))
        iterations = int(_text(part(params, "IterationCount")))
        length = int(_text(part(params, "KeyLength")) or "16")
    except (_Refused, ValueError):
        raise ImportFileError(f"{path}: PBKDF2-params need Salt/Specified (base64), IterationCount and KeyLength") from None
    if not salt or not 1 <= iterations <= MAX_PBKDF2_ITERATIONS or length not in (16, 24, 32):
        raise ImportFileError(
            f"{path}: PBKDF2-params out of range (a salt, 1 to {MAX_PBKDF2_ITERATIONS} iterations, a 16, 24 or 32-byte key)"
        )
    prf = part(params, "PRF")
    prf_algorithm = prf.get("Algorithm", f"{DS}hmac-sha1") if prf is not None else f"{DS}hmac-sha1"
    if prf_algorithm not in _PRF_HASHES:
        raise ImportFileError(f"{path}: PBKDF2 PRF {prf_algorithm!r} is not supported (HMAC-SHA1, SHA256, SHA512 are)")
    return PBKDF2HMAC(algorithm=_PRF_HASHES[prf_algorithm](), length=length, salt=salt, iterations=iterations).derive(password)


# -- one key package ---------------------------------------------------------------


def _package(
    package: ET.Element, serial: str, keys: _Keys, user_map: dict[str, str], notes: list[str], where: str
) -> Imported | None:
    found = package.findall(_q("Key"))
    if not found:
        notes.append(f"{where}: holds no key; skipped")
        return None
    if len(found) > 1:
        raise _Refused("holds more than one Key")
    key = found[0]
    algorithm = key.get("Algorithm", "")
    if algorithm == _PIN_ALGORITHM:
        notes.append(f"{where}: a PIN, not an OTP key; not carried over (the password module asks for the first factor)")
        return None
    if algorithm not in _OTP_ALGORITHMS:
        raise _Refused(f"algorithm {algorithm[:80]!r} is neither HOTP nor TOTP")
    kind = _OTP_ALGORITHMS[algorithm]
    if serial == "?":
        raise _Refused("no DeviceInfo/SerialNo to name the token by")
    name = token_name(serial)
    if not name.strip("-"):
        raise _Refused("the serial number gives no usable token name")
    user = _owner(package, key, serial, user_map)

    parameters = key.find(_q("AlgorithmParameters"))
    digits, hash_name = 6, "SHA1"
    if parameters is not None:
        response = parameters.find(_q("ResponseFormat"))
        if response is not None:
            if response.get("Encoding", "DECIMAL").upper() != "DECIMAL":
                raise _Refused(f"response encoding {response.get('Encoding')!r}; only DECIMAL codes are supported")
            if response.get("CheckDigits", "false").lower() in ("true", "1"):
                raise _Refused("codes with a check digit are not supported")
            try:
                digits = int(response.get("Length", "6"))
            except ValueError:
                raise _Refused("ResponseFormat Length is not a number") from None
        hash_name = _suite_hash(_text(parameters.find(_q("Suite"))))

    data = key.find(_q("Data"))
    if data is None or data.find(_q("Secret")) is None:
        raise _Refused("no Data/Secret (keys derived on the device are not supported)")
    secret = _binary(data.find(_q("Secret")), keys)
    try:
        secret_text = otp.encode_secret(otp.decode_secret(otp.encode_secret(secret)))
    except ValueError as exc:
        raise _Refused(str(exc)) from None

    period, counter = 30, 0
    interval = data.find(_q("TimeInterval"))
    if interval is not None:
        period = _integer(interval, keys, "TimeInterval")
    if kind == "hotp":
        element = data.find(_q("Counter"))
        if element is not None:
            counter = _integer(element, keys, "Counter")  # the device's next moving factor
            if not 0 <= counter <= MAX_COUNTER:
                raise _Refused("Counter is out of range")
    else:
        drift = data.find(_q("TimeDrift"))
        if drift is not None and _integer(drift, keys, "TimeDrift") != 0:
            notes.append(f"{where}: its TimeDrift is not carried over; totpd's 'window' absorbs clock drift")
        if data.find(_q("Time")) is not None:
            notes.append(f"{where}: its Time is not carried over; totpd counts time steps from the Unix epoch")
    try:
        params = otp.Params(hash_name, digits, period)
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    if key.find(_q("Policy")) is not None:
        notes.append(f"{where}: its Policy (PIN, dates, usage limits) is not carried over")
    return Imported(
        user, secret_text, params.algorithm, params.digits, params.period, -1, None, 0,
        token=name, type=kind, counter=counter,
    )


def _owner(package: ET.Element, key: ET.Element, serial: str, user_map: dict[str, str]) -> str:
    """--user-map first (the admin's word), then the Key's UserId, then the device's."""
    if serial in user_map:
        return user_map[serial]
    user = _text(key.find(_q("UserId"))) or _text(package.find(f"{_q('DeviceInfo')}/{_q('UserId')}"))
    if not user:
        raise _Refused("no UserId and not in --user-map; add 'SERIAL<TAB>USER' to the user map")
    if "=" in user or "," in user:
        raise _Refused(f"UserId {user[:64]!r} looks like a directory name, not an account; map the serial with --user-map")
    try:
        return check_user(user)
    except ProtocolError as exc:
        raise _Refused(f"UserId: {exc}; map the serial with --user-map") from None


def _suite_hash(suite: str) -> str:
    """The hash of an HMAC-based OTP from AlgorithmParameters/Suite ('HMAC-SHA256', 'SHA-1', ...)."""
    if not suite:
        return "SHA1"
    name = suite.upper().replace("HMAC-", "").replace("HMAC", "").replace("-", "").strip()
    if name not in otp.ALGORITHMS:
        raise _Refused(f"Suite {suite[:40]!r} is not SHA1, SHA256 or SHA512")
    return name


# -- values: plain, or encrypted and MAC'd -------------------------------------------


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise _Refused("a value is not valid base64") from None


def _binary(element: ET.Element, keys: _Keys) -> bytes:
    plain, encrypted = element.find(_q("PlainValue")), element.find(_q("EncryptedValue"))
    if (plain is None) == (encrypted is None):
        raise _Refused(f"{_local(element)} needs exactly one of PlainValue and EncryptedValue")
    if plain is not None:
        return _base64(_text(plain))
    return _open(element, encrypted, keys)


def _integer(element: ET.Element, keys: _Keys, what: str) -> int:
    plain, encrypted = element.find(_q("PlainValue")), element.find(_q("EncryptedValue"))
    if (plain is None) == (encrypted is None):
        raise _Refused(f"{what} needs exactly one of PlainValue and EncryptedValue")
    if plain is not None:
        text = _text(plain)
        if not re.fullmatch(r"-?\d{1,19}", text):
            raise _Refused(f"{what} is not a whole number")
        return int(text)
    raw = _open(element, encrypted, keys)
    if not 1 <= len(raw) <= 8:
        raise _Refused(f"the encrypted {what} is not an integer of at most 8 bytes")
    return int.from_bytes(raw, "big", signed=what == "TimeDrift")


def _open(element: ET.Element, encrypted: ET.Element, keys: _Keys) -> bytes:
    """Check the value's MAC over IV||ciphertext (RFC 6030 §6.1.1), then decrypt it."""
    if keys.key is None:
        what = _local(element)
        if keys.kind == "password":
            raise _Refused(f"{what} is encrypted with a key derived from {keys.name!r}: give --password-file")
        raise _Refused(f"{what} is encrypted with {keys.name or 'a pre-shared key'!r}: give --key-file")
    mac = element.find(_q("ValueMAC"))
    if mac is None:
        raise _Refused("an encrypted value without a ValueMAC; an unauthenticated ciphertext is refused")
    if keys.mac_key is None:
        raise _Refused("an encrypted value, and the file has no MACMethod with a MACKey to check it")
    cipher_value = _cipher_value(encrypted)
    expected = hmac.new(keys.mac_key, cipher_value, keys.mac_digest).digest()  # type: ignore[arg-type]
    if not hmac.compare_digest(expected, _base64(_text(mac))):
        raise _Refused("MAC mismatch: the file was changed, or the key or password is wrong")
    return _decrypt(encrypted, keys.key)


def _cipher_value(encrypted: ET.Element) -> bytes:
    value = encrypted.find(f"{_q('CipherData', XENC)}/{_q('CipherValue', XENC)}")
    if value is None:
        raise _Refused("an encrypted value without CipherData/CipherValue")
    return _base64(_text(value))


def _decrypt(encrypted: ET.Element, key: bytes) -> bytes:
    """AES-CBC as xmlenc has it: a 16-byte IV, then the ciphertext; PKCS#7 padding, stripped strictly."""
    method = encrypted.find(_q("EncryptionMethod", XENC))
    algorithm = method.get("Algorithm", "") if method is not None else ""
    if algorithm not in _CBC_KEY_BYTES:
        raise _Refused(f"encryption {algorithm or 'not named'!r} is not supported (AES-128/192/256-CBC are)")
    if len(key) != _CBC_KEY_BYTES[algorithm]:
        raise _Refused(f"{algorithm.rsplit('#', 1)[-1]} needs a {_CBC_KEY_BYTES[algorithm]}-byte key, and the key is {len(key)} bytes")
    raw = _cipher_value(encrypted)
    if len(raw) < 32 or len(raw) % 16:
        raise _Refused("the ciphertext is not an IV and whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= 16 or padded[-pad:] != bytes([pad]) * pad:
        raise _Refused("does not decrypt: the key or the password is wrong, or the file is damaged")
    return padded[:-pad]


def _local(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]
