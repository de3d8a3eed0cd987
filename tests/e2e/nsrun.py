"""A helper that lives inside a private mount namespace and runs sshd, sudo and
the daemon there, so end-to-end tests change nothing on the host.

Started by the e2e fixtures as

    unshare --mount --propagation private -- python3 tests/e2e/nsrun.py

it speaks JSON lines: one request per line on stdin, one reply per line on
stdout (logs of the processes it starts go to files in the work directory, never
to stdout). The first request must be `setup`; then any number of `spawn`,
`stop`, `run`; `shutdown` or end of input stops everything it started and exits,
and the namespace's mounts vanish with its last process.

What `setup` does inside the namespace only:
- /etc            <- bind of WORKDIR/etc, a copy of the host's /etc (cp -a) in
                     which setup then changes:
  pam.d/          the service files the test gives (the test may rewrite them
                  later from outside; the namespace sees the change at once);
  passwd, shadow, group, gshadow   the test users added;
  sudoers         the test's;
  nsswitch.conf, ld.so.conf, ld.so.cache   only if the test gives `nss`
                  ({"nsswitch": TEXT, "libdir": DIR}) for an NSS module of its
                  own (tests/nss/): TEXT, and a cache of the host's libraries
                  plus DIR. glibc dlopens libnss_NAME.so.2 by name and the cache
                  is the one place every process searches, setuid sudo too
                  (LD_LIBRARY_PATH is ignored there), so no system directory is
                  touched. ldconfig writes its aux cache to /var/cache/ldconfig
                  even with -C: a tmpfs there keeps it in the namespace.
  The whole directory, not single files: a bind over /etc/passwd is silently
  detached in every namespace when a host process renames a new file over
  /etc/passwd (useradd, userdel, ldconfig, dpkg: other tests on the machine), and
  the namespace would see the host's file again in the middle of a test.
- /home, /run, /var/log, /var/lib/sudo <- fresh tmpfs (homes for StrictModes,
                     /run/sshd and /run/sudo, and no wtmp/btmp/lastlog/lecture
                     writes reaching the host).

Nothing is ever mounted below WORKDIR, and /dev is never bound anywhere (see
TESTING-NOTES.md): deleting WORKDIR afterwards is safe.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

TMPFS_MOUNTS = ("/home", "/run", "/var/log", "/var/lib/sudo")
ACCOUNT_FILES = ("passwd", "shadow", "group", "gshadow")
SSHD = "/usr/sbin/sshd"


class HarnessError(Exception):
    """A setup step failed; the message says which and why."""


def check_call(argv: list[str]) -> None:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def bind(source: str, target: str) -> None:
    check_call(["mount", "--bind", source, target])


def tmpfs(target: str, mode: str = "0755") -> None:
    check_call(["mount", "-t", "tmpfs", "-o", f"mode={mode},nosuid,nodev", "totpd-e2e", target])


def assert_private_namespace(host_namespace: str) -> None:
    """Refuse to touch /etc unless we really are in a mount namespace of our own
    (`host_namespace` is the caller's /proc/self/ns/mnt link)."""
    if not host_namespace or os.readlink("/proc/self/ns/mnt") == host_namespace:
        raise HarnessError("nsrun.py must run under 'unshare --mount --propagation private'")


def private_etc(workdir: str) -> str:
    """WORKDIR/etc: a copy of /etc, bound over /etc; the host's SSH host keys left out."""
    etc = os.path.join(workdir, "etc")
    check_call(["cp", "-a", "/etc/.", etc])
    for key in glob.glob(os.path.join(etc, "ssh", "ssh_host_*")):
        os.remove(key)
    bind(etc, "/etc")
    return etc


def append_accounts(etc: str, users: list[dict[str, Any]]) -> None:
    lines: dict[str, list[str]] = {name: [] for name in ACCOUNT_FILES}
    for user in users:
        name, uid = user["name"], int(user["uid"])
        home = f"/home/{name}"
        lines["passwd"].append(f"{name}:x:{uid}:{uid}:totpd e2e:{home}:{user.get('shell', '/bin/sh')}")
        lines["shadow"].append(f"{name}:{user.get('password_hash', '*')}:19000:0:99999:7:::")
        lines["group"].append(f"{name}:x:{uid}:")
        lines["gshadow"].append(f"{name}:!::")
    for name in ACCOUNT_FILES:
        with open(os.path.join(etc, name), "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines[name]))


def make_homes(users: list[dict[str, Any]]) -> None:
    for user in users:
        uid = int(user["uid"])
        home = f"/home/{user['name']}"
        ssh_dir = os.path.join(home, ".ssh")
        os.makedirs(ssh_dir, mode=0o700)
        os.chmod(home, 0o755)
        with open(os.path.join(ssh_dir, "authorized_keys"), "w", encoding="utf-8") as handle:
            handle.write("".join(key.strip() + "\n" for key in user.get("authorized_keys", [])))
        for path in (home, ssh_dir, os.path.join(ssh_dir, "authorized_keys")):
            os.chown(path, uid, uid)


def install_pam(etc: str, services: dict[str, str]) -> None:
    pam_dir = os.path.join(etc, "pam.d")
    # A deny-all fallback: a service nobody configured must never let anyone in.
    services = {"other": "auth required pam_deny.so\naccount required pam_deny.so\n"
                         "password required pam_deny.so\nsession required pam_deny.so\n",
                **services}
    for name, text in services.items():
        with open(os.path.join(pam_dir, name), "w", encoding="utf-8") as handle:
            handle.write(text)


def install_nss(etc: str, nss: dict[str, str]) -> None:
    nsswitch = os.path.join(etc, "nsswitch.conf")
    with open(nsswitch, "w", encoding="utf-8") as handle:
        handle.write(nss["nsswitch"])
    ld_conf = os.path.join(etc, "ld.so.conf")
    with open(ld_conf, "w", encoding="utf-8") as handle:
        handle.write(f"include /etc/ld.so.conf.d/*.conf\n{nss['libdir']}\n")
    cache = os.path.join(etc, "ld.so.cache")
    tmpfs("/var/cache/ldconfig", "0700")
    check_call(["ldconfig", "-X", "-C", cache, "-f", ld_conf])


def install_sudoers(etc: str, text: str) -> None:
    path = os.path.join(etc, "sudoers")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chown(path, 0, 0)
    os.chmod(path, 0o440)
    check_call(["visudo", "-c", "-q", "-f", path])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sshd_config(workdir: str, port: int, extra: str) -> str:
    ssh_dir = os.path.join(workdir, "ssh")
    host_key = os.path.join(ssh_dir, "ssh_host_ed25519_key")
    check_call(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "totpd-e2e-host", "-f", host_key])
    path = os.path.join(ssh_dir, "sshd_config")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(
            f"Port {port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            "PidFile none\n"
            "UsePAM yes\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication yes\n"
            "AuthenticationMethods publickey,keyboard-interactive\n"
            "AuthorizedKeysFile .ssh/authorized_keys\n"
            "StrictModes yes\n"
            "PermitRootLogin no\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "LoginGraceTime 30\n"
            "MaxStartups 100\n"
            "LogLevel VERBOSE\n"
            + extra
        )
    check_call([SSHD, "-t", "-f", path])
    return path


class Namespace:
    def __init__(self) -> None:
        self.workdir = ""
        self.processes: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    # -- requests -------------------------------------------------------

    def setup(self, request: dict[str, Any]) -> dict[str, Any]:
        assert_private_namespace(request["host_mount_namespace"])
        self.workdir = request["workdir"]
        for sub in ("etc", "ssh", "logs"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        for target in TMPFS_MOUNTS:
            if os.path.isdir(target):
                tmpfs(target)
        os.makedirs("/run/sshd", mode=0o755)
        etc = private_etc(self.workdir)
        users = request.get("users", [])
        append_accounts(etc, users)
        make_homes(users)
        install_pam(etc, request.get("pam", {}))
        install_sudoers(etc, request["sudoers"])
        if "nss" in request:
            install_nss(etc, request["nss"])
        reply: dict[str, Any] = {"pid": os.getpid(), "workdir": self.workdir}
        if request.get("sshd", True):
            port = free_port()
            config = sshd_config(self.workdir, port, request.get("sshd_extra", ""))
            self.spawn({"name": "sshd", "argv": [SSHD, "-D", "-e", "-f", config],
                        "wait_tcp": port, "timeout": 10})
            reply.update(sshd_port=port, sshd_config=config,
                         sshd_host_key=os.path.join(self.workdir, "ssh", "ssh_host_ed25519_key.pub"))
        return reply

    def spawn(self, request: dict[str, Any]) -> dict[str, Any]:
        """Start a background process; wait until its socket or port answers."""
        name = request["name"]
        if name in self.processes and self.processes[name][0].poll() is None:
            raise HarnessError(f"a process named {name!r} is already running")
        log_path = os.path.join(self.workdir, "logs", f"{name}.log")
        env = {**os.environ, **request.get("env", {})}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(request["argv"], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=env, cwd=request.get("cwd"),
                                       start_new_session=True)
        self.processes[name] = (process, log_path)
        deadline = time.monotonic() + float(request.get("timeout", 10))
        while not self._answers(request):
            if process.poll() is not None:
                raise HarnessError(f"{name} exited with {process.returncode} before it was ready; "
                                   f"log {log_path}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                self.stop({"name": name})
                raise HarnessError(f"{name} was not ready within {request.get('timeout', 10)} s; "
                                   f"log {log_path}:\n{tail(log_path)}")
            time.sleep(0.02)
        return {"pid": process.pid, "log": log_path}

    def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        process, _ = self.processes.pop(request["name"])
        return {"returncode": terminate(process)}

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run a command to completion inside the namespace."""
        env = {**os.environ, **request.get("env", {})}
        try:
            done = subprocess.run(request["argv"], input=request.get("input", "").encode(),
                                  capture_output=True, env=env, cwd=request.get("cwd"),
                                  timeout=float(request.get("timeout", 20)))
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{request['argv'][0]} did not finish within {exc.timeout} s") from None
        return {"returncode": done.returncode,
                "stdout": done.stdout.decode(errors="replace"),
                "stderr": done.stderr.decode(errors="replace")}

    def shutdown(self) -> None:
        for name in list(self.processes):
            self.stop({"name": name})

    # -- helpers --------------------------------------------------------

    @staticmethod
    def _answers(request: dict[str, Any]) -> bool:
        if "wait_socket" in request:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(request["wait_socket"])
                    return True
                except OSError:
                    return False
        if "wait_tcp" in request:
            try:
                socket.create_connection(("127.0.0.1", int(request["wait_tcp"])), timeout=1).close()
                return True
            except OSError:
                return False
        return True


def terminate(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process group (sshd's per-connection children too), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read()[-limit:].decode(errors="replace")
    except OSError as exc:
        return f"(cannot read: {exc.strerror})"


def main() -> int:
    namespace = Namespace()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies may reach the channel
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request.get("op")
            try:
                if op == "shutdown":
                    namespace.shutdown()
                    out.write(json.dumps({"ok": True}) + "\n")
                    out.flush()
                    return 0
                if op == "setup":
                    reply = namespace.setup(request)
                elif op == "spawn":
                    reply = namespace.spawn(request)
                elif op == "stop":
                    reply = namespace.stop(request)
                elif op == "run":
                    reply = namespace.run(request)
                else:
                    raise HarnessError(f"unknown op {op!r}")
                reply["ok"] = True
            except (HarnessError, OSError, KeyError) as exc:
                reply = {"ok": False, "error": f"{op}: {type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
        return 0
    finally:
        namespace.shutdown()


if __name__ == "__main__":
    sys.exit(main())
