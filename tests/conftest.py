"""Fixtures shared by every test: a real totpd process on a temp socket."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))  # the shared test helpers
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon_fixtures import backend, daemon, make_daemon, pg_database, postgres  # noqa: E402,F401
