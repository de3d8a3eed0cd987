"""Worker threads for the service's blocking work, one pool per kind of wait.

NSS lookups (which may wait on a directory service) and argon2 hashing (tens of
milliseconds of CPU each, and reachable by any local user with a recovery-shaped
code) each get their own bounded pool, so a flood of one can never queue ahead of
the other, nor of the logins the event loop answers meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, TypeVar

from .errors import BusyError

T = TypeVar("T")


class Worker:
    """A fixed pool of threads and a cap on the jobs waiting for one."""

    def __init__(self, name: str, threads: int, max_waiting: int) -> None:
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._max = threads + max_waiting
        self._queued = 0

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` on one of the pool's threads; BusyError if too many already wait."""
        if self._queued >= self._max:
            raise BusyError(f"too many {self.name} jobs waiting")
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)
        finally:
            self._queued -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
