"""Fixtures for the PAM module's tests: build the module, write private PAM
stacks, run a fake daemon on temp paths. The real daemon comes from the
project-wide `daemon` fixture (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fakedaemon  # noqa: E402
from pamconf import Stack  # noqa: E402

REPO = HERE.parent.parent
PAM_DIR = REPO / "pam"


@pytest.fixture(scope="session")
def pam_module() -> str:
    subprocess.run(["make", "-s", "-C", str(PAM_DIR), "pam_totpd.so"], check=True)
    return str(PAM_DIR / "pam_totpd.so")


@pytest.fixture(scope="session")
def pam_module_asan() -> str:
    subprocess.run(["make", "-s", "-C", str(PAM_DIR), "asan"], check=True)
    return str(PAM_DIR / "pam_totpd-asan.so")


@pytest.fixture(scope="session")
def asan_env() -> dict[str, str]:
    """Environment for a python3 subprocess that dlopens the ASan/UBSan build:
    the ASan runtime must be loaded first, hence LD_PRELOAD; Python's own
    allocations would drown a leak report, hence detect_leaks=0."""
    cc = os.environ.get("CC", "cc")
    libasan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert os.path.isabs(libasan) and os.path.exists(libasan), f"no ASan runtime ({libasan})"
    return {
        "LD_PRELOAD": os.path.realpath(libasan),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99:halt_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=98",
        "PYTHONMALLOC": "malloc",
    }


@pytest.fixture
def workdir(tmp_path_factory) -> Path:
    # Short, private paths: sun_path holds 107 bytes.
    return tmp_path_factory.mktemp("pam")


@pytest.fixture
def socket_path(workdir) -> str:
    return str(workdir / "totpd.sock")


@pytest.fixture
def stack(workdir, pam_module, socket_path) -> Stack:
    return Stack(workdir / "pam.d", pam_module, socket_path).write("timeout=2")


@pytest.fixture
def fake_daemon(socket_path):
    """start(handler) -> a FakeDaemon on the stack's socket, stopped afterwards."""
    started: list[fakedaemon.FakeDaemon] = []

    def start(handler=None, persistent: bool = False) -> fakedaemon.FakeDaemon:
        server = fakedaemon.FakeDaemon(socket_path, handler or fakedaemon.standard_handler(), persistent)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
