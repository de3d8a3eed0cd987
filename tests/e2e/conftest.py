"""Fixtures for end-to-end tests through a real sshd and a real sudo.

Each test gets a `LoginHost`: a helper process (nsrun.py) in a private mount
namespace where the test's PAM service files, test users, a private sudoers and
an sshd on 127.0.0.1 exist; the host's /etc is never touched. The network
namespace is shared, so paramiko connects from this process; sudo runs inside
the namespace through the helper. Everything it started is stopped, and its work
directory removed, when the test ends.

Nothing here skips: if sshd, sudo, unshare or the module are missing, the test
fails and says what is missing (CI installs everything).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import paramiko
import pyotp
import pytest

import daemonproc

REPO = Path(__file__).resolve().parents[2]
NSRUN = Path(__file__).resolve().with_name("nsrun.py")
PAM_MODULE = REPO / "pam" / "pam_totpd.so"

TEST_USER = "totptest"
TEST_UID = 2901
REQUIRED_TOOLS = ("unshare", "mount", "/usr/sbin/sshd", "sudo", "visudo", "setpriv", "ssh-keygen")

SUDOERS = """\
Defaults env_reset
Defaults secure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
Defaults timestamp_timeout=0, passwd_tries=1
Defaults !lecture, !syslog, !fqdn
root ALL=(ALL:ALL) ALL
{user} ALL=(root) ALL
"""

# The session and account part of an sshd stack, as Debian's sshd and common-*
# files would give it, without modules that need systemd, SELinux or a utmp group.
SSHD_ACCOUNT_SESSION = """\
account required pam_nologin.so
account required pam_unix.so
session required pam_unix.so
session required pam_limits.so
"""
SUDO_ACCOUNT_SESSION = """\
account required pam_unix.so
session required pam_limits.so
session required pam_unix.so
"""


def stacks(auth: str) -> dict[str, str]:
    """The sshd and sudo service files for an `auth` part under test."""
    return {"sshd": auth + SSHD_ACCOUNT_SESSION, "sudo": auth + SUDO_ACCOUNT_SESSION}


def entry_point_argv(target: str, *args: str) -> list[str]:
    """argv that runs a console_scripts entry point ("pkg.mod:func") exactly as
    the installed script would, without needing the package installed."""
    module, func = target.split(":")
    code = f"import sys; from {module} import {func} as main; sys.exit(main())"
    return [sys.executable, "-c", code, *args]


def python_env() -> dict[str, str]:
    """Environment for Python processes started inside the namespace."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


class HarnessError(AssertionError):
    """The harness itself could not do what a test asked."""


@dataclasses.dataclass
class SshResult:
    authenticated: bool
    prompts: list[str]          # every prompt the client was shown, in order
    instructions: list[str]     # the instruction text of each keyboard-interactive round
    output: str = ""            # stdout of the command run after login
    exit_status: int | None = None
    error: str = ""


@dataclasses.dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass
class SshSession:
    """A logged-in SSH connection (LoginHost.ssh_session)."""

    transport: paramiko.Transport
    result: SshResult

    def run(self, command: str, input: str = "") -> RunResult:
        """`command` on a new channel of this connection, `input` on its stdin, then EOF."""
        channel = self.transport.open_session(timeout=10)
        channel.settimeout(20)
        channel.exec_command(command)
        channel.sendall(input.encode())
        channel.shutdown_write()
        stdout = channel.makefile("r").read().decode(errors="replace")
        stderr = channel.makefile_stderr("r").read().decode(errors="replace")
        return RunResult(channel.recv_exit_status(), stdout, stderr)


