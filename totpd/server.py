"""The socket server: connections, framing limits, the accept loop and shut-down.

Every connection is bounded: one request at a time, a size limit checked before a
payload is read, a read timeout, and caps on connections in total and per uid.
Each complete frame becomes one request to the service; its reply goes back in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import struct
from collections import Counter
from typing import Callable

from . import __version__
from .authorization import Caller
from .config import Config
from .errors import FrameError, ProtocolError
from .protocol import HEADER_SIZE, MAX_REQUEST_PAYLOAD, Reply, Request, decode_request, encode_reply, parse_header
from .service import Service, Session, internal_error
from .systemd import sd_notify

log = logging.getLogger("totpd")

SHUTDOWN_GRACE = 10.0
# How far a client may pipeline ahead of the request being answered before reading pauses.
READ_AHEAD = 64 * 1024
READ_CHUNK = 64 * 1024
# Connections taken per wake-up of the listening socket, so a flood cannot starve replies.
ACCEPT_BATCH = 64

_BUSY = encode_reply(Reply("BUSY", {"message": "The two-factor service is busy; try again."}))


def _peer(sock: socket.socket) -> Caller:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Caller(pid, uid, gid)


class Connection:
    """One client: frames in, one request answered at a time, replies out in order.

    Plain non-blocking sockets on the event loop's reader/writer callbacks, with no
    transport, stream or task per connection, because the PAM module opens a
    connection per login and asyncio's accept path costs more than the verification
    itself. Limits: the announced length is
    checked before a payload is buffered; at most READ_AHEAD bytes beyond the request
    being answered are read (then reading stops until it is answered); the next reply
    is not started while the previous one is still queued; and a whole frame must
    arrive within `read_timeout` of the connection or of the previous reply
    (Daemon._sweep closes what is too slow, so dribbling bytes cannot extend it).
    """

    __slots__ = (
        "daemon", "sock", "fd", "caller", "buffer", "outgoing", "session",
        "busy", "eof", "closed", "reading", "deadline",
    )

    def __init__(self, daemon: "Daemon", sock: socket.socket, caller: Caller) -> None:
        self.daemon = daemon
        self.sock = sock
        self.fd = sock.fileno()
        self.caller = caller
        self.buffer = bytearray()
        self.outgoing = bytearray()  # reply bytes the socket did not take yet
        self.session = Session()  # per-connection state: a bulk import being staged
        self.busy = False  # a request is being answered
        self.eof = False
        self.closed = False
        self.reading = True
        self.deadline = daemon.loop.time() + daemon.config.read_timeout
        daemon._live.add(self)  # before the first read, which may already end it
        daemon.loop.add_reader(self.fd, self._readable)
        self._readable()  # a client writes as soon as it connects: often it already has

    # -- socket events --------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.eof = True
            self._stop_reading()
            if not self.busy:
                self._finish_input()
            return
        self.buffer += data
        if len(self.buffer) > READ_AHEAD:
            self._stop_reading()
        self._next()

    def _writable(self) -> None:
        self._flush()
        if not self.outgoing and not self.closed:
            self.daemon.loop.remove_writer(self.fd)
            self._next()
            if self.eof and not self.busy:
                self._finish_input()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.daemon.loop.remove_reader(self.fd)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.outgoing:
            self.outgoing += data
            return
        self.outgoing += data
        self._flush()
        if self.outgoing and not self.closed:
            self.daemon.loop.add_writer(self.fd, self._writable)

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the client went away: nothing more to say to it
            self.close()
            return
        del self.outgoing[:sent]

    # -- the work ---------------------------------------------------------------------------

    def _next(self) -> None:
        """Start answering the next complete frame in the buffer, if there is one."""
        if self.busy or self.closed or self.outgoing or len(self.buffer) < HEADER_SIZE:
            return
        try:
            length = parse_header(bytes(self.buffer[:HEADER_SIZE]), MAX_REQUEST_PAYLOAD)
        except FrameError as exc:
            log.warning("uid %d pid %d: malformed frame: %s", self.caller.uid, self.caller.pid, exc)
            self.buffer.clear()
            self.send(encode_reply(Reply("BAD_REQUEST", {"message": str(exc)})))
            self.close(linger=True)
            return
        end = HEADER_SIZE + length
        if len(self.buffer) < end:
            return
        payload = bytes(self.buffer[HEADER_SIZE:end])
        del self.buffer[:end]
        if not self.reading and not self.eof and len(self.buffer) <= READ_AHEAD:
            self.reading = True
            self.daemon.loop.add_reader(self.fd, self._readable)
        self.busy = True
        self.daemon.answer(payload, self.caller, self.session, self._replied)

    def _replied(self, reply: Reply) -> None:
        self.busy = False
        if self.closed:
            return
        self.send(encode_reply(reply))
        self.deadline = self.daemon.loop.time() + self.daemon.config.read_timeout
        if self.daemon._stopping.is_set():
            self.close(linger=True)
            return
        if self.buffer or self.eof:
            # The next pipelined frame (or the hang-up) on the next loop turn: answered
            # here, a run of frames that finish at once would recurse frame by frame.
            self.daemon.loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self.closed:
            return
        self._next()
        if self.eof and not self.busy:
            self._finish_input()

    def _finish_input(self) -> None:
        """The client sent its last byte: answer what is complete, then hang up."""
        self._next()
        if self.busy or self.outgoing:
            return  # _replied or _writable comes back here
        if self.buffer:
            log.warning("uid %d pid %d sent a truncated frame", self.caller.uid, self.caller.pid)
        self.close()

    def expire(self, now: float) -> None:
        """Close a connection whose next frame is overdue (called by Daemon._sweep)."""
        if self.busy or self.closed or now < self.deadline:
            return
        if self.buffer:
            log.warning("uid %d pid %d: timed out in the middle of a frame", self.caller.uid, self.caller.pid)
        self.close()

    def close(self, linger: bool = False) -> None:
        """Hang up; with `linger`, first let the queued reply go out (bounded by the sweep)."""
        if self.closed:
            return
        if linger and self.outgoing:
            self._stop_reading()
            self.eof = True  # _writable closes once the reply is out
            self.deadline = min(self.deadline, self.daemon.loop.time() + self.daemon.config.read_timeout)
            return
        self.closed = True
        loop = self.daemon.loop
        if self.reading:
            loop.remove_reader(self.fd)
        if self.outgoing:
            loop.remove_writer(self.fd)
        self.sock.close()
        self.daemon._release(self)


class Daemon:
    def __init__(self, config: Config, service: Service) -> None:
        self.config = config
        self.service = service
        self._connections: Counter[int] = Counter()
        self._total = 0
        self._live: set[Connection] = set()
        self._listener: socket.socket = None  # type: ignore[assignment]  # set by serve()
        self._accepting = True
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()  # requests being answered
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by serve()

    async def serve(self, sock: socket.socket, owns_path: bool) -> None:
        self.loop = asyncio.get_running_loop()
        eager_tasks(self.loop)
        sock.setblocking(False)
        self._listener = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._stopping.set)
        log.info("listening on %s (protocol 1, totpd %s)", self.config.socket, __version__)
        # -- D-Bus (docs/dbus.md): optional; without a bus the socket serves alone.
        bus_api = None
        if self.config.dbus != "off":
            from . import dbusapi

            bus_api = await dbusapi.start(self.config, self.service)
        # -- end D-Bus
        freeze_startup_heap()
        sd_notify("READY=1\nSTATUS=serving")
        chores = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._sweep())]
        try:
            await self._stopping.wait()
        finally:
            sd_notify("STOPPING=1")
            log.info("stopping: finishing requests in flight")
            for chore in chores:
                chore.cancel()
            self._stop_accepting()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), SHUTDOWN_GRACE)
            if bus_api is not None:  # D-Bus: finish its calls in flight, then leave the bus
                await bus_api.close()
            for connection in list(self._live):
                connection.close()
            self._listener.close()
            if owns_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.config.socket)

    async def _watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            return
        interval = int(usec) / 1e6 / 2
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _sweep(self) -> None:
        """Close connections whose next frame is overdue: one pass over all, a few times per timeout."""
        interval = min(0.5, self.config.read_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for connection in list(self._live):
                connection.expire(now)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: stop accepting for a moment rather
                    # than spin; the sweep frees idle connections meanwhile.
                    log.warning("cannot accept connections: %s; pausing for a second", exc.strerror)
                    self._stop_accepting()
                    self.loop.call_later(1.0, self._resume_accepting)
                    return
                log.warning("accept failed: %s", exc.strerror)
                continue
            sock.setblocking(False)
            try:
                caller = _peer(sock)
            except OSError:
                sock.close()
                continue
            if not self._admit(caller):
                log.warning("refusing a connection from uid %d pid %d: too many connections", caller.uid, caller.pid)
                with contextlib.suppress(OSError):
                    sock.send(_BUSY)
                sock.close()
                continue
            Connection(self, sock, caller)  # joins self._live and starts reading

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self.loop.remove_reader(self._listener.fileno())

    def _resume_accepting(self) -> None:
        if not self._accepting and not self._stopping.is_set():
            self._accepting = True
            self.loop.add_reader(self._listener.fileno(), self._accept)

    def _admit(self, caller: Caller) -> bool:
        if self._total >= self.config.max_connections:
            return False
        if caller.uid != 0 and self._connections[caller.uid] >= self.config.max_connections_per_uid:
            return False
        self._total += 1
        self._connections[caller.uid] += 1
        return True

    def _release(self, connection: Connection) -> None:
        self._live.discard(connection)
        uid = connection.caller.uid
        self._total -= 1
        self._connections[uid] -= 1
        if not self._connections[uid]:
            del self._connections[uid]

    def answer(self, payload: bytes, caller: Caller, session: Session, done: Callable[[Reply], None]) -> None:
        """Decode one request and have the service answer it; `done` gets the reply, once."""
        try:
            request = decode_request(payload)
        except ProtocolError as exc:
            log.warning("uid %d pid %d: bad request: %s", caller.uid, caller.pid, exc)
            done(Reply("BAD_REQUEST", {"message": str(exc)}))
            return
        self._in_flight += 1
        self._idle.clear()
        task = self.loop.create_task(self._handle(request, caller, session, done))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, request: Request, caller: Caller, session: Session, done: Callable[[Reply], None]) -> None:
        try:
            reply = await self.service.handle(request, caller, session)
        except Exception:  # a bug must cost one request, never the daemon: fail closed
            log.exception("internal error while handling '%s' from uid %d", request.verb, caller.uid)
            reply = internal_error()
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()
        done(reply)


def eager_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """On Python 3.12+, a request's task runs at once, up to its first wait, without a loop turn first."""
    if hasattr(asyncio, "eager_task_factory"):
        loop.set_task_factory(asyncio.eager_task_factory)


def freeze_startup_heap() -> None:
    """Take everything start-up built (modules, configuration, the store, D-Bus) out of
    the cyclic garbage collector's sight, once, when the daemon is ready to serve.

    Those objects live as long as the daemon, but every full collection walks them
    again, stalling every request in flight. Objects made later (connections,
    requests) are collected as before; garbage left by start-up is collected first.
    """
    gc.collect()
    gc.freeze()
