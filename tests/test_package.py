"""The Debian package, end to end on this machine: build, install, run, log in, remove, purge.

`make deb` builds dist/totpd_VERSION_ARCH.deb from packaging/debian (into a temp
dir here); apt installs it onto THIS machine (the tests run as root). The
installed daemon then runs from the installed files the way totpd.service runs it
(as user totpd, umask 0077, the installed /etc/totpd/totpd.conf, state in
/var/lib/totpd) but binds its own socket in a temp dir: no systemd is needed.
The installed /usr/bin/totpctl enrolls an account, and real libpam
(pam_start_confdir) loads the installed pam_totpd.so by its installed path.
Then `apt-get remove` must leave only the configuration and the state, and
`apt-get purge` nothing at all; /etc/pam.d/common-* never change.

The package must also pass lintian (no error, no warning), and install, work and
purge on a clean Debian 13 root that mmdebstrap makes from Debian's own packages:
tests/pkgsmoke.sh runs inside it, where apt pulls the python3-* dependencies from
Debian 13's archive. The base root (apt, pamtester, the dependencies downloaded but
not installed) is cached as a tarball under /var/cache/totpd-tests, keyed on what
goes into it, and rebuilt after a week or when missing; no step is ever skipped.

A finalizer stops the daemon and purges the package even when a step fails. The
test refuses to run (fails) on a machine that already has totpd installed or a
/etc/totpd or /var/lib/totpd: purging would destroy someone's enrollments.
Tools it needs (dpkg-buildpackage, debhelper, dh-python, scdoc, lintian,
mmdebstrap, apt) come from the Makefile's TEST_APT_PACKAGES; if one is missing the test
fails, as it does when the Debian archive cannot be reached.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyotp
import pytest

import pamdriver  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCAN_ROOTS = ("/usr", "/etc", "/var/lib", "/run")
KEPT_ON_REMOVE = {"/etc/totpd", "/etc/totpd/totpd.conf", "/var/lib/totpd"}
# Kept on remove, dropped on purge, the Debian way: deb-systemd-helper's record of
# the socket's enablement (a reinstall keeps the admin's choice) and dpkg's own file
# list and postrm of a package in state config-files.
BOOKKEEPING = re.compile(r"^/(etc/systemd/system/sockets\.target\.wants/totpd\.socket"
                         r"|var/lib/systemd/deb-systemd-helper-enabled/.*totpd.*"
                         r"|var/lib/dpkg/info/totpd\.(list|postrm))$")
PAM_FILES = sorted(Path("/etc/pam.d").glob("common-*"))
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
ACCOUNT = "nobody"  # exists everywhere; enrolled only in the package's own store

# The clean root: Debian 13 as mmdebstrap makes it (variant apt) plus pamtester, and
# adduser and tzdata, which every installed Debian has and apt never autoremoves
# (priority important and required); the package's other dependencies wait in apt's
# cache, downloaded but not installed, so installing them downloads nothing.
CLEAN_SUITE = "trixie"
CLEAN_INCLUDE = ("pamtester", "adduser", "tzdata")
CLEAN_PREFETCH = ("python3", "python3-pyotp", "python3-segno", "python3-argon2", "python3-cryptography",
                  "python3-dbus-fast", "libpam-runtime")
CLEAN_CACHE = Path("/var/cache/totpd-tests")
CLEAN_CACHE_MAX_AGE = 7 * 86400


def _run(*argv: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _totpd_paths() -> set[str]:
    """Every path under SCAN_ROOTS whose name mentions totpd, and everything below them."""
    found = subprocess.run(["find", *SCAN_ROOTS, "-xdev", "-iname", "*totpd*"],
                           capture_output=True, text=True, timeout=120).stdout.split()
    paths = set(found)
    for path in found:
        if os.path.isdir(path) and not os.path.islink(path):
            for root, dirs, files in os.walk(path):
                paths.update(os.path.join(root, name) for name in dirs + files)
    return paths


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _status() -> str:
    """dpkg's status of totpd: "" when dpkg has no record (never installed, or purged)."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "totpd"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and "not-installed" not in out.stdout else ""


def _installed() -> bool:
    return _status().endswith(" installed")


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="totpd-pkg-"))
    path.chmod(0o755)  # the daemon (user totpd) binds its socket below it
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


