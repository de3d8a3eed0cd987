"""totpctl's client checks its server before it sends a byte, as the PAM module does."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from daemonproc import SYSTEM_PYTHON
from totpd.client import Client
from totpd.errors import ClientError

NOBODY = 65534

# A planted server: listens on a path, records every byte any client sends it.
PLANTED = r"""
import socket, sys
path, record = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(2)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except OSError:
        pass
    with open(record, "ab") as out:
        out.write(data)
    conn.close()
"""


@pytest.fixture
def planted():
    """A server run by an ordinary user on a socket in a directory that user owns."""
    top = Path(tempfile.mkdtemp(prefix="totpd-planted-"))
    top.chmod(0o755)  # pytest's own directories are root's alone
    home = top / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    path, record = home / "totpd.sock", home / "received"
    server = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", PLANTED, str(path), str(record)], stdout=subprocess.PIPE, text=True,
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
    )
    assert server.stdout.readline().strip() == "ready"
    yield path, record
    server.kill()
    server.wait()
    shutil.rmtree(top)


def received(record: Path) -> bytes:
    time.sleep(0.2)
    return record.read_bytes() if record.exists() else b""


def test_a_socket_owned_by_an_ordinary_user_is_refused_before_a_byte_is_sent(planted, daemon):
    path, record = planted
    with pytest.raises(ClientError, match=r"owned by uid 65534, not root or totpd: refusing"):
        Client(str(path))
    result = daemon.ctl("--socket", str(path), "enroll", "alice", "--no-confirm", "--secret-file", "-",
                        input="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\n")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "refusing to talk to it" in result.stderr
    assert received(record) == b""


def test_a_planted_server_behind_a_root_owned_socket_file_is_refused_by_its_credentials(planted):
    path, record = planted
    os.chown(path, 0, 0)  # the file passes the owner check; the listener's SO_PEERCRED still says uid 65534
    with pytest.raises(ClientError, match=r"the server there runs as uid 65534, not root or totpd"):
        Client(str(path))
    assert received(record) == b""


def test_the_real_daemon_passes_both_checks(daemon):
    with Client(daemon.socket_path) as client:
        assert client.call("ping").status == "OK"


def test_a_path_that_is_not_a_socket_is_refused(tmp_path):
    path = tmp_path / "totpd.sock"
    path.write_text("")
    with pytest.raises(ClientError, match="not a socket"):
        Client(str(path))