class LoginHost:
    """The namespace helper plus what a test needs to drive sshd and sudo in it."""

    def __init__(self, workdir: Path, user: str = TEST_USER) -> None:
        self.workdir = workdir
        self.user = user
        self.client_key_path = workdir / "client_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "totpd-e2e-client",
                        "-f", str(self.client_key_path)], check=True)
        self.client_key = paramiko.Ed25519Key.from_private_key_file(str(self.client_key_path))
        self.sshd_port = 0
        self.host_key_b64 = ""
        self.pid = 0
        with open(workdir / "nsrun.log", "wb") as helper_log:
            self._helper = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", sys.executable, str(NSRUN)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=helper_log, text=True, bufsize=1)

    # -- the control channel ---------------------------------------------

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        if self._helper.poll() is not None:
            raise HarnessError(f"namespace helper exited ({self._helper.returncode}): {self.helper_log()}")
        assert self._helper.stdin and self._helper.stdout
        self._helper.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self._helper.stdin.flush()
        line = self._helper.stdout.readline()
        if not line:
            raise HarnessError(f"namespace helper died during {op}: {self.helper_log()}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise HarnessError(reply["error"])
        return reply

    def helper_log(self) -> str:
        return (self.workdir / "nsrun.log").read_text(errors="replace")[-4000:]

    def setup(self, pam: dict[str, str], users: list[dict[str, Any]], **extra: Any) -> None:
        """`extra` goes to nsrun.py's setup as is (e.g. `nss`)."""
        for user in users:
            user.setdefault("authorized_keys", [self.public_key_line()])
        reply = self.request("setup", workdir=str(self.workdir), pam=pam, users=users,
                             sudoers=SUDOERS.format(user=self.user),
                             host_mount_namespace=os.readlink("/proc/self/ns/mnt"), **extra)
        self.pid = reply["pid"]
        self.sshd_port = reply["sshd_port"]
        with open(reply["sshd_host_key"], encoding="ascii") as handle:
            self.host_key_b64 = handle.read().split()[1]

    def close(self) -> None:
        if self._helper.poll() is None:
            try:
                self.request("shutdown")
            except (HarnessError, OSError):
                pass
            try:
                self._helper.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._helper.kill()
                self._helper.wait()
        for pipe in (self._helper.stdin, self._helper.stdout):
            if pipe is not None:
                pipe.close()

    # -- what tests use ----------------------------------------------------

    def public_key_line(self) -> str:
        return f"{self.client_key.get_name()} {self.client_key.get_base64()} totpd-e2e-client"

    def write_pam_service(self, service: str, text: str) -> None:
        """Replace a service file; the namespace's /etc/pam.d shows it at once."""
        (self.workdir / "etc" / "pam.d" / service).write_text(text)

    def spawn(self, name: str, argv: list[str], **wait: Any) -> dict[str, Any]:
        return self.request("spawn", name=name, argv=argv, env=python_env(), cwd=str(REPO), **wait)

    def stop(self, name: str) -> int:
        return self.request("stop", name=name)["returncode"]

    def run(self, argv: list[str], input: str = "", timeout: float = 20) -> RunResult:
        reply = self.request("run", argv=argv, input=input, env=python_env(), cwd=str(REPO),
                             timeout=timeout)
        return RunResult(reply["returncode"], reply["stdout"], reply["stderr"])

    def sudo(self, command: list[str], answer: str, user: str | None = None) -> RunResult:
        """`sudo -S -k COMMAND` as `user` (default: the test user; switched with
        setpriv: no PAM on the way in), with `answer` typed at the prompt sudo shows."""
        user = user or self.user
        return self.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                         "--reset-env", "sudo", "-S", "-k", "--", *command], input=answer + "\n")

    def ssh(self, answers: list[str] | Callable[[str], str], user: str | None = None,
            command: str = "id -un", use_key: bool = True, source: str = "127.0.0.1") -> SshResult:
        """Log in as `user` (default: the test user) with the client key, then
        keyboard-interactive; `answers` are typed at the prompts in order (or
        computed from the prompt text). `source`: the loopback address to connect
        from, which sshd hands PAM as the remote host."""
        with self.ssh_session(answers, user, use_key, source) as session:
            if session.result.authenticated:
                done = session.run(command)
                session.result.output, session.result.exit_status = done.stdout, done.returncode
            return session.result

    @contextlib.contextmanager
    def ssh_session(self, answers: list[str] | Callable[[str], str], user: str | None = None,
                    use_key: bool = True, source: str = "127.0.0.1") -> Iterator["SshSession"]:
        """One SSH connection, logged in as `ssh` does and kept open: each `run` on it
        is a command inside the same login session."""
        user = user or self.user
        result = SshResult(authenticated=False, prompts=[], instructions=[])
        pending = list(answers) if not callable(answers) else []

        def handler(title: str, instructions: str, prompt_list: list[tuple[str, bool]]) -> list[str]:
            result.instructions.append(instructions)
            replies = []
            for prompt, _echo in prompt_list:
                result.prompts.append(prompt)
                if callable(answers):
                    replies.append(answers(prompt))
                else:
                    replies.append(pending.pop(0) if pending else "")
            return replies

        sock = socket.create_connection(("127.0.0.1", self.sshd_port), timeout=10, source_address=(source, 0))
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=10)
            served_key = transport.get_remote_server_key()
            if served_key.get_base64() != self.host_key_b64:
                raise HarnessError(f"sshd on port {self.sshd_port} is not ours (host key mismatch)")
            try:
                if use_key:
                    remaining = transport.auth_publickey(user, self.client_key)
                    if transport.is_authenticated():
                        raise HarnessError("sshd accepted the key alone: the second factor was skipped")
                    if "keyboard-interactive" not in remaining:
                        raise HarnessError(f"sshd offers {remaining} after the key, not keyboard-interactive")
                transport.auth_interactive(user, handler)
            except paramiko.AuthenticationException as exc:
                result.error = str(exc)
            result.authenticated = transport.is_authenticated()
            yield SshSession(transport, result)
        finally:
            transport.close()

    def _openssh_argv(self, user: str, command: str) -> list[str]:
        """`ssh`'s arguments: this host's key pinned, the client's key, then keyboard-interactive once."""
        known_hosts = self.workdir / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{self.sshd_port} ssh-ed25519 {self.host_key_b64}\n")
        return ["-F", "/dev/null", "-p", str(self.sshd_port), "-i", str(self.client_key_path),
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "PreferredAuthentications=publickey,keyboard-interactive",
                "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10",
                f"{user}@127.0.0.1", command]

    def openssh(self, answer: str, user: str | None = None, command: str = "id -un") -> tuple[str, int]:
        """Log in with the OpenSSH `ssh` client on a pty (pexpect), type `answer` at
        the first prompt; returns (everything the terminal showed, exit status)."""
        user = user or self.user
        import pexpect

        argv = self._openssh_argv(user, command)
        transcript = io.StringIO()
        child = pexpect.spawn("ssh", argv, timeout=15, encoding="utf-8", env={"PATH": os.environ["PATH"]})
        child.logfile_read = transcript
        try:
            child.expect([r"[Cc]ode: ", r"[Pp]assword: "])
            child.sendline(answer)
            child.expect(pexpect.EOF)
        finally:
            child.close()
        status = child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 1)
        return transcript.getvalue(), status

    def openssh_dialog(self, answer: Callable[[str], str], user: str | None = None,
                       command: str = "id -un") -> tuple[str, int]:
        """As `openssh`, but at each prompt (a line ending in ': ' after the key) types
        answer(what the terminal showed since the last answer)."""
        user = user or self.user
        import pexpect

        argv = self._openssh_argv(user, command)
        transcript = io.StringIO()
        child = pexpect.spawn("ssh", argv, timeout=15, encoding="utf-8", env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
        child.logfile_read = transcript
        try:
            while child.expect([r"(?:[Cc]ode|[Pp]assword|the app|continue): ", pexpect.EOF]) == 0:
                child.sendline(answer(child.before + child.after))
        finally:
            child.close()
        status = child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 1)
        return transcript.getvalue(), status

    def wait_for_log(self, name: str, text: str, timeout: float = 5.0) -> bool:
        """True once `text` appears in a process's log. sshd's privilege-separated
        child logs through its monitor, so a line may land just after the client
        has its answer."""
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def log(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def mounts_below(directory: Path) -> list[str]:
    prefix = str(directory.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            mount_point = line.split()[4]
            if mount_point == prefix.rstrip("/") or mount_point.startswith(prefix):
                found.append(mount_point)
    return found


def remove_workdir(directory: Path) -> None:
    """Delete a work dir without ever crossing into a mount (TESTING-NOTES.md)."""
    mounted = mounts_below(directory)
    if mounted:
        raise HarnessError(f"refusing to delete {directory}: still mounted below it: {mounted}")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(directory)], check=True)


