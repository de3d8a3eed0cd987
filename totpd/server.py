"""The socket server: accepting, SO_PEERCRED, framing and its limits, replies.

Every connection is bounded: one request at a time, a size limit checked before a
payload is read, a read timeout, and the caps on connections in total and per uid
(admission.py, shared with D-Bus). Each complete frame becomes one request to the
service; its reply goes back in order. Start-up, signals, D-Bus and systemd are
daemon.py's: it hands this server a listening socket and later asks it to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from typing import Callable

from .admission import Admission
from .authorization import Caller
from .config import Config
from .errors import FrameError, ProtocolError
from .protocol import HEADER_SIZE, MAX_REQUEST_PAYLOAD, Reply, Request, decode_request, encode_reply, parse_header
from .service import Service, Session, internal_error

log = logging.getLogger("totpd")

SHUTDOWN_GRACE = 10.0  # how long a drain waits for requests in flight
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
    (Server._sweep closes what is too slow, so dribbling bytes cannot extend it).
    """

    __slots__ = (
        "server", "sock", "fd", "caller", "buffer", "outgoing", "session",
        "busy", "eof", "closed", "reading", "deadline",
    )

    def __init__(self, server: "Server", sock: socket.socket, caller: Caller) -> None:
        self.server = server
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
        self.deadline = server.loop.time() + server.config.read_timeout
        server._live.add(self)  # before the first read, which may already end it
        server.loop.add_reader(self.fd, self._readable)
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
            self.server.loop.remove_writer(self.fd)
            self._next()
            if self.eof and not self.busy:
                self._finish_input()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.server.loop.remove_reader(self.fd)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.outgoing:
            self.outgoing += data
            return
        self.outgoing += data
        self._flush()
        if self.outgoing and not self.closed:
            self.server.loop.add_writer(self.fd, self._writable)

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
            self.server.loop.add_reader(self.fd, self._readable)
        self.busy = True
        self.server.answer(payload, self.caller, self.session, self._replied)

    def _replied(self, reply: Reply) -> None:
        self.busy = False
        if self.closed:
            return
        self.send(encode_reply(reply))
        self.deadline = self.server.loop.time() + self.server.config.read_timeout
        if self.server._draining:
            self.close(linger=True)
            return
        if self.buffer or self.eof:
            # The next pipelined frame (or the hang-up) on the next loop turn: answered
            # here, a run of frames that finish at once would recurse frame by frame.
            self.server.loop.call_soon(self._resume)

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
        """Close a connection whose next frame is overdue (called by Server._sweep)."""
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
            self.deadline = min(self.deadline, self.server.loop.time() + self.server.config.read_timeout)
            return
        self.closed = True
        loop = self.server.loop
        if self.reading:
            loop.remove_reader(self.fd)
        if self.outgoing:
            loop.remove_writer(self.fd)
        self.sock.close()
        self.server._release(self)


class Server:
    """The listening socket's connections, from accept to the last reply."""

    def __init__(self, config: Config, service: Service, admission: Admission) -> None:
        self.config = config
        self.service = service
        self.admission = admission
        self._live: set[Connection] = set()
        self._listener: socket.socket = None  # type: ignore[assignment]  # set by start()
        self._accepting = False
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task] = set()  # requests being answered
        self._sweeper: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()

    def start(self, sock: socket.socket) -> None:
        """Accept connections on the listening `sock` from now on (on the running loop)."""
        self.loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._listener = sock
        self._accepting = True
        self.loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = self.loop.create_task(self._sweep())

    async def drain(self) -> None:
        """Stop accepting and let the requests in flight finish (bounded by SHUTDOWN_GRACE);
        each connection closes once its reply is out."""
        self._draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._stop_accepting()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), SHUTDOWN_GRACE)

    def close(self) -> None:
        """Hang up on every connection left and close the listening socket."""
        for connection in list(self._live):
            connection.close()
        self._listener.close()

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
            if not self.admission.admit(caller.uid):
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
        if not self._accepting and not self._draining:
            self._accepting = True
            self.loop.add_reader(self._listener.fileno(), self._accept)

    def _release(self, connection: Connection) -> None:
        self._live.discard(connection)
        self.admission.release(connection.caller.uid)

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
