"""The benchmark's own tests (bench/test_bench.py) use the suite's daemon fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests" / "helpers"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parents[1]))

from daemon_fixtures import backend, daemon, make_daemon, pg_database, postgres  # noqa: E402,F401
