"""`totpctl doctor`: read the real configuration and say what stops the second factor.

Each check is a small function returning findings (severity, a stable id, the
message, the fix). Nothing here changes the system: it reads PAM and sshd files,
runs `sshd -T`, asks the daemon (`ping`, `list`) and stats files. docs/doctor.md
explains every finding.

Exit status: 0 no error (warnings allowed, and counted in the last line);
1 at least one error finding; 2 the doctor itself could not run (bad options,
--root that is not a directory, an explicit --config that cannot be read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from typing import Callable, Iterable

from . import __version__, clock, config as config_module, grace, hostclock, pamstack
from .client import Client
from .errors import CannotRun, ClientError, ConfigError
from .audit import quote
from .identity import canonical, canonical_rules, groups_of
from .policy import Policy, local_today
from .protocol import MAX_LIST_LIMIT
from .store import is_postgres

EXIT_CLEAN, EXIT_ERRORS, EXIT_CANNOT_RUN = 0, 1, 2
SERVICES = ("sshd", "sudo")
SSHD = "/usr/sbin/sshd"
NO_LOGIN_SHELLS = ("nologin", "false", "sync", "shutdown", "halt")
CHECKS = ("config", "pam", "sshd", "daemon", "files", "clock", "accounts", "grace")


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: str  # "ok" | "warn" | "error"
    id: str  # stable, e.g. "pam.sudo.bypass"; scripts match on it
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def ok(id: str, message: str) -> Finding:
    return Finding("ok", id, message)


def warn(id: str, message: str, fix: str) -> Finding:
    return Finding("warn", id, message, fix)


def error(id: str, message: str, fix: str) -> Finding:
    return Finding("error", id, message, fix)


@dataclasses.dataclass
class Options:
    config_path: str = config_module.DEFAULT_CONFIG_PATH
    config_explicit: bool = False
    root: str = "/"
    sshd_config: str = ""
    sshd_match: str = ""
    services: tuple[str, ...] = SERVICES
    checks: tuple[str, ...] = CHECKS


@dataclasses.dataclass
class Context:
    options: Options
    config: config_module.Config | None = None
    daemon_uid: int | None = None  # who the daemon runs as (SO_PEERCRED), once known
    host_clock_offset: int | None = None  # this host's clock error as the daemon's accepted codes agree on it


# -- configuration -------------------------------------------------------------------


def check_config(ctx: Context) -> list[Finding]:
    path = ctx.options.config_path
    if not ctx.options.config_explicit and not os.path.exists(path):
        ctx.config = config_module.Config(path=path)
        return [warn("config.absent", f"{path}: no configuration file; the daemon's defaults are assumed",
                     f"create {path} (docs/configuration.md) or pass --config FILE")]
    try:
        ctx.config = config_module.load(path)
    except ConfigError as exc:
        if ctx.options.config_explicit and not os.path.exists(path):
            raise CannotRun(str(exc)) from None
        return [error("config.invalid", str(exc), "fix the key it names; the daemon will not start with it")]
    return [ok("config.ok", f"{path}: configuration is valid")]


# -- PAM -------------------------------------------------------------------------------


def check_pam(ctx: Context) -> list[Finding]:
    reader = pamstack.Reader(ctx.options.root)
    findings: list[Finding] = []
    for service in ctx.options.services:
        findings += check_pam_service(reader, service, ctx.config)
    return findings


def check_pam_service(reader: pamstack.Reader, service: str, config: config_module.Config | None) -> list[Finding]:
    base = f"pam.{service}"
    path = f"/etc/pam.d/{service}"
    stack = reader.stack(service)
    findings: list[Finding] = []
    if not stack.path:
        other = reader.stack("other")
        if not other.path:
            return [error(f"{base}.no_file", f"{path}: missing, and so is /etc/pam.d/other: libpam refuses every {service} login",
                          f"create {path} from packaging/pam.d/{service}")]
        findings.append(warn(f"{base}.no_file", f"{path}: missing; libpam uses /etc/pam.d/other for {service}",
                             f"create {path} from packaging/pam.d/{service}"))
        stack = other
        path = other.path
    for where, what in stack.problems:
        findings.append(error(f"{base}.include_missing", f"{where}: {what}; libpam makes that line always fail",
                              "point the include at an existing file or remove the line"))
    totpd_lines = [i for i, line in enumerate(stack.lines) if line.is_totpd]
    if not totpd_lines:
        if stack.other_types:
            where = ", ".join(f"{line.type} at {line.where}" for line in stack.other_types)
            return findings + [error(f"{base}.wrong_type", f"{path}: pam_totpd.so appears only as {where}; only 'auth' lines ask for a code",
                                     f"use 'auth required pam_totpd.so' (docs/pam.md)")]
        return findings + [error(f"{base}.missing", f"{path}: no auth line reaches pam_totpd.so; {service} logins ask for no code",
                                 f"add 'auth required pam_totpd.so' as in packaging/pam.d/{service} (docs/pam.md)")]
    returns = _returns(reader, stack)
    for i, line in enumerate(stack.lines):
        if line.is_totpd and returns.get(i) == pamstack.MISSING_MODULE_RETURNS:
            findings.append(error(f"{base}.module_not_found", f"{line.where}: module {line.module} is not installed; libpam gets module_unknown from it",
                                  "make -C pam install, or give the module's full path"))
    if len(totpd_lines) > 1:
        where = ", ".join(stack.lines[i].where for i in totpd_lines)
        findings.append(warn(f"{base}.duplicate", f"{path}: pam_totpd.so is reached {len(totpd_lines)} times ({where}): a login asks for two codes, and the second is refused as a replay within the same 30 s",
                             "keep one pam_totpd.so line (pam-auth-update's profile already puts one in common-auth)"))
    expected_socket = config.socket if config else None
    for i in totpd_lines:
        line = stack.lines[i]
        sockets = [arg.split("=", 1)[1] for arg in line.args if arg.startswith("socket=")]
        used = sockets[-1] if sockets else "/run/totpd/totpd.sock"
        if expected_socket and used != expected_socket:
            findings.append(error(f"{base}.socket_mismatch", f"{line.where}: pam_totpd.so asks {used} but the daemon listens on {expected_socket}",
                                  f"set socket={expected_socket} on the line, or 'socket' in {config.path if config else 'the config'}"))
    results = pamstack.outcomes(stack.lines, returns)
    findings += _judge(base, path, stack.lines, results)
    if service != "sshd" and _enrolls_at_login(config, service):  # sshd: its own methods may be the first factor
        skipped = pamstack.totpd_without_first_factor(stack.lines, returns)
        if skipped is not None:
            findings.append(error(f"{base}.enroll_without_first_factor", f"{path}: enroll_at_login is on for {service}, and pam_totpd.so runs although no first factor succeeded: {pamstack.explain(stack.lines, skipped)}; whoever knows an unenrolled account's name could enroll their own phone",
                                  f"put a password module before pam_totpd.so as 'requisite' (as @include common-auth does), or set enroll_at_login = false in [services.{service}]"))
    if not findings:
        findings.append(ok(f"{base}.ok", f"{path}: every successful login passes pam_totpd.so"))
    return findings


def _returns(reader: pamstack.Reader, stack: pamstack.Stack) -> dict[int, tuple[str, ...]]:
    """What each line's module may return (a missing module: module_unknown)."""
    returns: dict[int, tuple[str, ...]] = {}
    for i, line in enumerate(stack.lines):
        if line.broken or line.substack_header:
            continue
        if not pamstack.module_exists(reader, line.module):
            returns[i] = pamstack.MISSING_MODULE_RETURNS
        else:
            returns[i] = pamstack.KNOWN_RETURNS.get(line.module_name, pamstack.GENERIC_RETURNS)
    return returns


