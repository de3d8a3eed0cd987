"""The systemd glue: readiness and watchdog messages (sd_notify), and socket activation.

All are no-ops when systemd is not there, so the daemon runs the same by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from .errors import SocketError

SD_LISTEN_FDS_START = 3


def sd_notify(message: str) -> None:
    """Send one sd_notify(3) datagram if systemd (or a test) listens on NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), address)


async def watchdog() -> None:
    """Ping systemd's watchdog at half its interval, for as long as the loop runs, if it
    asked this process to (WATCHDOG_USEC, WATCHDOG_PID): a wedged loop stops pinging."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return
    interval = int(usec) / 1e6 / 2
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def systemd_socket() -> socket.socket | None:
    """The listening socket systemd handed over (LISTEN_FDS/LISTEN_PID), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    if count > 1:
        raise SocketError(f"systemd passed {count} sockets; totpd listens on exactly one")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise SocketError("the socket systemd passed is not a Unix stream socket")
    os.set_inheritable(sock.fileno(), False)
    return sock
