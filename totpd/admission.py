"""Admission: how many clients the daemon serves at once, in total and per uid.

One `Admission` is shared by both doors, so a uid's socket connections and its D-Bus
calls in flight count against one cap (`max_connections_per_uid`), and everything
against `max_connections`. Root is capped only by the total: the PAM module asks as
root for every login on the host.
"""

from __future__ import annotations

from collections import Counter


class Admission:
    """Counts what each uid holds; `admit` takes a place, `release` gives it back."""

    def __init__(self, total: int, per_uid: int) -> None:
        self._limit = total
        self._per_uid = per_uid
        self._total = 0
        self._held: Counter[int] = Counter()

    def admit(self, uid: int) -> bool:
        """Take a place for `uid`; False, taking nothing, when a cap is reached."""
        if self._total >= self._limit:
            return False
        if uid != 0 and self._held[uid] >= self._per_uid:
            return False
        self._total += 1
        self._held[uid] += 1
        return True

    def release(self, uid: int) -> None:
        self._total -= 1
        self._held[uid] -= 1
        if not self._held[uid]:
            del self._held[uid]
