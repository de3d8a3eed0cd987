"""Policy: who must use a second factor, what an unenrolled login gets, what a lock says.

Pure decisions from configuration, account facts and the clock; no I/O (the
service looks up group membership and hands it in). An enrolled account always
needs its code; policy decides only for accounts with no active enrollment.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import math
from typing import Callable

from .config import Config, ServicePolicy


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # a reply status of docs/protocol.md
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Rules:
    """The policy in force for one PAM service (global keys, then [services.NAME])."""

    required_users: tuple[str, ...]
    required_groups: tuple[str, ...]
    exempt_users: tuple[str, ...]
    exempt_groups: tuple[str, ...]
    unenrolled: str
    allow_until: datetime.date | None
    remember_host: int
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    enroll_at_login: bool
    sudo_grace: int

    @property
    def needs_groups(self) -> bool:
        return bool(self.required_groups or self.exempt_groups)


class Policy:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._global = Rules(
            config.required_users,
            config.required_groups,
            config.exempt_users,
            config.exempt_groups,
            config.unenrolled,
            config.allow_until,
            config.remember_host,
            config.trusted_networks,
            config.enroll_at_login,
            config.sudo_grace,
        )
        self._by_service = {name: self._merge(override) for name, override in config.services.items()}

    def _merge(self, override: ServicePolicy) -> Rules:
        changes = {field.name: getattr(override, field.name) for field in dataclasses.fields(override)}
        changes = {key: value for key, value in changes.items() if value is not None}
        if override.allow_until is not None and override.unenrolled is None:
            changes["unenrolled"] = "allow_until"
        return dataclasses.replace(self._global, **changes)

    def rules(self, service: str) -> Rules:
        return self._by_service.get(service, self._global)

    @staticmethod
    def trusted(rules: Rules, rhost: str) -> bool:
        """Is `rhost` an address inside one of the rules' trusted networks?

        Only an address literal counts: a host name is the client's to choose (sshd's
        UseDNS), and an empty rhost (local sudo, the console) is no network at all.
        """
        if not rules.trusted_networks or not rhost:
            return False
        try:
            address = ipaddress.ip_address(rhost)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:192.0.2.7 from a dual-stack socket is 192.0.2.7
        return any(address in network for network in rules.trusted_networks)

    @staticmethod
    def required(rules: Rules, user: str, groups: frozenset[str]) -> bool:
        """Must this account use a second factor? Exemptions win; no requirement list means everyone."""
        if user in rules.exempt_users or groups & set(rules.exempt_groups):
            return False
        if not rules.required_users and not rules.required_groups:
            return True
        return user in rules.required_users or bool(groups & set(rules.required_groups))

    def unenrolled(self, rules: Rules, user: str, groups: frozenset[str], today: datetime.date) -> Outcome:
        """What a login of an account with no active enrollment gets."""
        if not self.required(rules, user, groups):
            return Outcome("IGNORE")
        how = "run: totpctl enroll" if self._config.self_enroll else f"ask an administrator to run: totpctl enroll {user}"
        if rules.unenrolled == "allow":
            return Outcome("IGNORE")
        if rules.unenrolled == "allow_until" and rules.allow_until is not None and today < rules.allow_until:
            days = (rules.allow_until - today).days
            when = "tomorrow" if days == 1 else f"in {days} days"
            return Outcome(
                "IGNORE",
                f"Two-factor login becomes mandatory on {rules.allow_until.isoformat()} ({when}); to enroll, {how}",
            )
        if rules.unenrolled == "allow_until" and rules.allow_until is not None:
            return Outcome(
                "DENIED",
                f"Two-factor login is mandatory since {rules.allow_until.isoformat()} and no authenticator"
                f" is enrolled for this account; {how}",
            )
        return Outcome("DENIED", f"Two-factor login is required but no authenticator is enrolled for this account; {how}")

    @staticmethod
    def locked_message(user: str, locked: bool, locked_until: float, now: float) -> str:
        if locked and locked_until > now:
            minutes = max(1, math.ceil((locked_until - now) / 60))
            return (
                f"This account is locked after too many wrong codes for {minutes} more minute{'s' if minutes != 1 else ''};"
                f" or ask an administrator to run: totpctl unlock {user}"
            )
        if locked:
            return (
                "This account is locked after too many wrong codes;"
                f" ask an administrator to run: totpctl unlock {user}"
            )
        wait = max(1, math.ceil(locked_until - now))
        return f"Too many wrong codes: try again in {wait} second{'s' if wait != 1 else ''}."


def local_today(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now).date()


class RememberedHosts:
    """Logins that may skip the code: (account, service, rhost) -> until when. In memory only.

    Off unless `remember_host` > 0. Forgotten on restart and on any failure, reset,
    lock or re-enrollment of the account; never used for an empty rhost.
    """

    MAX_ENTRIES = 100_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self._until: dict[tuple[str, str, str], float] = {}
        self._clock = clock

    def remember(self, user: str, service: str, rhost: str, seconds: int) -> None:
        if seconds <= 0 or not rhost:
            return
        if len(self._until) >= self.MAX_ENTRIES:
            now = self._clock()
            self._until = {key: until for key, until in self._until.items() if until > now}
            if len(self._until) >= self.MAX_ENTRIES:
                return
        self._until[(user, service, rhost)] = self._clock() + seconds

    def recalls(self, user: str, service: str, rhost: str) -> bool:
        until = self._until.get((user, service, rhost))
        if until is None:
            return False
        if until <= self._clock():
            del self._until[(user, service, rhost)]
            return False
        return True

    def forget(self, user: str) -> None:
        for key in [key for key in self._until if key[0] == user]:
            del self._until[key]