@pytest.fixture(scope="session")
def e2e_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (mount namespaces, sshd, sudo)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"end-to-end tests need {', '.join(missing)}: install openssh-server, sudo, util-linux")


@pytest.fixture
def make_login_host(e2e_tools: None, request: pytest.FixtureRequest) -> Iterator[Callable[..., LoginHost]]:
    """Factory: make_login_host(auth="auth required pam_x.so\\n", password_hash=...)
    sets up a namespace whose sshd and sudo services authenticate with `auth`,
    with the test user (`user`, `uid`), any `extra_users` (name/uid dicts) and sshd
    running, and returns it; `setup` goes to nsrun.py's setup (e.g. `nss`)."""
    made: list[tuple[LoginHost | None, Path]] = []

    def make(auth: str, password_hash: str = "*", user: str = TEST_USER, uid: int = TEST_UID,
             extra_users: tuple[dict[str, Any], ...] = (), **setup: Any) -> LoginHost:
        workdir = Path(tempfile.mkdtemp(prefix="totpd-e2e-"))
        os.chmod(workdir, 0o755)  # the test user's processes (sudo) must reach the daemon socket
        made.append((None, workdir))
        host = LoginHost(workdir, user)
        made[-1] = (host, workdir)
        host.setup(stacks(auth), [{"name": user, "uid": uid, "password_hash": password_hash}, *extra_users], **setup)
        return host

    yield make
    failed = getattr(request.node, "e2e_failed", False)
    keep = os.environ.get("TOTPD_E2E_KEEP") == "1"
    for host, workdir in made:
        if host is not None:
            host.close()
        if failed:  # shown by pytest under "Captured stdout teardown"
            for log in sorted((workdir / "logs").glob("*.log")) + [workdir / "nsrun.log"]:
                if log.exists():
                    print(f"----- {log} (tail) -----\n{log.read_text(errors='replace')[-3000:]}")
        if keep:
            print(f"TOTPD_E2E_KEEP=1: kept {workdir}")
        else:
            remove_workdir(workdir)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    if outcome.get_result().failed:
        item.e2e_failed = True  # type: ignore[attr-defined]


