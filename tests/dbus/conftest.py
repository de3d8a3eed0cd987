"""Fixtures for the D-Bus API's tests (privatebus.py has the machinery)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from privatebus import BUS_NAME, REPO, PrivateBus, Subscriber  # noqa: E402


@pytest.fixture(scope="session")
def pam_module() -> str:
    subprocess.run(["make", "-s", "-C", str(REPO / "pam"), "pam_totpd.so"], check=True)
    return str(REPO / "pam" / "pam_totpd.so")


@pytest.fixture(scope="session")
def system_bus():
    """One private bus with the mock polkit for the session; polkit reset before each use."""
    for tool in ("dbus-daemon", "gdbus", "oathtool"):
        assert shutil.which(tool), f"{tool} is missing: run `make deps` (TEST_APT_PACKAGES)"
    bus = PrivateBus()
    try:
        bus.start_polkit()
        yield bus
    finally:
        bus.stop()


@pytest.fixture
def bus(system_bus) -> PrivateBus:
    system_bus.polkit_mock("Reset")  # back to the template: every action denied
    system_bus.polkit_mock("ClearCalls")
    return system_bus


@pytest.fixture
def bus_without_polkit():
    bus = PrivateBus()
    yield bus
    bus.stop()


@pytest.fixture
def totpd_on(make_daemon):
    """totpd_on(bus, **settings) -> a started daemon that owns org.totpd.Totpd1 on `bus`."""

    def start(bus: PrivateBus, **settings):
        daemon = make_daemon(dbus=bus.address, **settings)
        bus.wait_for_name(BUS_NAME, daemon.process)
        return daemon

    return start


@pytest.fixture
def subscriber(bus):
    listener = Subscriber(bus)
    yield listener
    listener.close()