def _enrolls_at_login(config: config_module.Config | None, service: str) -> bool:
    return config is not None and Policy(config).rules(service).enroll_at_login


def _judge(base: str, path: str, lines: list[pamstack.Line], results: dict) -> list[Finding]:
    """Turn the reachable (verdict, pam_totpd answers) pairs into findings."""
    findings: list[Finding] = []
    succeeding = {answers: trace for (granted, answers), trace in results.items() if granted}
    bypass = [trace for answers, trace in succeeding.items() if not answers]
    refused = [trace for answers, trace in succeeding.items()
               if answers and not set(answers) & {"success", "ignore"} and set(answers) - {"authinfo_unavail"}]
    fail_open = [trace for answers, trace in succeeding.items() if answers and set(answers) == {"authinfo_unavail"}]
    if bypass:
        findings.append(error(f"{base}.bypass", f"{path}: a login succeeds without pam_totpd.so being asked: {pamstack.explain(lines, bypass[0])}",
                              "put pam_totpd.so before any 'sufficient' or jumping module that can grant alone, or make those 'required' (docs/doctor.md)"))
    if refused:
        findings.append(error(f"{base}.not_enforced", f"{path}: a login succeeds although pam_totpd.so refused the code: {pamstack.explain(lines, refused[0])}",
                              "use 'auth required pam_totpd.so' (not optional, not [default=ignore])"))
    if fail_open:
        findings.append(warn(f"{base}.fail_open", f"{path}: when the daemon is unreachable, logins skip the code: {pamstack.explain(lines, fail_open[0])}",
                             "remove authinfo_unavail=ignore/ok unless availability is worth more than the second factor here"))
    if not succeeding:
        findings.append(warn(f"{base}.never_succeeds", f"{path}: no path through the auth stack grants a login, even with a right code",
                             "check the modules after pam_totpd.so (a pam_deny.so, a missing include or module)"))
    return findings


