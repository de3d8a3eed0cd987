"""`totpctl doctor`: good and broken PAM stacks, sshd configs, daemons and files.

- PAM analysis: a matrix of service files under a --root tree (Debian's common-auth,
  includes, substacks, jumps, continuations, a missing module), each broken case
  giving its finding id and the good ones none;
- the real thing: the host's /etc/pam.d replaced (in a private mount namespace only)
  by good and broken copies, a real `sshd -T`, a real daemon;
- daemon down, unsafe file modes, an unenrolled required account, --json, exit codes.

Nothing skips: unshare, mount and sshd are part of CI's packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from totpd import doctor

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "pam" / "pam_totpd.so"
ARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"

COMMON_AUTH = """\
# Debian 12's /etc/pam.d/common-auth
auth\t[success=1 default=ignore]\tpam_unix.so nullok
auth\trequisite\t\t\tpam_deny.so
auth\trequired\t\t\tpam_permit.so
auth\toptional\t\t\tpam_cap.so
"""
SUB_SUFFICIENT = "auth sufficient pam_unix.so\nauth required pam_deny.so\n"
OTHER = "auth required pam_deny.so\naccount required pam_deny.so\n"

GOOD_SSHD_CONFIG = """\
UsePAM yes
KbdInteractiveAuthentication yes
PasswordAuthentication no
AuthenticationMethods publickey,keyboard-interactive
"""


def make_root(top: Path, sudo: str | None, with_module: bool = True) -> Path:
    root = top / "root"
    pam_d = root / "etc" / "pam.d"
    pam_d.mkdir(parents=True)
    (pam_d / "common-auth").write_text(COMMON_AUTH)
    (pam_d / "sub-sufficient").write_text(SUB_SUFFICIENT)
    (pam_d / "other").write_text(OTHER)
    if sudo is not None:
        (pam_d / "sudo").write_text(sudo)
    modules = root / "lib" / ARCH / "security"
    modules.mkdir(parents=True)
    for name in ("pam_unix.so", "pam_deny.so", "pam_permit.so", "pam_cap.so") + (("pam_totpd.so",) if with_module else ()):
        (modules / name).write_bytes(b"")
    if with_module:  # a module given by its full path, below the root like everything else
        (root / "opt" / "totpd").mkdir(parents=True)
        (root / "opt" / "totpd" / "pam_totpd.so").write_bytes(b"")
    return root


def pam_ids(tmp_path: Path, sudo: str | None, with_module: bool = True) -> list[str]:
    root = make_root(tmp_path, sudo, with_module)
    options = doctor.Options(config_path=str(tmp_path / "absent.conf"), root=str(root), services=("sudo",), checks=("pam",))
    return [finding.id for finding in doctor.run(options)]


GOOD_STACKS = {
    "password_then_code": "@include common-auth\nauth required pam_totpd.so\n",
    "code_alone": "auth required pam_totpd.so\n",
    "code_first": "auth requisite pam_totpd.so\n@include common-auth\n",
    "include_control": "auth include common-auth\nauth [success=ok default=die] pam_totpd.so\n",
    "full_path_after_substack": "auth substack common-auth\nauth required /opt/totpd/pam_totpd.so\n",
    "substack_done_ends_only_substack": "auth substack sub-sufficient\nauth required pam_totpd.so\n",
    "continued_line_and_comments": "# auth sufficient pam_permit.so\nauth required \\\n    pam_totpd.so # the code\n@include common-auth\n",
    "uppercase_type_and_control": "AUTH REQUIRED pam_totpd.so\n",
}

BROKEN_STACKS = {
    "sufficient_password_first": ("auth sufficient pam_unix.so\nauth required pam_totpd.so\n", "pam.sudo.bypass"),
    "include_with_sufficient": ("@include sub-sufficient\nauth required pam_totpd.so\n", "pam.sudo.bypass"),
    "jump_over_the_code": ("auth [success=2 default=ignore] pam_unix.so\nauth requisite pam_deny.so\n"
                           "auth required pam_totpd.so\nauth required pam_permit.so\n", "pam.sudo.bypass"),
    "optional_code": ("@include common-auth\nauth optional pam_totpd.so\n", "pam.sudo.not_enforced"),
    "default_ignore": ("@include common-auth\nauth [success=ok default=ignore] pam_totpd.so\n", "pam.sudo.not_enforced"),
    "fail_open": ("@include common-auth\nauth [success=ok authinfo_unavail=ignore default=die] pam_totpd.so\n",
                  "pam.sudo.fail_open"),
    "commented_out": ("#auth required pam_totpd.so\n@include common-auth\n", "pam.sudo.missing"),
    "continuation_into_comment": ("# auth required \\\npam_permit.so\n@include common-auth\n", "pam.sudo.missing"),
    "account_only": ("@include common-auth\naccount required pam_totpd.so\n", "pam.sudo.wrong_type"),
    "twice": ("auth required pam_totpd.so\nauth required pam_totpd.so\n", "pam.sudo.duplicate"),
    "include_missing": ("@include common-auth-gone\nauth required pam_totpd.so\n", "pam.sudo.include_missing"),
    "socket_elsewhere": ("auth required pam_totpd.so socket=/srv/other.sock\n", "pam.sudo.socket_mismatch"),
    "bad_jump": ("auth [success=5 default=die] pam_totpd.so\nauth required pam_permit.so\n", "pam.sudo.never_succeeds"),
}


@pytest.mark.parametrize("name", sorted(GOOD_STACKS))
def test_good_pam_stack_gives_only_ok(tmp_path: Path, name: str) -> None:
    assert pam_ids(tmp_path, GOOD_STACKS[name]) == ["pam.sudo.ok"]


@pytest.mark.parametrize("name", sorted(BROKEN_STACKS))
def test_broken_pam_stack_gives_its_finding(tmp_path: Path, name: str) -> None:
    text, expected = BROKEN_STACKS[name]
    ids = pam_ids(tmp_path, text)
    assert expected in ids
    assert "pam.sudo.ok" not in ids


def test_dash_type_with_missing_module_still_fails_closed(tmp_path: Path) -> None:
    """`-auth` only silences libpam's log; a missing module returns module_unknown."""
    ids = pam_ids(tmp_path, "@include common-auth\n-auth required pam_totpd.so\n", with_module=False)
    assert "pam.sudo.module_not_found" in ids and "pam.sudo.never_succeeds" in ids
    assert "pam.sudo.bypass" not in ids