@pytest.fixture(scope="module")
def deb(workdir: Path) -> Path:
    started = time.monotonic()
    _run("make", "-C", str(REPO), "deb", f"DEB_STAGE={workdir}/stage", f"DEB_DIST={workdir}/dist", timeout=600)
    arch = _run("dpkg", "--print-architecture").stdout.strip()
    debs = sorted((workdir / "dist").glob(f"totpd_*_{arch}.deb"))
    assert len(debs) == 1, f"expected one totpd .deb in {workdir}/dist, found {debs}"
    print(f"make deb: {time.monotonic() - started:.1f} s, {debs[0].stat().st_size // 1024} KiB")
    return debs[0]


@pytest.fixture(scope="module")
def before(deb: Path):
    """The machine as it was: refuse to touch an existing totpd, then snapshot."""
    assert os.geteuid() == 0, "the package test installs onto this machine: run as root"
    assert not _installed(), "totpd is already installed here: the test would purge it"
    for path in ("/etc/totpd", "/var/lib/totpd"):
        assert not os.path.lexists(path), f"{path} exists: the test's purge would destroy it"
    user_existed = _user_exists()
    snapshot = {"paths": _totpd_paths(), "pam": _digest(PAM_FILES), "user_existed": user_existed}
    yield snapshot
    # Finalizer, also after a failure: no package, no state, no test user left.
    if _status():
        subprocess.run(["dpkg", "--purge", "totpd"], capture_output=True, env=APT_ENV, timeout=300)
    if not user_existed and _user_exists():
        subprocess.run(["userdel", "totpd"], capture_output=True, timeout=60)


def _user_exists() -> bool:
    try:
        pwd.getpwnam("totpd")
        return True
    except KeyError:
        return False


