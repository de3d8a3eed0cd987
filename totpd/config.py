"""The daemon's configuration: one TOML file, one loader, safe defaults.

Every key is declared once in `_KEYS` with its type, default and check; the loader
refuses unknown keys and wrong types with one line naming the key and the file.
docs/configuration.md documents the same keys (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
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
    database_password_file: str = ""
    database_pool_size: int = 4
    database_timeout: float = 2.0
    key_file: str = "/var/lib/totpd/master.key"
    admin_group: str = ""
    issuer: str = ""
    check_accounts: bool = True
    self_enroll: bool = False
    unenrolled: str = "deny"
    allow_until: datetime.date | None = None
    required_users: tuple[str, ...] = ()
    required_groups: tuple[str, ...] = ()
    exempt_users: tuple[str, ...] = ()
    exempt_groups: tuple[str, ...] = ()
    remember_host: int = 0
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    enroll_at_login: bool = False
    sudo_grace: int = 0  # docs/pam.md "sudo inside a session": totpd/grace.py
    enroll_at_login_timeout: int = 600
    services: dict[str, "ServicePolicy"] = dataclasses.field(default_factory=dict)
    smtp: "SmtpConfig | None" = None
    window: int = 1
    max_failures: int = 20
    max_tokens: int = 8
    hotp_window: int = 10
    hotp_resync_window: int = 1000
    max_skew: int = 3
    host_clock_accounts: int = 3
    host_clock_window: int = 3600
    lock_duration: int = 0
    backoff_after: int = 3
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    recovery_codes: int = 10
    read_timeout: float = 5.0
    max_connections: int = 1024
    max_connections_per_uid: int = 32
    audit: str = "auto"
    log_level: str = "info"
    dbus: str = "system"
    path: str = ""  # where this configuration came from (not a key)

    @property
    def issuer_name(self) -> str:
        return self.issuer or socket.gethostname()


@dataclasses.dataclass(frozen=True)
class ServicePolicy:
    """The policy keys one PAM service overrides ([services.NAME]); None: as globally."""

    required_users: tuple[str, ...] | None = None
    required_groups: tuple[str, ...] | None = None
    exempt_users: tuple[str, ...] | None = None
    exempt_groups: tuple[str, ...] | None = None
    unenrolled: str | None = None
    allow_until: datetime.date | None = None
    remember_host: int | None = None
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    enroll_at_login: bool | None = None
    sudo_grace: int | None = None


@dataclasses.dataclass(frozen=True)
class SmtpConfig:
    """Where notification mail goes ([smtp]); absent: no mail."""

    host: str
    sender: str
    port: int = 25
    starttls: bool = True
    username: str = ""
    password_file: str = ""
    timeout: float = 10.0
    address_template: str = ""
    address_file: str = ""
    events: tuple[str, ...] = ("enroll", "reset", "recovery_code_used", "locked")


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


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError("must be a list of names, e.g. [\"alice\", \"bob\"]")
    return tuple(value)


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError('must be a list of networks, e.g. ["192.0.2.0/24", "2001:db8::/32"]')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:  # "10.0.0.1/8" included: a typo there would trust too much or too little
            raise ValueError(f"lists '{item}', which is not a network address with a prefix length ({exc})") from None
    return tuple(networks)


def _date(value: Any) -> datetime.date:
    if isinstance(value, datetime.datetime):
        raise ValueError("must be a date such as 2026-12-15 (no time of day)")
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError("must be a date such as 2026-12-15")


def _seconds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 30 * 86400:
        raise ValueError("must be a whole number of seconds from 0 to 2592000 (30 days)")
    return value


_UNENROLLED = ("deny", "allow", "allow_until")
_SMTP_EVENTS = ("enroll", "reset", "recovery_code_used", "locked")


class _NestedError(ValueError):
    """An error inside a table ([services.X], [smtp]); its text already names the key."""


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be a table")
    return value


def _sub_keys(table: dict[str, Any], checks: dict[str, Callable[[Any], Any]], where: str) -> dict[str, Any]:
    """Check every key of `table`; errors name the key with its table (`where`, "" at the top)."""
    out: dict[str, Any] = {}
    for key, raw in table.items():
        name = f"{where}.{key}" if where else key
        check = checks.get(key)
        if check is None:
            raise _NestedError(f"unknown key '{name}' (see docs/configuration.md)")
        try:
            out[key] = check(raw)
        except _NestedError:
            raise
        except ValueError as exc:
            raise _NestedError(f"key '{name}' {exc}") from None
    return out


def _services(value: Any) -> dict[str, ServicePolicy]:
    checks = {key: _KEYS[key] for key in _SERVICE_KEYS}
    services: dict[str, ServicePolicy] = {}
    for name, table in _table(value).items():
        if not isinstance(table, dict):
            raise _NestedError(f"key 'services.{name}' must be a table: [services.{name}]")
        services[name] = ServicePolicy(**_sub_keys(table, checks, f"services.{name}"))
    return services


def _smtp(value: Any) -> SmtpConfig:
    checks: dict[str, Callable[[Any], Any]] = {
        "host": _string,
        "from": _string,
        "port": _int_range(1, 65535),
        "starttls": _boolean,
        "username": _string,
        "password_file": _string,
        "timeout": _positive_number,
        "address_template": _string,
        "address_file": _string,
        "events": _events,
    }
    values = _sub_keys(_table(value), checks, "smtp")
    if not values.get("host") or not values.get("from"):
        raise _NestedError("table [smtp] needs at least 'host' and 'from'")
    if not values.get("address_template") and not values.get("address_file"):
        raise _NestedError("table [smtp] needs 'address_template' (e.g. \"{user}@example.com\") or 'address_file'")
    if values.get("address_template") and "{user}" not in values["address_template"]:
        raise _NestedError("key 'smtp.address_template' must contain {user}")
    values["sender"] = values.pop("from")
    return SmtpConfig(**values)


def _events(value: Any) -> tuple[str, ...]:
    names = _names(value)
    for name in names:
        if name not in _SMTP_EVENTS:
            raise ValueError("must list events among " + ", ".join(_SMTP_EVENTS))
    return names


def _dbus(value: Any) -> str:
    if not isinstance(value, str) or not (value in ("system", "off") or ":" in value) or "\0" in value:
        raise ValueError('must be "system", "off" or a D-Bus address such as "unix:path=/run/totpd-test/bus"')
    return value


def _host_clock_accounts(value: Any) -> int:
    # One account's agreement is its own phone's drift, never the host's clock.
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or 2 <= value <= 10000):
        raise ValueError("must be 0 (off) or a whole number of accounts from 2 to 10000")
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
    "database_password_file": _string,
    "database_pool_size": _int_range(1, 64),
    "database_timeout": _positive_number,
    "key_file": _path,
    "admin_group": _string,
    "issuer": _string,
    "check_accounts": _boolean,
    "self_enroll": _boolean,
    "unenrolled": _choice(*_UNENROLLED),
    "allow_until": _date,
    "required_users": _names,
    "required_groups": _names,
    "exempt_users": _names,
    "exempt_groups": _names,
    "remember_host": _seconds,
    "trusted_networks": _networks,
    "enroll_at_login": _boolean,
    "enroll_at_login_timeout": _int_range(60, 86400),
    "sudo_grace": _seconds,
    "services": _services,
    "smtp": _smtp,
    "window": _int_range(0, 10),
    "max_failures": _int_range(1, 100),
    "max_tokens": _int_range(1, 64),
    "hotp_window": _int_range(0, 100),
    "hotp_resync_window": _int_range(1, 100000),
    "max_skew": _int_range(0, 10),
    "host_clock_accounts": _host_clock_accounts,
    "host_clock_window": _int_range(60, 86400),
    "lock_duration": _seconds,
    "backoff_after": _int_range(1, 100),
    "backoff_initial": _positive_number,
    "backoff_max": _positive_number,
    "recovery_codes": _int_range(1, 50),
    "read_timeout": _positive_number,
    "max_connections": _int_range(1, 65536),
    "max_connections_per_uid": _int_range(1, 65536),
    "audit": _choice("auto", "syslog", "stderr"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "dbus": _dbus,
}


_SERVICE_KEYS = (
    "required_users", "required_groups", "exempt_users", "exempt_groups", "unenrolled", "allow_until", "remember_host",
    "trusted_networks", "enroll_at_login", "sudo_grace",
)


def _check_rollout(unenrolled: str | None, allow_until: datetime.date | None, where: str) -> None:
    if unenrolled == "allow_until" and allow_until is None:
        raise ValueError(f"'{where}unenrolled = \"allow_until\"' needs '{where}allow_until = YYYY-MM-DD'")


def parse(data: dict[str, Any], path: str) -> Config:
    """Check a parsed TOML table and turn it into a Config."""
    try:
        values = _sub_keys(data, _KEYS, "")
    except _NestedError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    # A deadline alone means "allow until the deadline".
    if "allow_until" in values and "unenrolled" not in values:
        values["unenrolled"] = "allow_until"
    try:
        _check_rollout(values.get("unenrolled"), values.get("allow_until"), "")
        for name, service in values.get("services", {}).items():
            unenrolled = service.unenrolled or ("allow_until" if service.allow_until else None)
            _check_rollout(unenrolled, service.allow_until or values.get("allow_until"), f"services.{name}.")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
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