def test_missing_module_under_ignore_control_is_a_bypass(tmp_path: Path) -> None:
    ids = pam_ids(tmp_path, "@include common-auth\n-auth [success=ok default=ignore] pam_totpd.so\n", with_module=False)
    assert "pam.sudo.module_not_found" in ids and "pam.sudo.not_enforced" in ids


def test_missing_service_file_falls_back_to_other(tmp_path: Path) -> None:
    ids = pam_ids(tmp_path, None)
    assert ids[0] == "pam.sudo.no_file" and "pam.sudo.missing" in ids


def test_bypass_message_names_the_granting_module(tmp_path: Path) -> None:
    root = make_root(tmp_path, BROKEN_STACKS["sufficient_password_first"][0])
    options = doctor.Options(config_path=str(tmp_path / "absent.conf"), root=str(root), services=("sudo",), checks=("pam",))
    [finding] = doctor.run(options)
    assert finding.severity == "error" and "pam_unix.so (/etc/pam.d/sudo:1) success" in finding.message


# -- sshd's effective configuration ----------------------------------------------------

SSHD_CASES = {
    "good": ("", ["sshd.ok"]),
    "usepam_no": ("UsePAM no\n", ["sshd.usepam_off"]),
    # sshd itself refuses AuthenticationMethods that need a disabled method
    "kbd_off_with_methods": ("KbdInteractiveAuthentication no\n", ["sshd.unreadable"]),
    "kbd_off": ("KbdInteractiveAuthentication no\nAuthenticationMethods any\n", ["sshd.kbdinteractive_off", "sshd.key_alone"]),
    "publickey_only": ("AuthenticationMethods publickey\n", ["sshd.method_without_code"]),
    "one_list_without_code": ("AuthenticationMethods publickey,keyboard-interactive publickey,password\n",
                              ["sshd.method_without_code"]),
    "any": ("AuthenticationMethods any\nPasswordAuthentication yes\n", ["sshd.key_alone", "sshd.password_auth"]),
}


def _sshd_config(directory: Path, first_lines: str) -> Path:
    """sshd keeps the first value of a keyword: the case's lines go before the good ones."""
    key = directory / "host_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    path = directory / "sshd_config"
    path.write_text(f"HostKey {key}\n{first_lines}{GOOD_SSHD_CONFIG}")
    return path


# -- the real thing: private mount namespace, real sshd -T, real daemon ---------------


