"""Run the real totpd as a process on a temp socket, and totpctl against it.

Independent of pytest so that benchmarks and the e2e harness can reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyotp

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))


def _toml_table(table: dict, name: str) -> list[str]:
    """Plain keys first, then sub-tables as [name.key] sections (enough TOML for our configs)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            section = f"{name}.{key}" if name else key
            lines += ["", f"[{section}]", *_toml_table(value, section)]
    return lines


NOBODY = 65534  # an account every Debian system has ("nobody")
RECOVERY_SHAPED = "abcd-efgh-ijkm"  # a guess shaped like a recovery code: argon2 work to refuse

# Opens `count` connections at once, sends each one request, and reports the statuses.
# Only the standard library: it runs as another uid on the system Python.
FLOOD = r"""
import json, socket, struct, sys
path, requests = sys.argv[1], json.loads(sys.argv[2])
socks = []
for verb, fields in requests:
    payload = ("\n".join([verb] + [f"{k}={v}" for k, v in fields.items()]) + "\n").encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    sock.sendall(b"TD\x01\x00" + struct.pack(">I", len(payload)) + payload)
    socks.append(sock)
statuses = []
for sock in socks:
    data = b""
    while len(data) < 8 or len(data) < 8 + struct.unpack(">I", data[4:8])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    statuses.append(data[8:].split(b"\n", 1)[0].decode())
print(json.dumps(statuses))
"""


def flood_as(uid: int, socket_path: str, requests: list[tuple[str, dict]]) -> subprocess.Popen:
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-c", FLOOD, socket_path, json.dumps(requests)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=uid, group=uid, extra_groups=[], cwd="/",
    )


def wrong_code(secret: str) -> str:
    """A well-formed 6-digit code that no step within 12 of now accepts: wrong for any
    window, and outside the daemon's drift search too."""
    totp = pyotp.TOTP(secret)
    now = time.time()
    near = {totp.at(now + steps * totp.interval) for steps in range(-12, 13)}
    return next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in near)


def code_at(secret: str, steps_from_now: int = 0, **params) -> str:
    """The TOTP code of `secret` (pyotp's parameters) that many steps from now."""
    totp = pyotp.TOTP(secret, **params)
    return totp.at(time.time() + steps_from_now * totp.interval)


class DaemonProcess:
    """A totpd process with its own socket, database and key under `workdir`."""

    def __init__(self, workdir: Path, **settings: object) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(self.workdir / "totpd.sock")
        self.config_path = str(self.workdir / "totpd.conf")
        self.log_path = str(self.workdir / "totpd.log")
        self.settings: dict[str, object] = {
            "socket": self.socket_path,
            "database": str(self.workdir / "state" / "totpd.db"),
            "key_file": str(self.workdir / "state" / "master.key"),
            "socket_mode": "0666",
            "check_accounts": False,
            "audit": "stderr",
            "dbus": "off",  # tests/dbus runs its own private bus
        }
        self.settings.update(settings)
        self.process: subprocess.Popen | None = None
        self.write_config()

    def write_config(self, **changes: object) -> None:
        self.settings.update(changes)
        Path(self.config_path).write_text("\n".join(_toml_table(self.settings, "")) + "\n")

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def start(self, timeout: float = 15.0, extra_env: dict[str, str] | None = None) -> "DaemonProcess":
        env = self.env
        env.update(extra_env or {})
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "totpd", "--config", self.config_path],
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"totpd exited with {self.process.returncode}:\n{self.log()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"totpd did not start within {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        """A ping answered, not merely a connect: the kernel accepts connections as soon
        as the socket listens, before the daemon's loop (and its SIGTERM handler) runs."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(self.socket_path)
            probe.sendall(b"TD\x01\x00\x00\x00\x00\x05ping\n")
            return probe.recv(10).startswith(b"TD")
        except OSError:
            return False
        finally:
            probe.close()

    def stop(self, sig: int = 15, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def restart(self) -> "DaemonProcess":
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ctl(self, *args: str, input: str | None = None, user: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run totpctl against this daemon; `user` runs it under that uid (and its gid)."""
        command = [sys.executable, "-m", "totpd.cli", "--socket", self.socket_path, *args]
        env = self.env
        kwargs: dict = {}
        if user is not None:
            # The test interpreter may live where other uids cannot reach (/root/.pyenv):
            # run the client with the system Python on a world-readable copy of the
            # package. totpctl needs only the standard library for all but `enroll`.
            import pwd

            entry = pwd.getpwuid(user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            command[0] = SYSTEM_PYTHON
            env = dict(env, PYTHONPATH=self._public_package())
        return subprocess.run(command, input=input, capture_output=True, text=True, env=env, timeout=timeout, cwd="/", **kwargs)

    def call_as(self, uid: int, verb: str, **fields: object) -> tuple[str, str]:
        """One request over the socket from a process running as `uid`: (status, message)."""
        import pwd

        entry = pwd.getpwuid(uid)
        script = (
            "import json, sys\n"
            "from totpd.client import Client\n"
            "verb, fields = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
            f"reply = Client({self.socket_path!r}).call(verb, **fields)\n"
            "print(json.dumps([reply.status, reply.message]))\n"
        )
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", script, json.dumps(verb), json.dumps(fields)],
            capture_output=True, text=True, timeout=30, cwd="/",
            env=dict(self.env, PYTHONPATH=self._public_package()),
            user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
        )
        if result.returncode != 0:
            raise RuntimeError(f"client as uid {uid} failed: {result.stderr}")
        status, message = json.loads(result.stdout)
        return status, message

    def _public_package(self) -> str:
        target = self.workdir / "pkg"
        if not target.exists():
            shutil.copytree(REPO / "totpd", target / "totpd", ignore=shutil.ignore_patterns("__pycache__"))
            for path in [target, *target.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
        return str(target)

    def enroll(self, user: str, secret: str | None = None, *options: str) -> str:
        """Enroll `user` at once (no confirmation) and return its base32 secret."""
        secret = secret or pyotp.random_base32(32)
        result = self.ctl("enroll", user, "--no-confirm", "--json", "--secret-file", "-", *options, input=secret + "\n")
        if result.returncode != 0:
            raise RuntimeError(f"enroll {user} failed: {result.stderr}")
        return json.loads(result.stdout)["secret"]

    def enroll_json(self, user: str, *options: str) -> dict:
        result = self.ctl("enroll", user, "--no-confirm", "--json", *options)
        if result.returncode != 0:
            raise RuntimeError(f"enroll {user} failed: {result.stderr}")
        return json.loads(result.stdout)
