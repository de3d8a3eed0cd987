"""Secrets at rest (totpd/sealing.py): sealed to a key and an account; the key file private.
"""

from __future__ import annotations

import os

import pytest

from totpd.errors import SealingError
from totpd.sealing import Sealer, load_key

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