# -- sshd ------------------------------------------------------------------------------


def check_sshd(ctx: Context) -> list[Finding]:
    binary = shutil.which("sshd") or (SSHD if os.path.exists(SSHD) else None)
    if binary is None:
        return [ok("sshd.absent", "sshd is not installed; SSH checks skipped")]
    argv = [binary, "-T"]
    config = ctx.options.sshd_config
    if not config and ctx.options.root not in ("", "/"):
        config = os.path.join(ctx.options.root, "etc/ssh/sshd_config")
    if config:
        argv += ["-f", config]
    if ctx.options.sshd_match:
        argv += ["-C", ctx.options.sshd_match]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [error("sshd.unreadable", f"{' '.join(argv)}: did not run: {exc}", "run it by hand to see why")]
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return [error("sshd.unreadable", f"{' '.join(argv)} failed ({done.returncode}): {why}",
                      "fix what sshd names: it would not start with this configuration either (sshd -T also needs the host keys and /run/sshd)")]
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key.lower(), value.strip())
    trusting = ctx.config is not None and bool(
        ctx.config.trusted_networks or any(service.trusted_networks for service in ctx.config.services.values())
    )
    enrolling = False
    if _enrolls_at_login(ctx.config, "sshd"):
        reader = pamstack.Reader(ctx.options.root)
        stack = reader.stack("sshd")
        enrolling = not stack.path or pamstack.totpd_without_first_factor(stack.lines, _returns(reader, stack)) is not None
    return judge_sshd(settings, config or "sshd_config", trusting, enrolling)


