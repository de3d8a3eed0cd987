"""A blocking client for the daemon's socket (used by totpctl and the tests)."""

from __future__ import annotations

import os
import socket
import stat

from .errors import ClientError, ProtocolError
from .protocol import HEADER_SIZE, MAX_REPLY_PAYLOAD, Reply, decode_reply, encode_request, parse_header

DEFAULT_SOCKET = "/run/totpd/totpd.sock"


class Client:
    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 30.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
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
