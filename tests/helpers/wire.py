"""Raw socket helpers for tests that need to misbehave on the wire."""

from __future__ import annotations

import socket
import struct

from totpd.protocol import HEADER_SIZE, MAX_REPLY_PAYLOAD, decode_reply, encode_request, parse_header, Reply


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def frame(payload: bytes, magic: bytes = b"TD", version: int = 1, flags: int = 0, length: int | None = None) -> bytes:
    return magic + bytes([version, flags]) + struct.pack(">I", len(payload) if length is None else length) + payload


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_reply(sock: socket.socket) -> Reply:
    length = parse_header(read_exact(sock, HEADER_SIZE), MAX_REPLY_PAYLOAD)
    return decode_reply(read_exact(sock, length))


def exchange(path: str, raw: bytes) -> Reply:
    with connect(path) as sock:
        sock.sendall(raw)
        return read_reply(sock)


def request(path: str, verb: str, **fields: object) -> Reply:
    return exchange(path, encode_request(verb, {k: str(v) for k, v in fields.items()}))


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
