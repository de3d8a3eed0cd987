"""Secrets at rest: AES-256-GCM under one master key.

A sealed value is `version byte || 12-byte nonce || ciphertext+tag`. The associated
data binds each sealed secret to its account and purpose, so a secret cannot be
moved from one row to another without the open failing. A database copied without
the key yields no secret.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SealingError
from .files import directory_problem, parent, private_file_problem

if TYPE_CHECKING:
    from .store import Transaction

KEY_BYTES = 32
NONCE_BYTES = 12
_FORMAT = b"\x01"
KEY_CHECK = b"totpd master key check"


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SealingError(f"the master key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return _FORMAT + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != _FORMAT:
            raise SealingError("a sealed value in the store is malformed")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], context.encode())
        except InvalidTag:
            raise SealingError("a sealed value does not open with this master key") from None


def secret_context(user: str) -> str:
    """The associated data that binds a sealed TOTP secret to its account."""
    return "secret:" + user


def key_check(sealer: Sealer) -> "Callable[[Transaction], None]":
    """A store start-up unit: prove the master key opens this database (or mark a new one)."""

    def check(tx: "Transaction") -> None:
        sealed = tx.get_meta("key_check")
        if sealed is None:
            tx.set_meta("key_check", sealer.seal(KEY_CHECK, "key-check"))
            return
        try:
            opened = sealer.open(sealed, "key-check")
        except SealingError:
            opened = None
        if opened != KEY_CHECK:
            raise SealingError("the master key does not open this database (wrong key file?)")

    return check


def load_key(path: str, create: bool) -> bytes:
    """Read the master key; create it (0600, 32 random bytes) when `create` and it is missing."""
    if problem := directory_problem(parent(path), "the master key"):
        raise SealingError(problem)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            raise SealingError(f"{path}: the master key is missing") from None
        return _create_key(path)
    except OSError as exc:
        raise SealingError(f"{path}: cannot read the master key: {exc.strerror}") from None
    try:
        if problem := private_file_problem(os.fstat(fd), "the master key"):
            raise SealingError(f"{path}: {problem}")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise SealingError(f"{path}: the master key must be exactly {KEY_BYTES} bytes, found {len(key)}")
    return key


def load_credential(path: str) -> bytes:
    """Read a key that systemd handed over with LoadCredential= (already protected by systemd)."""
    try:
        with open(path, "rb") as handle:
            key = handle.read(KEY_BYTES + 1)
    except OSError as exc:
        raise SealingError(f"{path}: cannot read the master key credential: {exc.strerror}") from None
    if len(key) != KEY_BYTES:
        raise SealingError(f"{path}: the master key must be exactly {KEY_BYTES} bytes, found {len(key)}")
    return key


def _create_key(path: str) -> bytes:
    key = os.urandom(KEY_BYTES)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SealingError(f"{path}: cannot create the master key: {exc.strerror}") from None
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key
