"""A scriptable stand-in for totpd on a Unix socket, for the PAM module's tests.

It speaks just enough of docs/protocol.md to record what the module sends and to
answer with whatever bytes a test wants: well-formed replies, garbage, oversized
or truncated frames, or nothing at all. It is written independently of
totpd/protocol.py on purpose: the module is tested against the document.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import threading
from typing import Callable, Union

MAGIC = b"TD"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
MAX_REQUEST_PAYLOAD = 4096
MAX_AUTH_REPLY_PAYLOAD = 4096
MAX_MESSAGE = 512
MAX_ENROLL_REPLY_PAYLOAD = 16384
MAX_LINES = 64
MAX_TOKEN = 32  # a status or key

STATUS_TO_PAM = {  # docs/protocol.md "Statuses and what the PAM module does with them"
    "ACCEPTED": 0,       # PAM_SUCCESS
    "IGNORE": 25,        # PAM_IGNORE
    "REJECTED": 7,       # PAM_AUTH_ERR
    "DENIED": 7,         # PAM_AUTH_ERR
    "LOCKED": 11,        # PAM_MAXTRIES
    "UNKNOWN_USER": 10,  # PAM_USER_UNKNOWN
}
PAM_AUTHINFO_UNAVAIL = 9


def frame(payload: bytes, *, magic: bytes = MAGIC, version: int = VERSION, flags: int = 0,
          length: int | None = None) -> bytes:
    return HEADER.pack(magic, version, flags, len(payload) if length is None else length) + payload


def reply(status: str, **fields: str) -> bytes:
    """A well-formed reply frame."""
    lines = [status] + [f"{key}={value}" for key, value in fields.items()]
    return frame(("\n".join(lines) + "\n").encode())


def reference_status(data: bytes, enrolling: bool = False) -> str | None:
    """What a strictly conforming client that reads only `message` makes of `data` as
    a reply to check or verify (`enrolling`: to login_enroll or login_confirm, which
    also reads the `info` and `qr` lines): the status, or None for anything
    malformed. The oracle of the fuzz tests."""
    import re

    if len(data) < HEADER.size:
        return None
    magic, version, flags, length = HEADER.unpack(data[:HEADER.size])
    payload = data[HEADER.size:HEADER.size + length]
    limit = MAX_ENROLL_REPLY_PAYLOAD if enrolling else MAX_AUTH_REPLY_PAYLOAD
    if magic != MAGIC or version != VERSION or flags != 0 or not 0 < length <= limit:
        return None
    if len(payload) < length:
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None
    lines = text[:-1].split("\n")
    if not re.fullmatch(rf"[A-Z_]{{1,{MAX_TOKEN}}}", lines[0]):
        return None
    messages = shown = 0
    for line in lines[1:]:
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(rf"[a-z_]{{1,{MAX_TOKEN}}}", key):
            return None
        if re.search(r"[\x00-\x1f\x7f-\x9f]", value):
            return None
        if enrolling and key in ("info", "qr"):  # lines to show: they may repeat, each at most 512 bytes
            shown += 1
            if shown > MAX_LINES or len(value.encode()) > MAX_MESSAGE:
                return None
        elif key == "message":  # the one key a client shows: at most once, at most 512 bytes
            messages += 1
            if messages > 1 or len(value.encode()) > MAX_MESSAGE:
                return None
    return lines[0]


@dataclasses.dataclass
class Received:
    """One request frame as the fake daemon read it."""
    raw: bytes  # the whole frame, header included
    verb: str
    fields: dict[str, str]
    keys: list[str]  # in order, duplicates kept
    peer_uid: int
    peer_pid: int


# A handler gets the request and returns the bytes to send (then the connection
# closes, unless the daemon is persistent), or None to never answer (the connection
# stays open until stop()). b"" closes the connection without a reply.
Handler = Callable[[Received], Union[bytes, None]]


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class FakeDaemon:
    def __init__(self, path: str, handler: Handler, persistent: bool = False):
        """`persistent`: after a reply, read the next request on the same connection
        (as totpd does) instead of closing it."""
        self.path = path
        self.handler = handler
        self.persistent = persistent
        self.per_connection: list[list[str]] = []  # the verbs each connection carried
        self.received: list[Received] = []
        self.connections = 0
        self._stopping = threading.Event()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def verbs(self) -> list[str]:
        return [r.verb for r in self.received]

    def _serve(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        verbs: list[str] = []
        with self._lock:
            self.per_connection.append(verbs)
        try:
            conn.settimeout(10)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            while self._exchange(conn, pid, uid, verbs) and self.persistent:
                pass
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def _exchange(self, conn: socket.socket, pid: int, uid: int, verbs: list[str]) -> bool:
        """Read one request and answer it; False when the connection is done."""
        header = _recv_exact(conn, HEADER.size)
        _magic, _version, _flags, length = HEADER.unpack(header)
        payload = _recv_exact(conn, min(length, MAX_REQUEST_PAYLOAD))
        lines = payload.decode("utf-8", "surrogateescape").split("\n")
        keys, fields = [], {}
        for line in lines[1:-1]:
            key, _, value = line.partition("=")
            keys.append(key)
            fields[key] = value
        received = Received(header + payload, lines[0], fields, keys, uid, pid)
        with self._lock:
            self.received.append(received)
            verbs.append(received.verb)
        answer = self.handler(received)
        if answer is None:
            self._stopping.wait()
            return False
        if not answer:
            return False
        conn.sendall(answer)
        return True

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def standard_handler(check: bytes | None = None, verify: bytes | None = None) -> Handler:
    """NEED_CODE (vector 4) to check, ACCEPTED to verify, unless told otherwise."""
    check = reply("NEED_CODE", prompt="Verification code: ") if check is None else check
    verify = reply("ACCEPTED") if verify is None else verify

    def handler(request: Received) -> bytes:
        return check if request.verb == "check" else verify

    return handler
