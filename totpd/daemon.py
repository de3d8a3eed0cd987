"""The daemon: sockets, connections, limits, signals, start-up and shut-down.

`totpd --config FILE` runs in the foreground and logs one line per event to stderr.
It binds its socket itself, or takes the one systemd passes (LISTEN_FDS), and tells
systemd when it is ready and when it stops (sd_notify), if systemd is listening.
Every connection is bounded: one request at a time, a size limit checked before a
payload is read, a read timeout, and caps on connections in total and per uid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import stat
import struct
import sys
from collections import Counter
from typing import Coroutine

from . import __version__, clock, config as config_module
from .audit import Audit
from .config import Config
from .errors import FrameError, ProtocolError, TotpdError
from .notify import Notifier
from .protocol import (
    HEADER_SIZE,
    MAX_REQUEST_PAYLOAD,
    Reply,
    decode_request,
    encode_reply,
    parse_header,
)
from .sealing import Sealer, load_credential, load_key
from .service import Caller, Service, Session, key_check
from .store import StoreOptions, open_store

log = logging.getLogger("totpd")

SD_LISTEN_FDS_START = 3
SHUTDOWN_GRACE = 10.0
# How far a client may pipeline ahead of the request being answered before reading pauses.
READ_AHEAD = 64 * 1024


_BUSY = encode_reply(Reply("BUSY", {"message": "The two-factor service is busy; try again."}))


def _peer(sock: socket.socket) -> Caller:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Caller(pid, uid, gid)


def sd_notify(message: str) -> None:
    """Send one sd_notify(3) datagram if systemd (or a test) listens on NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), address)


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
        raise TotpdError(f"systemd passed {count} sockets; totpd listens on exactly one")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise TotpdError("the socket systemd passed is not a Unix stream socket")
    os.set_inheritable(sock.fileno(), False)
    return sock


