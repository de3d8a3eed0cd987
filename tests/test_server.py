"""totpd/server.py through a real daemon: framing limits, pipelining, timeouts, connection caps.

Every connection is bounded (docs/protocol.md): a frame's length is checked before
its payload is read, a silent or dribbling client is dropped after `read_timeout`,
pipelined frames are answered in order, and a uid past its cap gets BUSY.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pyotp
import pytest

import wire
from totpd.protocol import encode_request


def code(secret: str) -> str:
    return pyotp.TOTP(secret).now()


@pytest.mark.parametrize(
    "raw, expect",
    [
        (wire.frame(b"x" * 4097), "over the limit"),
        (wire.frame(b"ping\n", magic=b"XE"), "bad magic"),
        (wire.frame(b"ping\n", version=2), "version 2"),
        (wire.frame(b"ping\n", flags=1), "flags"),
        (wire.frame(b""), "empty payload"),
        (wire.frame(b"verify\nuser=al\xffice\ncode=123456\n"), "UTF-8"),
        (wire.frame(b"verify\nuser=al\x01ice\ncode=123456\n"), "control character"),
        (wire.frame(b"verify\nuser=../etc/passwd\ncode=123456\n"), "not a valid account name"),
        (wire.frame(b"verify\nuser=..\ncode=123456\n"), "not a valid account name"),
        (wire.frame("verify\nuser=a\u0085b\ncode=1\n".encode()), "control character"),
        (wire.frame(b"verify\r\nuser=alice\ncode=1\n"), "verb"),
        (wire.frame(b"explode\nuser=alice\n"), "unknown verb"),
        (wire.frame(b"verify\nuser=alice\n"), "needs key 'code'"),
        (wire.frame(b"verify\nuser=alice\nuser=bob\ncode=1\n"), "twice"),
        (wire.frame(b"verify\nuser=alice\ncode=1\nshell=sh\n"), "takes no key"),
        (wire.frame(b"ping"), "line feed"),
        (wire.frame(b"check\nuser=" + b"a" * 300 + b"\n"), "longer than 256"),
        (wire.frame(b"list\nlimit=-1\n"), "whole number"),
    ],
)
def test_malformed_requests_get_a_clear_error_and_the_daemon_serves_on(daemon, raw, expect):
    reply = wire.exchange(daemon.socket_path, raw)
    assert reply.status == "BAD_REQUEST" and expect in reply.message
    assert wire.request(daemon.socket_path, "ping").status == "OK"


def test_an_oversized_frame_is_refused_before_its_payload_is_read(daemon):
    with wire.connect(daemon.socket_path) as sock:
        sock.sendall(wire.frame(b"", length=1 << 30))
        reply = wire.read_reply(sock)
        assert reply.status == "BAD_REQUEST"
        assert wire.closed(sock)


def test_a_truncated_frame_or_a_silent_client_is_dropped_and_others_are_served(make_daemon):
    daemon = make_daemon(read_timeout=1.0)
    silent = wire.connect(daemon.socket_path)
    truncated = wire.connect(daemon.socket_path)
    truncated.sendall(wire.frame(b"ping\n")[:10])
    assert wire.request(daemon.socket_path, "ping").status == "OK"  # served meanwhile
    started = time.monotonic()
    assert wire.closed(silent) and wire.closed(truncated)
    assert time.monotonic() - started < 3
    half = wire.connect(daemon.socket_path)
    half.sendall(wire.frame(b"ping\n")[:5])
    half.close()
    assert wire.request(daemon.socket_path, "ping").status == "OK"


def test_frames_sent_before_a_hang_up_are_all_answered(daemon):
    """A client may pipeline requests and shut its side down: each complete frame gets
    its reply, in order, whether it is answered at once (ping) or after a commit."""
    daemon.enroll("alice")
    with wire.connect(daemon.socket_path) as sock:
        sock.sendall(
            encode_request("ping", {}) + encode_request("ping", {}) + encode_request("check", {"user": "alice"})
            + encode_request("ping", {})
        )
        sock.shutdown(socket.SHUT_WR)
        statuses = [wire.read_reply(sock).status for _ in range(4)]
        assert statuses == ["OK", "OK", "NEED_CODE", "OK"]
        assert wire.closed(sock)


def test_one_connection_carries_many_requests(daemon):
    secret = daemon.enroll("alice")
    with wire.connect(daemon.socket_path) as sock:
        for verb_fields in ({"verb": "ping"}, {"verb": "check", "user": "alice"}, {"verb": "ping"}):
            verb = verb_fields.pop("verb")
            sock.sendall(encode_request(verb, verb_fields))
            assert wire.read_reply(sock).status in ("OK", "NEED_CODE")
        sock.sendall(encode_request("verify", {"user": "alice", "code": code(secret)}))
        assert wire.read_reply(sock).status == "ACCEPTED"


def test_connections_over_the_per_uid_cap_are_refused_busy(make_daemon):
    daemon = make_daemon(max_connections_per_uid=2)

    # Connections from a non-root uid: open them in a child that drops to nobody.
    script = (
        "import socket,sys,struct,time\n"
        f"p={daemon.socket_path!r}\n"
        "s=[socket.socket(socket.AF_UNIX) for _ in range(3)]\n"
        "[x.connect(p) for x in s]\n"
        "time.sleep(0.3)\n"
        "s[2].settimeout(5); h=s[2].recv(8); n=struct.unpack('>I',h[4:])[0]; print(s[2].recv(n).split(b'\\n')[0].decode())\n"
    )
    result = subprocess.run(["python3", "-c", script], user=65534, group=65534, extra_groups=[], capture_output=True, text=True, timeout=20)
    assert result.stdout.strip() == "BUSY", result.stderr
    assert wire.request(daemon.socket_path, "ping").status == "OK"  # root is not capped per uid
