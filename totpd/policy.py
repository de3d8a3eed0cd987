"""Policy: who must use a second factor, and how failures are throttled.

Pure decisions from configuration, account state and the clock; no I/O. The
service asks; this module answers.
"""

from __future__ import annotations

import dataclasses
import math

from .config import Config


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # a reply status of docs/protocol.md
    message: str = ""


class Policy:
    def __init__(self, config: Config) -> None:
        self._config = config

    def unenrolled(self, user: str, service: str) -> Outcome:
        """What happens to an account that has no active enrollment."""
        if self._config.unenrolled == "allow":
            return Outcome("IGNORE")
        return Outcome(
            "DENIED",
            "Two-factor login is required but no authenticator is enrolled for this account;"
            f" ask an administrator to run: totpctl enroll {user}",
        )

    def after_failure(self, failures: int, now: float) -> tuple[float, bool]:
        """Backoff deadline and hard-lock flag after the `failures`-th consecutive failure.

        The first `backoff_after - 1` failures cost nothing; from then on each one
        doubles the wait (backoff_initial, 2x, 4x, ... capped at backoff_max); at
        `max_failures` the account locks until an admin unlocks it.
        """
        config = self._config
        if failures >= config.max_failures:
            return 0.0, True
        if failures < config.backoff_after:
            return 0.0, False
        exponent = failures - config.backoff_after
        delay = config.backoff_initial * (2 ** min(exponent, 62))
        return now + min(delay, config.backoff_max), False

    @staticmethod
    def locked_message(user: str, locked: bool, locked_until: float, now: float) -> str:
        if locked:
            return (
                "This account is locked after too many wrong codes;"
                f" ask an administrator to run: totpctl unlock {user}"
            )
        wait = max(1, math.ceil(locked_until - now))
        return f"Too many wrong codes: try again in {wait} second{'s' if wait != 1 else ''}."
