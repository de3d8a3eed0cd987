"""The one rule for a file that holds a secret (master key, database, password file)."""

from __future__ import annotations

import os
import stat


def private_file_problem(info: os.stat_result, what: str) -> str | None:
    """Why `what` (described by `info`) may not hold a secret, or None: it must be a
    regular file that neither group nor others can read or write."""
    if not stat.S_ISREG(info.st_mode):
        return f"{what} is not a regular file"
    if info.st_mode & 0o077:
        return f"{what} is readable by others; chmod 600 it"
    return None