def _start_daemon(config: Path, log: Path) -> subprocess.Popen:
    """totpd.service's ExecStart, User=, Group=, UMask= — without systemd."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["setpriv", "--reuid", "totpd", "--regid", "totpd", "--clear-groups",
             "/usr/bin/totpd", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd="/", preexec_fn=lambda: os.umask(0o077),
        )


def _ctl(socket: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["/usr/bin/totpctl", "--socket", str(socket), *args],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    if check:
        assert result.returncode == 0, f"totpctl {args[0]} exited {result.returncode}: {result.stderr}"
    return result


def test_package_installs_runs_authenticates_and_removes_cleanly(deb: Path, before: dict, workdir: Path):
    pam_before = before["pam"]

    # -- install ----------------------------------------------------------------------
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", str(deb), env=APT_ENV)
    assert _installed()
    files = [line for line in _run("dpkg", "-L", "totpd").stdout.splitlines() if line.strip()]
    module = next(path for path in files if path.endswith("/security/pam_totpd.so"))
    for path in ("/usr/bin/totpd", "/usr/bin/totpctl", "/usr/share/pam-configs/totpd",
                 "/usr/share/man/man8/totpd.8.gz", "/usr/share/man/man8/totpctl.8.gz",
                 "/usr/share/man/man8/pam_totpd.8.gz", "/usr/share/man/man5/totpd.conf.5.gz",
                 "/usr/share/dbus-1/system.d/org.totpd.Totpd1.conf",
                 "/usr/share/polkit-1/actions/org.totpd.policy",
                 "/usr/share/doc/totpd/examples/pam.d/sshd", "/usr/share/doc/totpd/operations.md"):
        assert os.path.exists(path), f"{path} is not installed"
    assert any(p.endswith("systemd/system/totpd.socket") for p in files)
    assert any(p.endswith("sysusers.d/totpd.conf") for p in files)

    # The package's system side: user, state dir, config permissions, socket enabled.
    user = pwd.getpwnam("totpd")
    assert user.pw_shell == "/usr/sbin/nologin" and user.pw_dir == "/var/lib/totpd"
    state = os.stat("/var/lib/totpd")
    assert (stat.S_IMODE(state.st_mode), state.st_uid, state.st_gid) == (0o700, user.pw_uid, user.pw_gid)
    conf = os.stat("/etc/totpd/totpd.conf")
    assert (stat.S_IMODE(conf.st_mode), conf.st_uid, conf.st_gid) == (0o640, 0, grp.getgrnam("totpd").gr_gid)
    assert os.path.islink("/etc/systemd/system/sockets.target.wants/totpd.socket"), "totpd.socket not enabled"
    assert not os.path.lexists("/etc/systemd/system/multi-user.target.wants/totpd.service")
    # Default: no — installing enables nothing in the PAM stacks.
    assert _digest(PAM_FILES) == pam_before, "installing changed /etc/pam.d/common-*"
    for page in ("totpd", "totpctl", "pam_totpd"):
        shown = subprocess.run(["man", "--warnings", "-P", "cat", "8", page], capture_output=True, text=True,
                               env={**os.environ, "MANWIDTH": "80"}, timeout=60)
        assert shown.returncode == 0 and page in shown.stdout and not shown.stderr, f"man 8 {page}: {shown.stderr}"

    # -- run the installed daemon as the unit would --------------------------------------
    rundir = workdir / "run"
    rundir.mkdir()
    os.chown(rundir, user.pw_uid, user.pw_gid)
    socket_path = rundir / "totpd.sock"
    installed = Path("/etc/totpd/totpd.conf").read_text()
    config, count = re.subn(r'(?m)^socket = ".*"$', f'socket = "{socket_path}"', installed)
    assert count == 1, "the installed config has no socket line to point at the test's socket"
    config_path = workdir / "totpd.conf"
    config_path.write_text(config)
    config_path.chmod(0o644)
    daemon = _start_daemon(config_path, workdir / "daemon.log")
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert daemon.poll() is None, f"installed totpd exited: {(workdir / 'daemon.log').read_text()}"
            assert time.monotonic() < deadline, "installed totpd did not bind its socket in 30 s"
            time.sleep(0.1)
        assert os.stat(socket_path).st_uid == user.pw_uid
        for path in ("/var/lib/totpd/totpd.db", "/var/lib/totpd/master.key"):
            info = os.stat(path)
            assert info.st_uid == user.pw_uid and stat.S_IMODE(info.st_mode) & 0o077 == 0, path

        # -- enroll with the installed totpctl, log in through the installed module -------
        enrolled = json.loads(_ctl(socket_path, "enroll", ACCOUNT, "--no-confirm", "--json").stdout)
        totp = pyotp.TOTP(enrolled["secret"])
        confdir = str(workdir / "pam.d")
        pamdriver.write_confdir(confdir, "totpd-pkgtest", f"auth required {module} socket={socket_path}")
        wrong = f"{(int(totp.now()) + 500000) % 1000000:06d}"
        refused = pamdriver.run_isolated("totpd-pkgtest", ACCOUNT, confdir, wrong)
        assert refused.retcode == pamdriver.PAM_AUTH_ERR, refused.stderr
        code = totp.now()
        accepted = pamdriver.run_isolated("totpd-pkgtest", ACCOUNT, confdir, code)
        assert accepted.retcode == pamdriver.PAM_SUCCESS, (accepted.messages, accepted.stderr)
        replayed = pamdriver.run_isolated("totpd-pkgtest", ACCOUNT, confdir, code)
        assert replayed.retcode == pamdriver.PAM_AUTH_ERR, "a replayed code was accepted"
        listed = _ctl(socket_path, "list").stdout
        assert ACCOUNT in listed
        log = (workdir / "daemon.log").read_text()
        assert code not in log and enrolled["secret"] not in log, "the daemon logged a code or the secret"
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, (workdir / "daemon.log").read_text()

    # -- remove: configuration and state stay ------------------------------------------
    _run("apt-get", "remove", "-y", "-q", "totpd", env=APT_ENV)
    assert not _installed()
    left = _totpd_paths() - before["paths"]
    stray = {p for p in left if p not in KEPT_ON_REMOVE and not p.startswith("/var/lib/totpd/")
             and not BOOKKEEPING.match(p)}
    assert not stray, f"remove left files behind: {sorted(stray)}"
    assert {"/etc/totpd/totpd.conf", "/var/lib/totpd/totpd.db", "/var/lib/totpd/master.key"} <= left
    for path in files:
        if path.startswith("/etc/totpd"):
            continue
        assert not os.path.isfile(path) or path.startswith("/etc/"), f"{path} survived remove"
    assert _digest(PAM_FILES) == pam_before, "removing changed /etc/pam.d/common-*"

    # -- purge: nothing of totpd is left (the user stays, as documented) -------------------
    _run("apt-get", "purge", "-y", "-q", "totpd", env=APT_ENV)
    assert _status() == "", f"dpkg still knows totpd after purge: {_status()}"
    left = _totpd_paths() - before["paths"]
    assert not left, f"purge left files behind: {sorted(left)}"
    assert _digest(PAM_FILES) == pam_before, "purging changed /etc/pam.d/common-*"
    assert _user_exists(), "purge removed the user totpd (docs/operations.md says it stays)"


def test_pam_profile_enabled_by_the_admin_is_removed_with_the_package(deb: Path, before: dict):
    """`pam-auth-update --enable totpd` puts the module into common-auth; removing
    the package must take it out again, leaving the stacks as they were."""
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", str(deb), env=APT_ENV)
    try:
        _run("pam-auth-update", "--package", "--enable", "totpd")
        assert "pam_totpd.so" in Path("/etc/pam.d/common-auth").read_text()
    finally:
        _run("apt-get", "purge", "-y", "-q", "totpd", env=APT_ENV)
    assert "pam_totpd.so" not in Path("/etc/pam.d/common-auth").read_text()
    assert _digest(PAM_FILES) == before["pam"], "install + enable + purge changed /etc/pam.d/common-*"
    assert not (_totpd_paths() - before["paths"])


def test_package_passes_lintian(deb: Path):
    result = subprocess.run(["lintian", "--fail-on", "error,warning", "--pedantic", str(deb)],
                            capture_output=True, text=True, timeout=300)
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:", "P:")]
    assert result.returncode == 0 and not tags, f"lintian {deb.name}:\n" + "\n".join(tags or [result.stderr])


def _debian_mirror() -> str:
    """The Debian archive this machine's apt installs from, as `apt-cache policy` lists it."""
    lines = _run("apt-cache", "policy").stdout.splitlines()
    for source, release in zip(lines, lines[1:]):
        if "o=Debian," in release and "l=Debian," in release:
            return source.split()[1]
    raise AssertionError("apt-cache policy lists no Debian archive (l=Debian) to build the clean root from")