def bind_socket(config: Config) -> socket.socket:
    path = config.socket
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if not stat.S_ISSOCK(info.st_mode):
            raise TotpdError(f"{path}: exists and is not a socket; remove it or set 'socket' elsewhere")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket from a daemon that died
        else:
            raise TotpdError(f"{path}: another daemon is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o777)  # no window in which the socket is more open than configured
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise TotpdError(f"{path}: cannot bind the socket: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    if config.socket_group:
        try:
            gid = grp.getgrnam(config.socket_group).gr_gid
        except KeyError:
            sock.close()
            raise TotpdError(f"{config.path}: key 'socket_group' names no group '{config.socket_group}'") from None
        os.chown(path, -1, gid)
    os.chmod(path, config.socket_mode)
    sock.listen(512)
    return sock


class Connection(asyncio.Protocol):
    """One client: frames in, one request answered at a time, replies out in order.

    A protocol object rather than a stream and a task per connection: a login costs
    a few callbacks instead of a coroutine with a timer around every read. Limits:
    the announced length is checked before a payload is buffered, at most one frame
    beyond the one being answered is read ahead (reading pauses), and a whole frame
    must arrive within `read_timeout` of the connection or of the previous reply
    (Daemon._sweep closes what is too slow, so dribbling bytes cannot extend it).
    """

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.caller = Caller(0, -1, -1)
        self.buffer = bytearray()
        self.session = Session()  # per-connection state: a bulk import being staged
        self.admitted = False
        self.busy = False  # a request is being answered
        self.eof = False
        self.closed = False
        self.write_paused = False
        self.read_paused = False
        self.deadline = 0.0

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert hasattr(transport, "write")
        self.transport = transport
        daemon = self.daemon
        try:
            self.caller = _peer(transport.get_extra_info("socket"))
        except OSError:
            transport.abort()
            return
        if not daemon._admit(self.caller):
            log.warning("refusing a connection from uid %d pid %d: too many connections", self.caller.uid, self.caller.pid)
            transport.write(_BUSY)
            transport.close()
            return
        self.admitted = True
        daemon._live.add(self)
        self.deadline = daemon.loop.time() + daemon.config.read_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.admitted:
            self.admitted = False
            self.daemon._live.discard(self)
            self.daemon._release(self.caller)

    def data_received(self, data: bytes) -> None:
        if self.closed or not self.admitted:
            return
        self.buffer += data
        if len(self.buffer) > READ_AHEAD and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._next()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.busy:
            self._finish_input()
        return True  # keep the transport open to send the reply of a request in flight

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._next()

    # -- the work -----------------------------------------------------------------------

    def _next(self) -> None:
        """Start answering the next complete frame in the buffer, if there is one."""
        if self.busy or self.closed or self.write_paused or len(self.buffer) < HEADER_SIZE:
            return
        try:
            length = parse_header(bytes(self.buffer[:HEADER_SIZE]), MAX_REQUEST_PAYLOAD)
        except FrameError as exc:
            log.warning("uid %d pid %d: malformed frame: %s", self.caller.uid, self.caller.pid, exc)
            self._close_with(Reply("BAD_REQUEST", {"message": str(exc)}))
            return
        end = HEADER_SIZE + length
        if len(self.buffer) < end:
            return
        payload = bytes(self.buffer[HEADER_SIZE:end])
        del self.buffer[:end]
        if self.read_paused and len(self.buffer) <= READ_AHEAD:
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.busy = True
        self.daemon._spawn(self._answer(payload))

    async def _answer(self, payload: bytes) -> None:
        try:
            reply = await self.daemon._answer(payload, self.caller, self.session)
        finally:
            self.busy = False
        if self.closed:
            return
        self.transport.write(encode_reply(reply))  # type: ignore[union-attr]
        self.deadline = self.daemon.loop.time() + self.daemon.config.read_timeout
        if self.daemon._stopping.is_set():
            self.transport.close()  # type: ignore[union-attr]
            return
        self._next()
        if self.eof and not self.busy:
            self._finish_input()

    def _finish_input(self) -> None:
        """The client sent its last byte: answer what is complete, then hang up."""
        self._next()
        if self.busy:
            return
        if self.buffer:
            log.warning("uid %d pid %d sent a truncated frame", self.caller.uid, self.caller.pid)
        self.transport.close()  # type: ignore[union-attr]

    def expire(self, now: float) -> None:
        """Close a connection whose next frame is overdue (called by Daemon._sweep)."""
        if self.busy or self.closed or now < self.deadline:
            return
        if self.buffer:
            log.warning("uid %d pid %d: timed out in the middle of a frame", self.caller.uid, self.caller.pid)
        self.transport.close()  # type: ignore[union-attr]

    def _close_with(self, reply: Reply) -> None:
        self.transport.write(encode_reply(reply))  # type: ignore[union-attr]
        self.transport.close()  # type: ignore[union-attr]
        self.buffer.clear()


class Daemon:
    def __init__(self, config: Config, service: Service) -> None:
        self.config = config
        self.service = service
        self._connections: Counter[int] = Counter()
        self._total = 0
        self._live: set[Connection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by serve()

    async def serve(self, sock: socket.socket, owns_path: bool) -> None:
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_unix_server(lambda: Connection(self), sock=sock)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._stopping.set)
        log.info("listening on %s (protocol 1, totpd %s)", self.config.socket, __version__)
        sd_notify("READY=1\nSTATUS=serving")
        chores = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._sweep())]
        try:
            await self._stopping.wait()
        finally:
            sd_notify("STOPPING=1")
            log.info("stopping: finishing requests in flight")
            for chore in chores:
                chore.cancel()
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), SHUTDOWN_GRACE)
            for connection in list(self._live):
                if connection.transport is not None:
                    connection.transport.close()
            await asyncio.sleep(0)  # let the transports say goodbye
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

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _admit(self, caller: Caller) -> bool:
        if self._total >= self.config.max_connections:
            return False
        if caller.uid != 0 and self._connections[caller.uid] >= self.config.max_connections_per_uid:
            return False
        self._total += 1
        self._connections[caller.uid] += 1
        return True

    def _release(self, caller: Caller) -> None:
        self._total -= 1
        self._connections[caller.uid] -= 1
        if not self._connections[caller.uid]:
            del self._connections[caller.uid]

    async def _answer(self, payload: bytes, caller: Caller, session: Session) -> Reply:
        try:
            request = decode_request(payload)
        except ProtocolError as exc:
            log.warning("uid %d pid %d: bad request: %s", caller.uid, caller.pid, exc)
            return Reply("BAD_REQUEST", {"message": str(exc)})
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self.service.handle(request, caller, session)
        except Exception:  # a bug must cost one request, never the daemon: fail closed
            log.exception("internal error while handling '%s' from uid %d", request.verb, caller.uid)
            return Reply("UNAVAILABLE", {"message": "The two-factor service hit an internal error; try again."})
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()


def master_key(config: Config) -> bytes:
    credential = config_module.environment_credential_path()
    if credential:
        return load_credential(credential)
    return load_key(config.key_file, create=True)


def store_options(config: Config) -> StoreOptions:
    return StoreOptions(config.database_password_file, config.database_pool_size, config.database_timeout)


def run(config: Config) -> None:
    os.umask(0o077)
    sealer = Sealer(master_key(config))
    store = open_store(config.database, key_check(sealer), store_options(config))
    notifier = None
    audit = Audit(config.audit)
    try:
        service = Service(config, store, sealer, audit)
        if config.smtp is not None:
            notifier = Notifier(config.smtp)
            service.listeners.append(notifier)
        if clock.synchronized() is False:
            log.warning("this host's clock is not synchronized: TOTP codes may be refused; start an NTP client")
        handed_over = systemd_socket()
        sock = handed_over or bind_socket(config)
        asyncio.run(Daemon(config, service).serve(sock, owns_path=handed_over is None))
    finally:
        audit.flush()
        if notifier is not None:
            notifier.close()
        store.close()
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="totpd", description="TOTP second-factor daemon (runs in the foreground)")
    parser.add_argument("--config", default=config_module.DEFAULT_CONFIG_PATH, help="TOML configuration file")
    parser.add_argument("--version", action="version", version=f"totpd {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="totpd: %(levelname)s: %(message)s", level=logging.INFO)
    try:
        config = config_module.load(args.config)
        logging.getLogger().setLevel(config.log_level.upper())
        run(config)
    except TotpdError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