def judge_sshd(settings: dict[str, str], where: str, trusting: bool = False, enrolling: bool = False) -> list[Finding]:
    """Findings from sshd's effective settings; `trusting`: totpd has trusted_networks;
    `enrolling`: enroll_at_login is on for sshd and its PAM stack checks no first factor
    before pam_totpd, so sshd's AuthenticationMethods must."""
    findings: list[Finding] = []
    if enrolling:
        methods = settings.get("authenticationmethods", "any")
        bare = "keyboard-interactive alone" if methods == "any" else next(
            (chain for chain in methods.split() if chain.split(",")[0].split(":")[0] == "keyboard-interactive"), None)
        if bare is not None:
            findings.append(error("sshd.enroll_without_first_factor", f"{where}: AuthenticationMethods {methods}: with enroll_at_login on and no first factor before pam_totpd in /etc/pam.d/sshd, '{bare}' lets whoever knows an unenrolled account's name enroll their own phone",
                                  "set 'AuthenticationMethods publickey,keyboard-interactive' (packaging/ssh/totpd.conf), or put a requisite password module before pam_totpd.so"))
    kbd = settings.get("kbdinteractiveauthentication", settings.get("challengeresponseauthentication", "yes"))
    methods = settings.get("authenticationmethods", "any")
    if settings.get("usepam", "no") != "yes":
        findings.append(error("sshd.usepam_off", f"{where}: UsePAM no: sshd never runs the PAM stack, so no code is asked",
                              "set 'UsePAM yes' (packaging/ssh/totpd.conf)"))
    if kbd != "yes":
        findings.append(error("sshd.kbdinteractive_off", f"{where}: KbdInteractiveAuthentication no: sshd cannot show the code prompt",
                              "set 'KbdInteractiveAuthentication yes'"))
    if methods == "any":
        if settings.get("pubkeyauthentication", "yes") == "yes":
            findings.append(warn("sshd.key_alone", f"{where}: AuthenticationMethods any with PubkeyAuthentication yes: a key alone logs in without a code",
                                 "set 'AuthenticationMethods publickey,keyboard-interactive' (or keyboard-interactive alone)"))
        if settings.get("passwordauthentication", "yes") == "yes" and settings.get("usepam") == "yes":
            findings.append(warn("sshd.password_auth", f"{where}: PasswordAuthentication yes: sshd answers every PAM prompt with the password, so pam_totpd gets the password as the code and refuses it",
                                 "set 'PasswordAuthentication no'; keyboard-interactive asks for the password and the code (or use forward_pass)"))
    else:
        lists = methods.split()
        without = [chain for chain in lists if not any(m.split(":")[0] == "keyboard-interactive" for m in chain.split(","))]
        if without:
            findings.append(error("sshd.method_without_code", f"{where}: AuthenticationMethods {methods}: '{without[0]}' completes a login without keyboard-interactive, so without a code",
                                  "make every list end in keyboard-interactive, e.g. 'publickey,keyboard-interactive'"))
    if trusting and settings.get("usedns", "no") == "yes":
        findings.append(warn("sshd.usedns", f"{where}: UseDNS yes: sshd hands PAM the client's host name instead of its address, so trusted_networks (which matches addresses only) never applies",
                             "set 'UseDNS no' (the default)"))
    if not findings:
        findings.append(ok("sshd.ok", f"{where}: UsePAM, KbdInteractiveAuthentication and AuthenticationMethods ({methods}) make sshd ask"))
    return findings


# -- the daemon ------------------------------------------------------------------------


def _peer_uid(path: str) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError:
            return None
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return uid