def _clean_base(mirror: str) -> Path:
    """The cached tarball of the clean root: made with mmdebstrap when missing or stale."""
    version = _run("mmdebstrap", "--version").stdout.strip()
    key = hashlib.sha256(json.dumps([CLEAN_SUITE, mirror, CLEAN_INCLUDE, CLEAN_PREFETCH, version]).encode()).hexdigest()
    CLEAN_CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CLEAN_CACHE / f"{CLEAN_SUITE}-{key[:16]}.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime < CLEAN_CACHE_MAX_AGE:
        return tarball
    started = time.monotonic()
    partial = CLEAN_CACHE / f"{tarball.name}.{os.getpid()}.partial"
    # mmdebstrap mounts /proc, /sys and device nodes in its temporary root and cleans
    # up after itself; in a private mount namespace, none outlives it even if killed.
    try:
        _run("unshare", "--mount", "--propagation", "private", "--fork", "--kill-child",
             "mmdebstrap", "--quiet", "--variant=apt", "--format=tar", f"--include={','.join(CLEAN_INCLUDE)}",
             "--skip=cleanup/apt/lists,cleanup/apt/cache",
             f"--customize-hook=chroot \"$1\" apt-get install --download-only -y -q {' '.join(CLEAN_PREFETCH)}",
             CLEAN_SUITE, str(partial), mirror, timeout=900, env={**APT_ENV, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    for old in CLEAN_CACHE.glob(f"{CLEAN_SUITE}-*.tar"):
        old.unlink()
    partial.replace(tarball)
    print(f"mmdebstrap {CLEAN_SUITE}: {time.monotonic() - started:.1f} s, {tarball.stat().st_size >> 20} MiB")
    return tarball


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(prefix)]


def test_package_installs_logs_in_and_purges_on_a_clean_debian_13(deb: Path):
    started = time.monotonic()
    base = _clean_base(_debian_mirror())
    work = Path(tempfile.mkdtemp(prefix="totpd-cleanroot-", dir="/var/tmp"))
    root = work / "root"
    try:
        root.mkdir()
        _run("tar", "-C", str(root), "-xf", str(base))
        shutil.copy(deb, root / "tmp" / deb.name)
        shutil.copy(REPO / "tests" / "pkgsmoke.sh", root / "tmp" / "pkgsmoke.sh")
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")  # if apt must fetch a dependency after all
        ready = time.monotonic()
        # /proc exists only in the private namespaces, which end with the script: nothing
        # stays mounted below the work dir, and nothing of the host's /dev is ever in it.
        smoke = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
             f"--mount-proc={root / 'proc'}", "chroot", str(root), "/bin/sh", "/tmp/pkgsmoke.sh", f"/tmp/{deb.name}"],
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"})
        print(smoke.stdout)
        assert smoke.returncode == 0, f"pkgsmoke.sh in {CLEAN_SUITE} exited {smoke.returncode}:\n{smoke.stdout[-4000:]}\n{smoke.stderr[-4000:]}"
        print(f"clean {CLEAN_SUITE} root: {ready - started:.1f} s to prepare, {time.monotonic() - ready:.1f} s inside")
    finally:
        mounted = _mounts_below(work)
        assert not mounted, f"still mounted below {work}: {mounted} (left in place, not deleted)"
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