def doctor_in_namespace(pam_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run totpctl doctor where /etc/pam.d is `pam_dir` and /run a fresh tmpfs (sshd -T
    wants /run/sshd); nothing is mounted below any work dir, nothing changes on the host."""
    script = 'mount --bind "$1" /etc/pam.d && mount -t tmpfs totpd-doctor /run && mkdir /run/sshd && shift && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(pam_dir),
            sys.executable, "-m", "totpd.cli", "doctor", "--json", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, cwd="/")


@pytest.fixture
def workdir():
    top = Path(tempfile.mkdtemp(prefix="totpd-doctor-"))
    top.chmod(0o755)
    yield top
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(top)], check=True)


def _pam_copy(top: Path, services: dict[str, str]) -> Path:
    pam_dir = top / "pam.d"
    shutil.copytree("/etc/pam.d", pam_dir, symlinks=True)
    for name, text in services.items():
        (pam_dir / name).write_text(text)
    return pam_dir


def _result(done: subprocess.CompletedProcess) -> dict:
    assert done.stdout, f"no output (exit {done.returncode}): {done.stderr}"
    report = json.loads(done.stdout)
    assert report["status"] == done.returncode
    return report


def _by_severity(report: dict, severity: str) -> set[str]:
    return {finding["id"] for finding in report["findings"] if finding["severity"] == severity}


ENVIRONMENT_WARNINGS = {"clock.unsynchronized", "clock.unknown"}  # this machine's clock, not the setup


@pytest.mark.parametrize("case", sorted(SSHD_CASES))
def test_sshd_effective_config_in_namespace(workdir: Path, case: str) -> None:
    pam_dir = _pam_copy(workdir, {})
    extra, expected = SSHD_CASES[case]
    config = _sshd_config(workdir, extra)
    (workdir / "totpd.conf").write_text("")  # all defaults
    report = _result(doctor_in_namespace(pam_dir, "--config", str(workdir / "totpd.conf"), "--sshd-config", str(config)))
    sshd_ids = {finding["id"] for finding in report["findings"] if finding["id"].startswith("sshd.")}
    assert sshd_ids == set(expected)


def test_good_setup_in_namespace_is_clean(workdir: Path, make_daemon) -> None:
    daemon = make_daemon(required_users=["root"])
    daemon.enroll("root")
    pam_dir = _pam_copy(workdir, {
        "sshd": f"auth required {MODULE} socket={daemon.socket_path}\naccount required pam_unix.so\n",
        "sudo": f"@include common-auth\nauth required {MODULE} socket={daemon.socket_path}\n@include common-account\n",
    })
    done = doctor_in_namespace(pam_dir, "--config", daemon.config_path, "--sshd-config", str(_sshd_config(workdir, "")))
    report = _result(done)
    assert done.returncode == 0, report
    assert _by_severity(report, "error") == set()
    assert _by_severity(report, "warn") <= ENVIRONMENT_WARNINGS
    assert {"pam.sshd.ok", "pam.sudo.ok", "sshd.ok", "daemon.answers", "files.ok", "accounts.ok", "config.ok"} <= _by_severity(report, "ok")


def test_broken_setup_in_namespace_names_each_problem(workdir: Path, make_daemon) -> None:
    daemon = make_daemon(required_users=["root"])
    daemon.enroll("root")
    pam_dir = _pam_copy(workdir, {
        "sshd": "@include common-auth\naccount required pam_unix.so\n",  # the code was forgotten
        "sudo": f"auth sufficient pam_unix.so\nauth required {MODULE} socket={daemon.socket_path}\n",
    })
    config = _sshd_config(workdir, "UsePAM no\nAuthenticationMethods publickey\n")
    done = doctor_in_namespace(pam_dir, "--config", daemon.config_path, "--sshd-config", str(config))
    report = _result(done)
    assert done.returncode == 1
    assert {"pam.sshd.missing", "pam.sudo.bypass", "sshd.usepam_off", "sshd.method_without_code"} <= _by_severity(report, "error")


# -- daemon, files, accounts, CLI ------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "totpd.cli", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd="/")


def test_daemon_files_and_accounts_findings(tmp_path: Path, make_daemon) -> None:
    daemon = make_daemon(required_users=["root"])  # root is required but not enrolled
    root = make_root(tmp_path, "auth required pam_totpd.so\n")
    database = Path(daemon.settings["database"])
    database.chmod(0o644)
    state = database.parent
    state.chmod(0o777)
    try:
        report = _result(run_cli("--json", "--config", daemon.config_path, "--root", str(root), "--service", "sudo"))
    finally:
        state.chmod(0o700)
    errors = _by_severity(report, "error")
    assert {"files.database_mode", "files.database_dir_writable", "accounts.unenrolled"} <= errors
    assert "daemon.answers" in _by_severity(report, "ok")
    assert report["status"] == 1

    daemon.stop()
    report = _result(run_cli("--json", "--config", daemon.config_path, "--root", str(root), "--service", "sudo"))
    assert "daemon.unreachable" in _by_severity(report, "error")


def test_text_output_one_finding_a_line_with_fix(tmp_path: Path) -> None:
    root = make_root(tmp_path, BROKEN_STACKS["optional_code"][0])
    (tmp_path / "totpd.conf").write_text("")  # all defaults
    done = run_cli("--config", str(tmp_path / "totpd.conf"), "--root", str(root), "--service", "sudo")
    assert done.returncode == 1
    line = next(line for line in done.stdout.splitlines() if "pam.sudo.not_enforced" in line)
    assert line.startswith("ERROR pam.sudo.not_enforced: ") and " -- fix: " in line
    assert done.stdout.splitlines()[-1].endswith("warnings")


def test_json_shape(tmp_path: Path) -> None:
    root = make_root(tmp_path, GOOD_STACKS["password_then_code"])
    report = _result(run_cli("--json", "--root", str(root), "--service", "sudo"))
    assert set(report) == {"version", "status", "findings"}
    for finding in report["findings"]:
        assert set(finding) == {"severity", "id", "message", "fix"}
        assert finding["severity"] in ("ok", "warn", "error")
    assert "pam.sudo.ok" in _by_severity(report, "ok")


def test_exit_2_when_the_doctor_cannot_run(tmp_path: Path) -> None:
    done = run_cli("--root", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "--root is not a directory" in done.stderr and not done.stdout
    done = run_cli("--config", str(tmp_path / "missing.conf"))
    assert done.returncode == 2 and "missing.conf" in done.stderr


def test_a_key_held_as_a_systemd_credential_is_checked_not_missing(tmp_path: Path, make_daemon) -> None:
    daemon = make_daemon()
    root = make_root(tmp_path, "auth required pam_totpd.so\n")
    key = Path(daemon.settings["key_file"])
    credstore = root / "etc" / "credstore"
    credstore.mkdir(parents=True, mode=0o700)
    credential = credstore / "totpd.key"
    credential.write_bytes(key.read_bytes())
    credential.chmod(0o600)
    key.rename(tmp_path / "moved.key")  # as an admin does after moving it to the credstore
    try:
        report = _result(run_cli("--json", "--config", daemon.config_path, "--root", str(root), "--service", "sudo"))
        assert "files.key_credential" in _by_severity(report, "ok")
        assert not {f["id"] for f in report["findings"]} & {"files.key_missing", "files.credential_mode"}
        credential.chmod(0o644)
        report = _result(run_cli("--json", "--config", daemon.config_path, "--root", str(root), "--service", "sudo"))
        assert "files.credential_mode" in _by_severity(report, "error")
    finally:
        (tmp_path / "moved.key").rename(key)


def test_usedns_is_flagged_only_where_trusted_networks_would_meet_host_names() -> None:
    settings = {"usepam": "yes", "kbdinteractiveauthentication": "yes",
                "authenticationmethods": "publickey,keyboard-interactive", "usedns": "yes"}
    flagged = {finding.id for finding in doctor.judge_sshd(settings, "sshd_config", trusting=True)}
    assert "sshd.usedns" in flagged
    assert "sshd.usedns" not in {finding.id for finding in doctor.judge_sshd(settings, "sshd_config")}
    settings["usedns"] = "no"
    assert "sshd.usedns" not in {finding.id for finding in doctor.judge_sshd(settings, "sshd_config", trusting=True)}


# -- enroll_at_login: only where a first factor precedes pam_totpd ---------------------

ENROLL_STACKS = {  # sudo's auth stack -> flagged?
    "password_then_code": ("@include common-auth\nauth required pam_totpd.so\n", False),
    "requisite_password_then_code": ("auth requisite pam_unix.so\nauth required pam_totpd.so\n", False),
    "required_password_then_code": ("auth required pam_unix.so\nauth required pam_totpd.so\n", True),
    "code_alone": ("auth required pam_totpd.so\n", True),
    "code_first": ("auth requisite pam_totpd.so\n@include common-auth\n", True),
}


@pytest.mark.parametrize("name", sorted(ENROLL_STACKS))
def test_enroll_at_login_is_flagged_where_pam_totpd_runs_without_a_first_factor(tmp_path: Path, name: str) -> None:
    text, flagged = ENROLL_STACKS[name]
    root = make_root(tmp_path, text)
    conf = tmp_path / "totpd.conf"

    def ids(config: str) -> list[str]:
        conf.write_text(config)
        options = doctor.Options(config_path=str(conf), config_explicit=True, root=str(root), services=("sudo",),
                                 checks=("config", "pam"))
        return [finding.id for finding in doctor.run(options)]

    assert ("pam.sudo.enroll_without_first_factor" in ids("enroll_at_login = true\n")) == flagged
    assert "pam.sudo.enroll_without_first_factor" not in ids("")
    assert "pam.sudo.enroll_without_first_factor" not in ids("enroll_at_login = true\n[services.sudo]\nenroll_at_login = false\n")


def test_enroll_at_login_needs_sshd_to_check_a_first_factor_when_its_stack_does_not() -> None:
    settings = {"usepam": "yes", "kbdinteractiveauthentication": "yes", "authenticationmethods": "publickey,keyboard-interactive"}

    def flagged(methods: str, enrolling: bool = True) -> bool:
        found = doctor.judge_sshd({**settings, "authenticationmethods": methods}, "sshd_config", enrolling=enrolling)
        return "sshd.enroll_without_first_factor" in {finding.id for finding in found}

    assert not flagged("publickey,keyboard-interactive")
    assert not flagged("password,keyboard-interactive publickey,keyboard-interactive:pam")
    assert flagged("keyboard-interactive")
    assert flagged("publickey,keyboard-interactive keyboard-interactive")
    assert flagged("any")
    assert not flagged("keyboard-interactive", enrolling=False)


def test_enroll_at_login_with_a_keyboard_interactive_only_sshd_is_an_error_in_namespace(workdir: Path) -> None:
    pam_dir = _pam_copy(workdir, {"sshd": f"auth required {MODULE}\naccount required pam_permit.so\n"})
    (workdir / "totpd.conf").write_text("enroll_at_login = true\n")
    for methods, flagged in (("keyboard-interactive", True), ("publickey,keyboard-interactive", False)):
        config = _sshd_config(workdir, f"AuthenticationMethods {methods}\n")
        report = _result(doctor_in_namespace(pam_dir, "--config", str(workdir / "totpd.conf"), "--sshd-config", str(config),
                                             "--service", "sshd"))
        assert ("sshd.enroll_without_first_factor" in _by_severity(report, "error")) == flagged, report


# -- sudo_grace: where the session binding cannot hold ---------------------------------

SHIPPED_UNIT = Path(__file__).resolve().parent.parent / "packaging" / "systemd" / "totpd.service"
GRACE_DROPIN = SHIPPED_UNIT.with_name("totpd-grace.conf")


def grace_ids(tmp_path: Path, config: str, sshd: str, dropin: bool = False) -> set[str]:
    root = make_root(tmp_path, None)
    (root / "etc" / "pam.d" / "sshd").write_text(sshd)
    units = root / "usr" / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "totpd.service").write_text(SHIPPED_UNIT.read_text())
    if dropin:
        (root / "etc" / "systemd" / "system" / "totpd.service.d").mkdir(parents=True)
        (root / "etc" / "systemd" / "system" / "totpd.service.d" / "grace.conf").write_text(GRACE_DROPIN.read_text())
    (tmp_path / "totpd.conf").write_text(config)
    options = doctor.Options(config_path=str(tmp_path / "totpd.conf"), root=str(root), checks=("grace",))
    return {finding.id for finding in doctor.run(options) if finding.severity == "warn" or finding.id == "grace.ok"}


LOGIN_SSHD = "auth required pam_totpd.so\nsession required pam_loginuid.so\nsession required pam_unix.so\n"


def test_doctor_is_silent_about_sudo_grace_while_it_is_off(tmp_path: Path) -> None:
    assert grace_ids(tmp_path, "", "auth required pam_totpd.so\n") == set()


def test_doctor_warns_that_the_shipped_unit_hides_sudo_from_the_daemon_until_the_grace_drop_in(tmp_path: Path) -> None:
    assert grace_ids(tmp_path, "[services.sudo]\nsudo_grace = 300\n", LOGIN_SSHD) == {"grace.protect_proc"}


def test_doctor_finds_sudo_grace_can_hold_with_the_drop_in_and_pam_loginuid(tmp_path: Path) -> None:
    assert grace_ids(tmp_path, "sudo_grace = 300\n", LOGIN_SSHD, dropin=True) == {"grace.ok"}


def test_doctor_warns_when_sshd_opens_no_audit_session(tmp_path: Path) -> None:
    sshd = "auth required pam_totpd.so\nsession required pam_unix.so\n"
    assert grace_ids(tmp_path, "sudo_grace = 300\n", sshd, dropin=True) == {"grace.sshd.no_loginuid"}
