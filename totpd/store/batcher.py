"""The event loop's door to the store: units of work a batch per loop turn, reads at once.

Every unit submitted during one turn of the event loop goes to the store as one
batch: one transaction and one commit (one fsync) for all of them. A store that
can run a batch in the loop's thread (SQLite) runs and commits it there and then,
and the requests that arrive meanwhile form the next batch; otherwise (PostgreSQL,
or SQLite's own thread busy with work from elsewhere) the store answers from its
threads with one wake-up of the loop per answer. A read runs at once, outside any
batch: nothing waits for a commit that has nothing to make durable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Callable

from . import Outcome, Reader, Settle, Store, Transaction, resolve

log = logging.getLogger("totpd")


class Batcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[Callable[[Transaction], object], Settle]] = []
        self._scheduled = False

    def submit(self, work: Callable[[Transaction], object]) -> asyncio.Future:
        """A future of `work`'s value (or exception), resolved after its batch's commit."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((work, functools.partial(resolve, future)))
        self._schedule(loop)
        return future

    def read(self, work: Callable[[Reader], object]) -> asyncio.Future:
        """A future of read-only `work`'s value (or exception): no transaction, no commit.
        With SQLite it is run, and the future resolved, before this returns."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        settle = functools.partial(resolve, future)
        if not self.store.read_here(work, settle):

            def answer(read: concurrent.futures.Future) -> None:  # in the store's thread
                error = read.exception()
                loop.call_soon_threadsafe(settle, None if error else read.result(), error)

            self.store.read(work).add_done_callback(answer)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        units = [work for work, _ in batch]
        answer = functools.partial(self._settle, batch)
        if not self.store.run_batch_here(units, answer):
            self.store.submit_batch(units, lambda outcomes: loop.call_soon_threadsafe(answer, outcomes))

    @staticmethod
    def _settle(batch: list[tuple[object, Settle]], outcomes: list[Outcome]) -> None:
        for index, value, error in outcomes:
            try:
                batch[index][1](value, error)
            except Exception:  # one caller's bug must not leave the rest of the batch unanswered
                log.exception("internal error while answering a store unit")
