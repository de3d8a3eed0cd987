"""Workers (totpd/workers.py): a bounded pool per kind of wait."""

from __future__ import annotations

import asyncio
import threading

import pytest

from totpd.errors import BusyError
from totpd.workers import Worker


def test_jobs_past_the_bound_are_refused_busy_and_the_rest_run():
    release = threading.Event()
    worker = Worker("argon2", threads=1, max_waiting=2)

    async def scenario() -> list[object]:
        jobs = [asyncio.ensure_future(worker.run(release.wait, 10)) for _ in range(3)]  # one runs, two wait
        await asyncio.sleep(0.05)
        with pytest.raises(BusyError, match="too many argon2 jobs waiting"):
            await worker.run(release.wait, 10)
        release.set()
        return await asyncio.gather(*jobs)

    try:
        assert asyncio.run(scenario()) == [True, True, True]
    finally:
        worker.close()


def test_a_worker_runs_its_jobs_on_its_own_threads():
    worker = Worker("nss", threads=2, max_waiting=0)
    try:
        name = asyncio.run(worker.run(lambda: threading.current_thread().name))
        assert name.startswith("nss")
    finally:
        worker.close()
