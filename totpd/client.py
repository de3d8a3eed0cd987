"""A blocking client for the daemon's socket (used by totpctl and the tests).

Before a byte is sent the server is checked as the PAM module checks it: the
socket file must be a socket owned by root or the daemon's user, and the process
listening on it (SO_PEERCRED) must be one of those two. Anything else may be a
program that a user planted on the path to collect secrets and codes.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct

from .errors import ClientError, ProtocolError
from .protocol import HEADER_SIZE, MAX_REPLY_PAYLOAD, Reply, decode_reply, encode_request, parse_header

DEFAULT_SOCKET = "/run/totpd/totpd.sock"
DAEMON_USER = "totpd"  # the system user the packaged daemon runs as (pam_totpd's daemon_user)


def _trusted(uid: int, daemon_user: str) -> bool:
    if uid == 0:
        return True
    try:
        return pwd.getpwnam(daemon_user).pw_uid == uid
    except KeyError:
        return False


class Client:
    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 30.0, daemon_user: str = DAEMON_USER) -> None:
        self.path = path
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise ClientError(f"{path}: no daemon socket there; is totpd running? (systemctl start totpd.socket)") from None
        except PermissionError:
            raise ClientError(f"{path}: permission denied; run as root or ask for access to the socket") from None
        except OSError as exc:
            raise ClientError(f"{path}: cannot reach the daemon: {exc.strerror or exc}") from None
        if not stat.S_ISSOCK(info.st_mode):
            raise ClientError(f"{path}: not a socket; point --socket at the daemon's socket")
        if not _trusted(info.st_uid, daemon_user):
            raise ClientError(
                f"{path}: owned by uid {info.st_uid}, not root or {daemon_user}: refusing to talk to it (planted?)"
            )
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
            self._check_peer(daemon_user)
        except FileNotFoundError:
            self._sock.close()
            raise ClientError(f"{path}: no daemon socket there; is totpd running? (systemctl start totpd.socket)") from None
        except PermissionError:
            self._sock.close()
            raise ClientError(f"{path}: permission denied; run as root or ask for access to the socket") from None
        except ConnectionRefusedError:
            self._sock.close()
            raise ClientError(_refused(path)) from None
        except OSError as exc:
            self._sock.close()
            raise ClientError(f"{path}: cannot reach the daemon: {exc.strerror or exc}") from None

    def _check_peer(self, daemon_user: str) -> None:
        """The lstat above can race with a swapped socket; the listener's credentials cannot."""
        creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if not _trusted(uid, daemon_user):
            self._sock.close()
            raise ClientError(
                f"{self.path}: the server there runs as uid {uid}, not root or {daemon_user}: refusing to talk to it"
            )

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def call(self, verb: str, **fields: object) -> Reply:
        return self.pipeline([(verb, fields)])[0]

    def pipeline(self, requests: list[tuple[str, dict[str, object]]]) -> list[Reply]:
        """Send several requests at once, then read their replies in order (bulk imports).

        Keep batches modest (a few hundred): the daemon answers while we still send,
        and both sides' socket buffers must hold what the other has not read yet.
        """
        frames = b"".join(
            encode_request(verb, {key: str(value) for key, value in fields.items() if value is not None})
            for verb, fields in requests
        )
        try:
            self._sock.sendall(frames)
            replies = []
            for _ in requests:
                length = parse_header(self._read(HEADER_SIZE), MAX_REPLY_PAYLOAD)
                replies.append(decode_reply(self._read(length)))
            return replies
        except socket.timeout:
            raise ClientError(f"{self.path}: the daemon did not answer in time") from None
        except ProtocolError as exc:
            raise ClientError(f"{self.path}: malformed reply from the daemon: {exc}") from None
        except OSError as exc:
            raise ClientError(f"{self.path}: connection to the daemon failed: {exc.strerror or exc}") from None

    def _read(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self._sock.recv(size - len(chunks))
            if not chunk:
                raise ClientError(f"{self.path}: the daemon closed the connection")
            chunks += chunk
        return bytes(chunks)


def _refused(path: str) -> str:
    """Why a connect was refused: a file that is no socket, or a socket nobody listens on."""
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        is_socket = True  # gone meanwhile: say what a refused socket means
    if not is_socket:
        return f"{path}: not a socket; --socket (or TOTPD_SOCKET) must name the daemon's socket"
    return f"{path}: no daemon is listening on this socket; is totpd running? (systemctl start totpd.socket)"


def call(path: str, verb: str, **fields: object) -> Reply:
    with Client(path) as client:
        return client.call(verb, **fields)
