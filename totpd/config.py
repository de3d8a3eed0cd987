"""The daemon's configuration: one TOML file, one loader, safe defaults.

Every key is declared once in `_KEYS` with its type, default and check; the loader
refuses unknown keys and wrong types with one line naming the key and the file.
docs/configuration.md documents the same keys (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from typing import Any, Callable

from .errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/totpd/totpd.conf"


@dataclasses.dataclass(frozen=True)
class Config:
    socket: str = "/run/totpd/totpd.sock"
    socket_mode: int = 0o660
    socket_group: str = ""
    database: str = "/var/lib/totpd/totpd.db"
    key_file: str = "/var/lib/totpd/master.key"
    admin_group: str = ""
    issuer: str = ""
    check_accounts: bool = True
    self_enroll: bool = False
    unenrolled: str = "deny"
    window: int = 1
    max_failures: int = 20
    backoff_after: int = 3
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    recovery_codes: int = 10
    read_timeout: float = 5.0
    max_connections: int = 1024
    max_connections_per_uid: int = 32
    audit: str = "auto"
    log_level: str = "info"
    path: str = ""  # where this configuration came from (not a key)

    @property
    def issuer_name(self) -> str:
        return self.issuer or socket.gethostname()


def _mode(value: Any) -> int:
    if isinstance(value, str):
        value = int(value, 8)
    if not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError("must be an octal permission string such as \"0660\"")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("must be a positive number")
    return float(value)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value

    return check


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _path(value: Any) -> str:
    value = _string(value)
    if not value or "\0" in value:
        raise ValueError("must be a non-empty path")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(f'"{c}"' for c in choices))
        return value

    return check


_KEYS: dict[str, Callable[[Any], Any]] = {
    "socket": _path,
    "socket_mode": _mode,
    "socket_group": _string,
    "database": _path,
    "key_file": _path,
    "admin_group": _string,
    "issuer": _string,
    "check_accounts": _boolean,
    "self_enroll": _boolean,
    "unenrolled": _choice("deny", "allow"),
    "window": _int_range(0, 10),
    "max_failures": _int_range(1, 100),
    "backoff_after": _int_range(1, 100),
    "backoff_initial": _positive_number,
    "backoff_max": _positive_number,
    "recovery_codes": _int_range(1, 50),
    "read_timeout": _positive_number,
    "max_connections": _int_range(1, 65536),
    "max_connections_per_uid": _int_range(1, 65536),
    "audit": _choice("auto", "syslog", "stderr"),
    "log_level": _choice("debug", "info", "warning", "error"),
}


def parse(data: dict[str, Any], path: str) -> Config:
    """Check a parsed TOML table and turn it into a Config."""
    values: dict[str, Any] = {}
    for key, raw in data.items():
        check = _KEYS.get(key)
        if check is None:
            raise ConfigError(f"{path}: unknown key '{key}' (see docs/configuration.md)")
        try:
            values[key] = check(raw)
        except ValueError as exc:
            raise ConfigError(f"{path}: key '{key}' {exc}") from None
    config = Config(path=path, **values)
    if config.backoff_max < config.backoff_initial:
        raise ConfigError(f"{path}: key 'backoff_max' must not be below 'backoff_initial'")
    return config


def load(path: str) -> Config:
    """Read and check the configuration file at `path`."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


def known_keys() -> list[str]:
    return list(_KEYS)


def environment_credential_path() -> str | None:
    """Where systemd put the master key credential (LoadCredential=), if it did."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    candidate = os.path.join(directory, "totpd.key")
    return candidate if os.path.exists(candidate) else None