def check_daemon(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return []
    path = ctx.config.socket
    try:
        with Client(path, timeout=5) as client:
            reply = client.call("ping")
    except ClientError as exc:
        return [error("daemon.unreachable", str(exc), "start it: systemctl start totpd.socket (journalctl -u totpd says why it stopped)")]
    if reply.status != "OK":
        return [error("daemon.unhealthy", f"{path}: ping answered {reply.status}", "see the daemon's log")]
    ctx.daemon_uid = _peer_uid(path)
    if reply.fields.get("host_clock_offset", "").lstrip("+-").isdigit():
        ctx.host_clock_offset = int(reply.fields["host_clock_offset"])
    findings = [ok("daemon.answers", f"{path}: totpd {reply.fields.get('version', '?')} answers")]
    try:
        info = os.lstat(path)
    except OSError:
        return findings
    if not stat.S_ISSOCK(info.st_mode):
        findings.append(error("socket.not_socket", f"{path}: not a socket", "remove it and restart totpd"))
    trusted = {0} | ({ctx.daemon_uid} if ctx.daemon_uid is not None else set()) | _totpd_uid()
    if info.st_uid not in trusted:
        findings.append(error("socket.owner", f"{path}: owned by uid {info.st_uid}; pam_totpd trusts only root and the daemon's user",
                              "restart totpd so it recreates the socket, and check who created it"))
    mode = stat.S_IMODE(info.st_mode)
    if mode != ctx.config.socket_mode:
        findings.append(warn("socket.mode", f"{path}: mode {mode:04o}, the configuration says {ctx.config.socket_mode:04o}",
                             f"restart totpd, or chmod {ctx.config.socket_mode:04o} {path}"))
    findings += _directories(os.path.dirname(os.path.abspath(path)), "socket.dir_writable", path)
    return findings


def _totpd_uid() -> set[int]:
    try:
        return {pwd.getpwnam("totpd").pw_uid}
    except KeyError:
        return set()


# -- files -----------------------------------------------------------------------------


def check_files(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return []
    owner_uid = ctx.daemon_uid
    if owner_uid is None:
        totpd = _totpd_uid()
        owner_uid = next(iter(totpd)) if totpd else None
    files = [("key", ctx.config.key_file)]
    credential = _key_credential(ctx.options.root)
    if credential and not os.path.exists(ctx.config.key_file):
        files = []  # the key comes from systemd instead of key_file: checked below
    if not is_postgres(ctx.config.database):
        files = [("database", ctx.config.database)] + [
            ("database", ctx.config.database + suffix) for suffix in ("-wal", "-shm") if os.path.exists(ctx.config.database + suffix)
        ] + files
    findings: list[Finding] = []
    for kind, path in files:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            findings.append(warn(f"files.{kind}_missing", f"{path}: does not exist yet (the daemon creates it on first start)",
                                 "start totpd once, or fix the path in the configuration"))
            continue
        except OSError as exc:
            findings.append(error(f"files.{kind}_unreadable", f"{path}: cannot stat: {exc.strerror}", "check the path and its directories"))
            continue
        if owner_uid is None:
            owner_uid = info.st_uid
        if not stat.S_ISREG(info.st_mode):
            findings.append(error(f"files.{kind}_not_file", f"{path}: not a regular file (a symlink?)", "replace it with the real file"))
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            findings.append(error(f"files.{kind}_mode", f"{path}: mode {mode:04o}; others can read or change it", f"chmod 600 {path}"))
        if info.st_uid != owner_uid:
            findings.append(error(f"files.{kind}_owner", f"{path}: owned by uid {info.st_uid}, the daemon runs as uid {owner_uid}",
                                  f"chown {_name(owner_uid)} {path}"))
        findings += _directories(os.path.dirname(os.path.abspath(path)), f"files.{kind}_dir_writable", path)
    if credential:
        findings += _check_credential(credential)
    findings = _unique(findings)
    if not any(f.severity != "ok" for f in findings):
        findings.append(ok("files.ok", f"database and key: mode 0600, owned by {_name(owner_uid) if owner_uid is not None else 'the daemon'}, safe directories"))
    return findings


CREDSTORES = ("etc/credstore", "run/credstore")


def _key_credential(root: str) -> str | None:
    """The master key as a systemd credential (LoadCredential=totpd.key), if there is one."""
    for store in CREDSTORES:
        path = os.path.join(root or "/", store, "totpd.key")
        if os.path.exists(path):
            return path
    return None


def _check_credential(path: str) -> list[Finding]:
    """totpd.service has LoadCredential=totpd.key: systemd, as root, reads the key there
    and hands the daemon a private copy. It must be root's alone."""
    info = os.lstat(path)
    findings = [ok("files.key_credential", f"{path}: the master key, as a systemd credential (LoadCredential=totpd.key)")]
    if not stat.S_ISREG(info.st_mode):
        findings.append(error("files.credential_not_file", f"{path}: not a regular file (a symlink?)", "replace it with the real file"))
    elif stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != 0:
        findings.append(error("files.credential_mode", f"{path}: mode {stat.S_IMODE(info.st_mode):04o}, uid {info.st_uid}; only root may read it",
                              f"chown root:root {path} && chmod 600 {path}"))
    return findings + _directories(os.path.dirname(path), "files.credential_dir_writable", path)


def _directories(directory: str, id: str, what: str) -> list[Finding]:
    """Every directory up to / must not let others replace `what` (sticky ones are fine)."""
    findings = []
    current = directory
    while True:
        try:
            info = os.stat(current)
        except OSError:
            break
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            findings.append(error(id, f"{current}: mode {mode:04o}, writable by group or others: they can replace {what}",
                                  f"chmod go-w {current}"))
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return findings


def _unique(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for finding in findings:
        if (finding.id, finding.message) not in seen:
            seen.add((finding.id, finding.message))
            out.append(finding)
    return out


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- clock -----------------------------------------------------------------------------


def check_clock(ctx: Context) -> list[Finding]:
    return _host_offset(ctx) + _kernel_clock()


def _host_offset(ctx: Context) -> list[Finding]:
    """This host's clock error as the daemon's accepted codes agree on it (its `ping`,
    asked by check_daemon), with systemd's time-sync state."""
    if ctx.host_clock_offset is None or ctx.config is None:
        return []
    return [error("clock.host_offset", f"host clock: accepted codes of at least {ctx.config.host_clock_accounts} accounts agree at"
                  f" {ctx.host_clock_offset:+d} s from this host's clock: {hostclock.describe(ctx.host_clock_offset)};"
                  f" time sync: {clock.timesync()}",
                  "set this host's clock right and keep it so: an NTP client (chrony, systemd-timesyncd); see docs/doctor.md")]


def _kernel_clock() -> list[Finding]:
    state = clock.synchronized()
    if state:
        return [ok("clock.ok", "host clock: synchronized")]
    if state is None:
        return [warn("clock.unknown", "host clock: the kernel could not say whether it is synchronized", "check: timedatectl")]
    return [warn("clock.unsynchronized", "host clock: NOT synchronized; codes are refused once it drifts past the window",
                 "start an NTP client (chrony, systemd-timesyncd)")]


# -- sudo_grace ------------------------------------------------------------------------

UNIT = "totpd.service"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
HIDING = ("invisible", "noaccess", "ptraceable")  # ProtectProc= values that hide root's processes from totpd


def check_grace(ctx: Context) -> list[Finding]:
    """Can the binding of docs/pam.md "sudo inside a session" hold on this host?"""
    if ctx.config is None or grace.longest(ctx.config) <= 0:
        return [ok("grace.off", "sudo_grace: off")]
    findings: list[Finding] = []
    refused = "every sudo asks for a code (the grace is refused)"
    if not os.path.exists("/proc/self/sessionid"):
        findings.append(warn("grace.no_audit_sessions", f"this kernel has no audit session ids (/proc/PID/sessionid): {refused}",
                             "use a kernel built with CONFIG_AUDITSYSCALL (Debian's is), or set sudo_grace = 0"))
    sessions = pamstack.Reader(ctx.options.root).stack("sshd", kind="session")
    if sessions.path and not any(line.module_name == "pam_loginuid.so" for line in sessions.lines):
        findings.append(warn("grace.sshd.no_loginuid", f"{sessions.path} opens no audit session (pam_loginuid.so): "
                             f"{refused} inside SSH sessions",
                             f"add 'session required pam_loginuid.so' before the other session lines of {sessions.path}"))
    protect = _unit_setting(ctx.options.root, UNIT, "ProtectProc")
    if protect in HIDING:
        findings.append(warn("grace.protect_proc", f"{UNIT} has ProtectProc={protect}, which hides sudo and sshd from the"
                             f" daemon: {refused}", "install the drop-in totpd-grace.conf (docs/operations.md)"))
    if "hidepid" in _proc_mount_options():
        findings.append(warn("grace.hidepid", f"/proc is mounted with hidepid, which hides sudo and sshd from the daemon: {refused}",
                             "mount /proc without hidepid, or give the daemon's group the gid= of that mount"))
    if not findings:
        findings.append(ok("grace.ok", f"sudo_grace: up to {grace.longest(ctx.config)} s, bound to audit sessions"))
    return findings + [ok("grace.loginuid_immutable", _loginuid_immutable())]


def _unit_setting(root: str, unit: str, key: str) -> str | None:
    """`key`'s value in the unit as systemd would load it (the unit file, then its
    drop-ins by name), or None where the unit is not installed or never sets it."""
    def host(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    main = next((host(f"{d}/{unit}") for d in UNIT_DIRS if os.path.isfile(host(f"{d}/{unit}"))), None)
    if main is None:
        return None
    dropins: dict[str, str] = {}
    for directory in reversed(UNIT_DIRS):  # a drop-in in /etc masks one of the same name below
        folder = host(f"{directory}/{unit}.d")
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            if name.endswith(".conf"):
                dropins[name] = os.path.join(folder, name)
    value = None
    for path in [main] + [dropins[name] for name in sorted(dropins)]:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                name, equals, rest = line.strip().partition("=")
                if equals and name.strip() == key:
                    value = rest.strip() or None  # an empty assignment resets to the default
    return value


def _proc_mount_options() -> str:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if fields[4] == "/proc":
                    return fields[-1]
    except OSError:
        pass
    return ""


def _loginuid_immutable() -> str:
    """What auditctl says of loginuid_immutable (informational: unprivileged processes
    cannot change their loginuid either way)."""
    auditctl = shutil.which("auditctl")
    if auditctl is None:
        return "loginuid_immutable: unknown (auditctl not installed); only root can change a loginuid anyway"
    done = subprocess.run([auditctl, "-s"], capture_output=True, text=True, timeout=10)
    for line in done.stdout.splitlines():
        if line.startswith("loginuid_immutable"):
            return line.strip()
    return "loginuid_immutable: unknown (auditctl -s did not say)"


# -- accounts --------------------------------------------------------------------------


def _enrolled(socket_path: str) -> set[str]:
    active: set[str] = set()
    offset = 0
    with Client(socket_path, timeout=10) as client:
        while True:
            reply = client.call("list", offset=offset, limit=MAX_LIST_LIMIT)
            if reply.status != "OK":
                raise PermissionError(reply.message or reply.status)
            page = json.loads(reply.fields.get("accounts", "[]"))
            active.update(entry["user"] for entry in page if str(entry.get("enrolled")) == "1")
            offset += len(page)
            if not page or offset >= int(reply.fields.get("total", "0")):
                return active


def login_accounts() -> list[str]:
    """Accounts with a shell someone can log in with."""
    return sorted(
        entry.pw_name for entry in pwd.getpwall()
        if entry.pw_shell and os.path.basename(entry.pw_shell) not in NO_LOGIN_SHELLS
    )


def check_accounts(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return []
    try:
        enrolled = _enrolled(ctx.config.socket)
    except ClientError:
        return []  # daemon.unreachable already says so
    except PermissionError as exc:
        return [warn("accounts.cannot_list", f"the daemon refused to list accounts: {exc}", "run totpctl doctor as root")]
    policy = Policy(ctx.config)
    today = local_today(time.time())
    findings = []
    if ctx.config.check_accounts:
        # Stored under a name NSS resolves to another account (an earlier release kept
        # names as typed): logins as that account no longer find the enrollment.
        for stored in sorted(enrolled):
            name = canonical(stored)
            if name != stored:
                findings.append(error("accounts.not_canonical", f"account {quote(stored)} is enrolled under a name NSS resolves to {quote(name)}: logins as {quote(name)} do not find that enrollment",
                                      f"totpctl reset {stored}, then totpctl enroll {name}"))
    rules = {service: policy.rules(service) for service in ctx.options.services}
    if ctx.config.check_accounts:  # lists resolved as the daemon resolves them
        rules = {service: canonical_rules(each)[0] for service, each in rules.items()}
    denied: dict[str, set[str]] = {}
    allowed: dict[str, set[str]] = {}
    for user in login_accounts():
        if user in enrolled:
            continue
        groups = groups_of(user)
        for service in ctx.options.services:
            outcome = policy.unenrolled(rules[service], user, groups, today)
            if outcome.status == "DENIED":
                denied.setdefault(user, set()).add(service)
            elif policy.required(rules[service], user, groups):
                allowed.setdefault(user, set()).add(service)
    for user in sorted(denied):
        findings.append(error("accounts.unenrolled", f"account {user}: policy requires a code for {', '.join(sorted(denied[user]))} but it is not enrolled: its logins are refused",
                              f"totpctl enroll {user}, or exempt it (exempt_users) if it must not log in with a code"))
    for user in sorted(allowed):
        findings.append(warn("accounts.unenrolled_allowed", f"account {user}: policy requires a code for {', '.join(sorted(allowed[user]))} but it is not enrolled; it logs in without one until enrolled (unenrolled/allow_until)",
                             f"totpctl enroll {user}"))
    if not findings:
        findings.append(ok("accounts.ok", f"every account policy requires is enrolled ({len(enrolled)} enrolled)"))
    return findings


# -- running ---------------------------------------------------------------------------

_RUNNERS: dict[str, Callable[[Context], list[Finding]]] = {
    "config": check_config,
    "pam": check_pam,
    "sshd": check_sshd,
    "daemon": check_daemon,
    "files": check_files,
    "clock": check_clock,
    "accounts": check_accounts,
    "grace": check_grace,
}


def run(options: Options) -> list[Finding]:
    """All findings, in check order. Raises CannotRun when the doctor cannot work at all."""
    if not os.path.isdir(options.root):
        raise CannotRun(f"{options.root}: --root is not a directory")
    if options.sshd_config and not os.path.isfile(options.sshd_config):
        raise CannotRun(f"{options.sshd_config}: --sshd-config is not a file")
    ctx = Context(options)
    findings: list[Finding] = []
    config_findings = check_config(ctx)  # the other checks need the configuration, even when not reported
    for name in CHECKS:
        if name in options.checks:
            findings += config_findings if name == "config" else _RUNNERS[name](ctx)
    return findings


def exit_status(findings: Iterable[Finding]) -> int:
    return EXIT_ERRORS if any(f.severity == "error" for f in findings) else EXIT_CLEAN


def render(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        label = {"ok": "ok   ", "warn": "WARN ", "error": "ERROR"}[finding.severity]
        fix = f" -- fix: {finding.fix}" if finding.fix else ""
        lines.append(f"{label} {finding.id}: {finding.message}{fix}")
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warn" for f in findings)
    lines.append(f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}")
    return "\n".join(lines)


HELP = """\
Check that the second factor is really asked: PAM stacks of sshd and sudo
(includes, controls, jumps), sshd's effective configuration (sshd -T), the
daemon (ping, socket), permissions of the database, key and socket, the host
clock, and accounts the policy requires that are not enrolled. One finding a
line, with its fix; docs/doctor.md explains each id.

exit status: 0 no error (warnings are allowed and counted on the last line),
1 at least one error, 2 the doctor could not run (bad option, unreadable
--config, --root not a directory)."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    doctor = sub.add_parser("doctor", parents=[common], help="check PAM, sshd, the daemon, permissions, clock and enrollment",
                            description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--config", metavar="FILE", help=f"totpd's configuration (default {config_module.DEFAULT_CONFIG_PATH})")
    doctor.add_argument("--root", metavar="DIR", default="/", help="read PAM files (and sshd_config) below DIR instead of / (images, chroots)")
    doctor.add_argument("--sshd-config", metavar="FILE", help="run sshd -T -f FILE (default: sshd's own, or DIR/etc/ssh/sshd_config with --root)")
    doctor.add_argument("--sshd-match", metavar="SPEC", help="evaluate Match blocks for a connection: user=NAME,host=NAME,addr=IP (sshd -T -C)")
    doctor.add_argument("--service", action="append", metavar="NAME", help="PAM service to check (repeatable; default sshd and sudo)")
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    options = Options(
        config_path=args.config or config_module.DEFAULT_CONFIG_PATH,
        config_explicit=bool(args.config),
        root=args.root,
        sshd_config=args.sshd_config or "",
        sshd_match=args.sshd_match or "",
        services=tuple(args.service) if args.service else SERVICES,
    )
    try:
        findings = run(options)
    except CannotRun as exc:
        print(f"totpctl: doctor: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    status = exit_status(findings)
    if args.json:
        print(json.dumps({"version": __version__, "status": status, "findings": [f.as_dict() for f in findings]}, indent=1))
    else:
        print(render(findings))
    return status
