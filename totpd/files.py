"""The rules for the daemon's own files and directories (master key, database, socket).

A file that holds a secret must be the daemon's alone; so must the directory that
holds it or the socket, since whoever can write there can swap what the daemon
opens or what its clients connect to.
"""

from __future__ import annotations

import os
import stat


def _owner_problem(info: os.stat_result) -> str | None:
    if info.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {info.st_uid}, not root or this daemon's user (uid {os.geteuid()}); chown it"
    return None


def private_file_problem(info: os.stat_result, what: str) -> str | None:
    """Why `what` (described by `info`) may not hold a secret, or None: it must be a
    regular file of root or the daemon's user that neither group nor others can read or write."""
    if not stat.S_ISREG(info.st_mode):
        return f"{what} is not a regular file"
    if owner := _owner_problem(info):
        return f"{what} {owner}"
    if info.st_mode & 0o077:
        return f"{what} is readable by others; chmod 600 it"
    return None


def directory_problem(path: str, what: str) -> str | None:
    """Why the directory `path` may not hold `what`, or None: it must be a directory of
    root or the daemon's user that neither group nor others can write. A missing one is
    no problem (the daemon creates it, as its own)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: cannot check the directory of {what}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path}: the directory of {what} is not a directory"
    if owner := _owner_problem(info):
        return f"{path}: the directory of {what} {owner}"
    if info.st_mode & 0o022:
        return f"{path}: the directory of {what} is writable by group or others; chmod go-w it"
    return None


def parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))
