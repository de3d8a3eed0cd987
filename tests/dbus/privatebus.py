"""A private system-like bus, a mock polkit and clients, for the D-Bus API's tests.

The bus is a real `dbus-daemon` with a test configuration modelled on Debian's
system.conf (method calls denied by default, names owned by root only) that
includes the repository's packaging/dbus/org.totpd.Totpd1.conf, so the shipped bus
policy is what lets callers in. polkit is python-dbusmock's `polkitd` template on
that bus, as fprintd's tests do. Clients: dbus-fast in this process (root), and
`gdbus` run as another uid for unprivileged callers.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

BUS_NAME = "org.totpd.Totpd1"
PATH = "/org/totpd/Totpd1"
IFACE = "org.totpd.Totpd1"
POLKIT = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
MOCK_IFACE = "org.freedesktop.DBus.Mock"
NOBODY = 65534  # a non-root user every Debian has; its account name is "nobody"
DAEMON_UID = 1  # another one ("daemon"), for calls on somebody else's account

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
    <allow send_type="method_call"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


class PrivateBus:
    """A dbus-daemon on a socket under a fresh directory; `address` for clients."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="totpd-bus-"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "bus"
        self.address = f"unix:path={self.socket}"
        config = self.dir / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket=self.socket, policy=REPO / "packaging/dbus/org.totpd.Totpd1.conf"))
        self.log = self.dir / "dbus-daemon.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}", "--print-address"],
                stdout=subprocess.PIPE, stderr=log,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()  # printed once it listens
        assert line.startswith("unix:"), f"dbus-daemon did not start: {self.log.read_text()}"
        self.polkit: subprocess.Popen | None = None

    def start_polkit(self) -> None:
        """python-dbusmock's polkitd template, owning org.freedesktop.PolicyKit1 on this bus."""
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        self.polkit = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "polkitd"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "polkit.log", "wb"), env=env,
        )
        self.wait_for_name(POLKIT, self.polkit)

    def wait_for_name(self, name: str, process: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the owner of {name} exited with {process.returncode}")
            if self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                         "NameHasOwner", "s", [name]).body[0]:
                return
            time.sleep(0.02)
        raise RuntimeError(f"nobody took {name} on the private bus within {timeout}s")

    def call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
             body: list | None = None, flags: MessageFlag = MessageFlag.NONE) -> Message:
        """One method call from this (root) process with dbus-fast; the reply or error Message."""
        return asyncio.run(self._call(Message(
            destination=destination, path=path, interface=interface, member=member,
            signature=signature, body=body or [], flags=flags,
        )))

    async def _call(self, message: Message) -> Message:
        bus = await MessageBus(bus_address=self.address).connect()
        try:
            return await asyncio.wait_for(bus.call(message), 30)
        finally:
            bus.disconnect()

    def totpd(self, member: str, signature: str = "", *body, flags: MessageFlag = MessageFlag.NONE) -> Message:
        return self.call(BUS_NAME, PATH, IFACE, member, signature, list(body), flags)

    def polkit_mock(self, member: str, signature: str = "", *body) -> Message:
        reply = self.call(POLKIT, POLKIT_PATH, MOCK_IFACE, member, signature, list(body))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply

    def stop(self) -> None:
        for process in (self.polkit, self.process):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], check=False)


def gdbus_as(uid: int, bus: PrivateBus, member: str, *args: str, interactive: bool = False,
             interface: str = IFACE) -> subprocess.CompletedProcess:
    """`gdbus call` on totpd's object from a process running as `uid` (a real, unprivileged client)."""
    import pwd

    entry = pwd.getpwuid(uid)
    command = ["gdbus", "call", "--address", bus.address, "--dest", BUS_NAME, "--object-path", PATH,
               "--method", f"{interface}.{member}", "--timeout", "30"]
    if interactive:
        command.append("--interactive")
    command += ["--", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
                          user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])


def gdbus_error(result: subprocess.CompletedProcess) -> str:
    """The D-Bus error name of a failed gdbus call ('' if it succeeded)."""
    if result.returncode == 0:
        return ""
    match = re.search(r"GDBus\.Error:([A-Za-z0-9_.]+)", result.stderr)
    assert match, f"gdbus failed without a D-Bus error: {result.stderr!r}"
    return match.group(1)


class Subscriber:
    """A dbus-fast client on its own thread that collects totpd's signals."""

    def __init__(self, bus: PrivateBus) -> None:
        self.signals: queue.Queue[tuple[str, list]] = queue.Queue()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(bus.address),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the signal subscriber did not connect"

    async def _run(self, address: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = await MessageBus(bus_address=address).connect()
        client.add_message_handler(self._on_message)
        await client.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="AddMatch", signature="s", body=[f"type='signal',interface='{IFACE}',path='{PATH}'"],
        ))
        self._ready.set()
        await self._stop.wait()
        client.disconnect()

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL and msg.interface == IFACE:
            self.signals.put((msg.member, list(msg.body)))
        return False

    def next(self, timeout: float = 10.0) -> tuple[str, list]:
        return self.signals.get(timeout=timeout)

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