# -- pam_totpd ------------------------------------------------------------

@pytest.fixture(scope="session")
def pam_module() -> Path:
    """The built module; built here with `make -C pam` so the tests exercise the tree."""
    if not (REPO / "pam" / "Makefile").exists():
        pytest.fail("pam/Makefile is missing: cannot build pam_totpd.so")
    done = subprocess.run(["make", "-C", str(REPO / "pam")], capture_output=True, text=True)
    if done.returncode != 0 or not PAM_MODULE.exists():
        pytest.fail(f"make -C pam failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return PAM_MODULE


@dataclasses.dataclass
class TotpSetup:
    host: LoginHost
    socket: str
    secret: str
    config: Path

    def code(self) -> str:
        """The code an authenticator app shows now."""
        return pyotp.TOTP(self.secret).now()

    def wrong_code(self) -> str:
        """A well-formed code that no step inside any plausible window accepts."""
        return daemonproc.wrong_code(self.secret)

    def start_daemon(self) -> None:
        self.host.spawn("totpd", entry_point_argv("totpd.daemon:main", "--config", str(self.config)),
                        wait_socket=self.socket, timeout=15)

    def stop_daemon(self) -> int:
        return self.host.stop("totpd")


@pytest.fixture
def make_totp(make_login_host: Callable[..., LoginHost], pam_module: Path) -> Callable[..., TotpSetup]:
    """Factory: make_totp(config="", auth_before="", control="required", auth_after="", **host)
    -> sshd and sudo stacks with pam_totpd under `control` (after `auth_before`, e.g.
    a password module, and before `auth_after`), the daemon running
    in the namespace with `config` (TOML lines) added to its own, and the test user
    enrolled (confirmed) with a known secret. `host` goes to make_login_host."""

    def make(config: str = "", auth_before: str = "", control: str = "required", auth_after: str = "",
             **host_settings: Any) -> TotpSetup:
        # The socket lives in the work dir, which exists only once the namespace is
        # set up: start with a deny-all stack, then write the real one.
        host = make_login_host(auth="auth required pam_deny.so\n", **host_settings)
        state = host.workdir / "totpd"
        state.mkdir(mode=0o755)
        socket = str(state / "totpd.sock")
        config_path = host.workdir / "totpd.toml"
        config_path.write_text(
            f'socket = "{socket}"\n'
            f'database = "{state / "totpd.db"}"\n'
            f'key_file = "{state / "master.key"}"\n'
            'socket_mode = "0666"\n'
            'audit = "stderr"\n'
            + config
        )
        for service, text in stacks(f"{auth_before}auth {control} {pam_module} socket={socket}\n{auth_after}").items():
            host.write_pam_service(service, text)
        setup = TotpSetup(host=host, socket=socket, secret=pyotp.random_base32(), config=config_path)
        setup.start_daemon()
        enrolled = host.run(entry_point_argv("totpd.cli:main", "--socket", socket, "enroll", host.user,
                                             "--no-confirm", "--json", "--secret-file", "-"),
                            input=setup.secret + "\n")
        assert enrolled.returncode == 0, f"enrollment failed: {enrolled.stderr}{enrolled.stdout}"
        return setup

    return make


@pytest.fixture
def totp(make_totp: Callable[..., TotpSetup]) -> TotpSetup:
    """make_totp() with the defaults: the test user, pam_totpd alone in the auth stacks."""
    return make_totp()
