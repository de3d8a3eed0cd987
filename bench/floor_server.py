#!/usr/bin/env python3
"""The floor: the least a Python daemon can do for a PAM login, to measure it by.

    floor_server.py SOCKET [--durable FILE] [--asyncio | --totpd-server]

Speaks totpd's framing (docs/protocol.md) on SOCKET with canned answers: `check`
gets NEED_CODE, every other request ACCEPTED; no parsing beyond the verb, no store,
no crypto, no audit line. One thread on a bare epoll loop, no asyncio. With
`--durable`, the verifications that arrived in one turn of the loop are answered
only after one 4 KiB write and fdatasync of FILE: a group commit and nothing else.
With `--asyncio`, the same on asyncio's loop as totpd/server.py drives it (a reader
callback per connection, a task per verification awaiting its batch's commit): the
difference between the two is what the standard machinery costs a login. With
`--totpd-server`, totpd's own socket server (totpd/server.py: its connections,
framing, limits, request decoding and a task per request) in front of a service
that gives the same canned answers after the same group commit: the difference
between it and the daemon is what the service's work costs (docs/performance.md).

bench/bench.py drives it with pam_totpd and bench/pamdrive exactly as it drives
totpd, so the rows it makes are a ceiling for any single-process Python daemon on
this machine, beside google-authenticator in the same run (docs/performance.md).
Never a daemon to run: it accepts every code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import struct
import sys


def frame(payload: bytes) -> bytes:
    return b"TD\x01\x00" + struct.pack(">I", len(payload)) + payload


NEED_CODE = frame(b"NEED_CODE\nprompt=Verification code: \n")
ACCEPTED = frame(b"ACCEPTED\n")


def serve(path: str, durable: str | None) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    listener.listen(512)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    log_fd = os.open(durable, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600) if durable else -1
    block = bytes(4096)
    connections: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        waiting: list[socket.socket] = []
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)  # as totpd does
                    connections[conn.fileno()] = conn
                    poller.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = connections[fd]
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                del connections[fd]
                conn.close()
            elif data[8:14] == b"check\n":
                conn.send(NEED_CODE)
            else:
                waiting.append(conn)
        if waiting and log_fd >= 0:
            os.pwrite(log_fd, block, 0)
            os.fdatasync(log_fd)
        for conn in waiting:
            conn.send(ACCEPTED)


class GroupCommit:
    """On asyncio: the verifications of one loop turn wait for one 4 KiB write and
    fdatasync of FILE (none without one)."""

    def __init__(self, durable: str | None) -> None:
        self.fd = os.open(durable, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600) if durable else -1
        self.block = bytes(4096)
        self.waiting: list[asyncio.Future] = []

    def wait(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if not self.waiting:
            loop.call_soon(self._commit)
        self.waiting.append(loop.create_future())
        return self.waiting[-1]

    def _commit(self) -> None:
        batch, self.waiting = self.waiting, []
        if self.fd >= 0:
            os.pwrite(self.fd, self.block, 0)
            os.fdatasync(self.fd)
        for future in batch:
            future.set_result(None)


async def serve_asyncio(path: str, durable: str | None) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    listener.listen(512)
    listener.setblocking(False)
    committed = GroupCommit(durable)
    tasks: set[asyncio.Task] = set()

    async def verify(conn: socket.socket) -> None:
        await committed.wait()
        conn.send(ACCEPTED)

    def readable(conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(conn.fileno())
            conn.close()
        elif data[8:14] == b"check\n":
            conn.send(NEED_CODE)
        else:
            task = loop.create_task(verify(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            loop.add_reader(conn.fileno(), readable, conn)

    loop.add_reader(listener.fileno(), accept)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_totpd_server(path: str, durable: str | None) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from totpd.admission import Admission
    from totpd.config import Config
    from totpd.protocol import Reply
    from totpd.server import Server

    committed = GroupCommit(durable)

    class Canned:
        """In place of totpd.service.Service: no identity step, store, crypto or audit."""

        async def handle(self, request, caller, session=None):  # noqa: ANN001, ANN201
            if request.verb == "check":
                return Reply("NEED_CODE", {"prompt": "Verification code: "})
            await committed.wait()
            return Reply("ACCEPTED", {})

    config = Config(max_connections=4096, max_connections_per_uid=4096)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    listener.listen(512)
    Server(config, Canned(), Admission(config.max_connections, config.max_connections_per_uid)).start(listener)  # type: ignore[arg-type]
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("socket")
    parser.add_argument("--durable", help="write and fdatasync this file once per batch of verifications")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--asyncio", action="store_true", help="serve on asyncio's event loop, a task per verification")
    how.add_argument("--totpd-server", action="store_true", help="serve through totpd/server.py, a canned service")
    args = parser.parse_args()
    if args.totpd_server:
        asyncio.run(serve_totpd_server(args.socket, args.durable))
    elif args.asyncio:
        asyncio.run(serve_asyncio(args.socket, args.durable))
    else:
        serve(args.socket, args.durable)
    return 0


if __name__ == "__main__":
    sys.exit(main())
