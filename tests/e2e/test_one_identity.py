"""One identity: every spelling that NSS resolves to an account needs that account's code.

Directory services resolve several spellings to one account (SSSD/LDAP with
case_sensitive = false, `alice@EXAMPLE`, winbind's `EXAMPLE\\alice`), and sshd
passes the name as the client typed it. Here tests/nss/nss_totpdfold.c plays that
service inside the namespace (`passwd` and `shadow`: files, then totpdfold), so
`TVICTIM`, `Tvictim` and `tvictim@EXAMPLE` are all the account `tvictim`,
enrolled with a known secret, under `check_accounts = true` and a policy that
names tvictim. Logins go through real libpam (tests/helpers/pamdriver.py, run inside
the namespace) and through a real sshd; codes come from oathtool.
"""

from __future__ import annotations

import errno
import json
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from daemonproc import wrong_code

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "helpers"))
import pamdriver  # noqa: E402

NSS_SOURCE = REPO / "tests" / "nss" / "nss_totpdfold.c"
NSS_LIBRARY = "libnss_totpdfold.so.2"
NSSWITCH = "passwd: files totpdfold\ngroup: files\nshadow: files totpdfold\n"

VICTIM, VICTIM_UID = "tvictim", 2917
SPELLINGS = ["TVICTIM", "Tvictim", "tvictim@EXAMPLE"]
PROMPT = "Verification code: "
PASSWORD = "correct horse battery staple"
PAM_SERVICE = "totpd-fold"

# The policy names the canonical account; each spelling must get what it gets.
POLICIES = {
    "allow": 'required_users = ["tvictim"]\nunenrolled = "allow"\n',
    "deny": 'required_users = ["tvictim"]\nunenrolled = "deny"\n',
}
# The 4th wrong code in a row locks the account, with no backoff before it.
THROTTLE = "check_accounts = true\nmax_failures = 4\nbackoff_after = 4\n"


@pytest.fixture(scope="session")
def nss_libdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only the built libnss_totpdfold.so.2."""
    if shutil.which("cc") is None:
        pytest.fail("building tests/nss/nss_totpdfold.c needs a C compiler: apt-get install build-essential")
    libdir = tmp_path_factory.mktemp("nss")
    done = subprocess.run(["cc", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
                           f"-Wl,-soname,{NSS_LIBRARY}", "-o", str(libdir / NSS_LIBRARY), str(NSS_SOURCE)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cc {NSS_SOURCE} failed ({done.returncode}):\n{done.stderr}")
    return libdir


def nss(libdir: Path) -> dict[str, str]:
    """nsrun.py's `nss` setting: our nsswitch.conf, and where the module is."""
    return {"nsswitch": NSSWITCH, "libdir": str(libdir)}


def oathtool_code(secret: str) -> str:
    """The code an authenticator shows now, from an implementation other than the daemon's."""
    if shutil.which("oathtool") is None:
        pytest.fail("these tests compute codes with oathtool: apt-get install oathtool")
    return subprocess.run(["oathtool", "--totp", "-b", secret], capture_output=True, text=True,
                          check=True).stdout.strip()


def pam_logins(totp, attempts: list[tuple[str, str]]) -> list[pamdriver.Result]:
    """One pam_authenticate per (user, code), in order, by pamdriver inside the namespace;
    the stack is pam_totpd, then pam_permit for a first factor the person already passed."""
    confdir = str(totp.host.workdir / "pam-confdir")
    pamdriver.write_confdir(confdir, PAM_SERVICE, [
        f"auth required {REPO / 'pam' / 'pam_totpd.so'} socket={totp.socket}",
        "auth required pam_permit.so",
    ])
    requests = [{"service": PAM_SERVICE, "user": user, "confdir": confdir, "answer": code}
                for user, code in attempts]
    done = totp.host.run([sys.executable, str(Path(pamdriver.__file__).resolve())], input=json.dumps(requests))
    assert done.returncode == 0, f"pamdriver failed ({done.returncode}): {done.stderr}"
    return [pamdriver.Result(out["retcode"], [tuple(m) for m in out["messages"]])
            for out in json.loads(done.stdout.splitlines()[-1])]


def totpctl(totp, *args: str, input: str = ""):
    """totpctl as root inside the namespace (requests other than a login's check and verify)."""
    return totp.host.run([sys.executable, "-m", "totpd.cli", "--socket", totp.socket, *args], input=input)


def audit_lines(totp, event: str, count: int) -> list[dict[str, str]]:
    """The daemon's first `count` audit lines for `event`, as field dicts (waiting up
    to 5 s: the daemon may write a turn's lines just after its replies)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [shlex.split(line.split(" audit ", 1)[1]) for line in totp.host.log("totpd").splitlines()
                 if " audit " in line]
        found = [fields for fields in (dict(item.split("=", 1) for item in line) for line in lines)
                 if fields.get("event") == event]
        if len(found) >= count or time.monotonic() > deadline:
            return found[:count]
        time.sleep(0.02)


@pytest.fixture(params=sorted(POLICIES))
def victim(request: pytest.FixtureRequest, make_totp, nss_libdir: Path):
    """tvictim enrolled, the daemon and sshd (pam_totpd after the key) in a namespace
    where every spelling of SPELLINGS is tvictim."""
    return make_totp(config=POLICIES[request.param] + THROTTLE, user=VICTIM, uid=VICTIM_UID,
                     nss=nss(nss_libdir))


# -- the harness: the module folds, inside the namespace only ------------------------

# The module's getpwnam_r called directly, with a buffer too small and one large enough.
ERANGE_PROBE = """
import ctypes, sys
module = ctypes.CDLL(sys.argv[1], use_errno=True)
class Passwd(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("passwd", ctypes.c_char_p), ("uid", ctypes.c_uint),
                ("gid", ctypes.c_uint), ("gecos", ctypes.c_char_p), ("dir", ctypes.c_char_p),
                ("shell", ctypes.c_char_p)]
for label, size in (("small", 8), ("large", 4096)):
    entry, buf, errnop = Passwd(), ctypes.create_string_buffer(size), ctypes.c_int(0)
    status = module._nss_totpdfold_getpwnam_r(b"TVICTIM", ctypes.byref(entry), buf, size, ctypes.byref(errnop))
    print(label, status, errnop.value if status != 1 else entry.name.decode())
"""


def test_nss_module_resolves_every_spelling_to_the_account_inside_the_namespace_only(
        make_login_host, nss_libdir):
    host = make_login_host(auth="auth required pam_deny.so\n", user=VICTIM, uid=VICTIM_UID,
                           nss=nss(nss_libdir))
    for spelling in [*SPELLINGS, "EXAMPLE\\tvictim", VICTIM]:
        inside = host.run(["getent", "passwd", spelling])
        assert inside.stdout.startswith(f"{VICTIM}:x:{VICTIM_UID}:"), (spelling, inside)
        shadow = host.run(["getent", "shadow", spelling])
        assert shadow.stdout.startswith(f"{VICTIM}:"), (spelling, shadow)
    assert host.run(["getent", "passwd", "tvictim2"]).returncode == 2
    # A buffer too small says ERANGE (glibc then retries with a bigger one).
    probe = host.run([sys.executable, "-c", ERANGE_PROBE, str(nss_libdir / NSS_LIBRARY)])
    assert probe.stdout.split() == ["small", "-2", str(errno.ERANGE), "large", "1", VICTIM], probe
    # Outside, nothing changed.
    with pytest.raises(KeyError):
        pwd.getpwnam("TVICTIM")
    assert "totpdfold" not in Path("/etc/nsswitch.conf").read_text()
    host_cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    assert NSS_LIBRARY not in host_cache


# -- through real libpam --------------------------------------------------------------

def test_wrong_code_is_refused_for_every_spelling_of_an_enrolled_account(victim):
    wrong = victim.wrong_code()
    results = pam_logins(victim, [(spelling, wrong) for spelling in SPELLINGS])
    assert [(r.name, r.prompts) for r in results] == [("PAM_AUTH_ERR", [PROMPT])] * len(SPELLINGS)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_right_code_of_the_account_is_accepted_for_another_spelling(victim, spelling):
    [result] = pam_logins(victim, [(spelling, oathtool_code(victim.secret))])
    assert (result.name, result.prompts) == ("PAM_SUCCESS", [PROMPT])


def test_code_accepted_for_the_account_is_refused_as_replayed_for_another_spelling(victim):
    code = oathtool_code(victim.secret)
    first, replay = pam_logins(victim, [(VICTIM, code), ("TVICTIM", code)])
    assert first.name == "PAM_SUCCESS"
    assert replay.name == "PAM_AUTH_ERR"
    assert replay.errors and "already used" in replay.errors[0]


def test_wrong_codes_under_other_spellings_count_against_the_accounts_throttle(victim):
    wrong = victim.wrong_code()
    results = pam_logins(victim, [*((spelling, wrong) for spelling in SPELLINGS), ("TVICTIM", wrong),
                                  (VICTIM, oathtool_code(victim.secret))])
    assert [r.name for r in results] == ["PAM_AUTH_ERR"] * 3 + ["PAM_MAXTRIES"] * 2
    assert results[-1].errors and "totpctl unlock tvictim" in results[-1].errors[0]


def test_admin_tools_act_on_the_account_under_another_spelling(victim):
    wrong = victim.wrong_code()
    assert [r.name for r in pam_logins(victim, [(VICTIM, wrong)] * 4)][-1] == "PAM_MAXTRIES"
    status = totpctl(victim, "status", "TVICTIM", "--json")
    assert status.returncode == 0, status
    fields = json.loads(status.stdout)
    assert (fields["enrolled"], fields["locked"]) == (1, 1)
    unlocked = totpctl(victim, "unlock", "Tvictim")
    assert unlocked.returncode == 0, unlocked
    [result] = pam_logins(victim, [(VICTIM, oathtool_code(victim.secret))])
    assert result.name == "PAM_SUCCESS"


def test_enrolling_another_spelling_enrolls_the_account(victim):
    assert totpctl(victim, "reset", VICTIM).returncode == 0
    secret = pyotp.random_base32()
    enrolled = totpctl(victim, "enroll", "Tvictim", "--no-confirm", "--json", "--secret-file", "-",
                       input=secret + "\n")
    assert enrolled.returncode == 0, enrolled
    wrong, right = pam_logins(victim, [(VICTIM, wrong_code(secret)), (VICTIM, oathtool_code(secret))])
    assert (wrong.name, right.name) == ("PAM_AUTH_ERR", "PAM_SUCCESS")


def test_audit_line_names_the_account_and_the_spelling_given(victim):
    wrong = victim.wrong_code()
    pam_logins(victim, [("TVICTIM", wrong), (VICTIM, wrong)])
    verify = audit_lines(victim, "verify", 2)
    trail = [line for line in victim.host.log("totpd").splitlines() if " audit " in line]
    assert [(line.get("user"), line.get("given"), line.get("result")) for line in verify] == [
        (VICTIM, "TVICTIM", "rejected"), (VICTIM, None, "rejected")], trail
    assert not [line for line in trail if "user=TVICTIM" in line]


# -- through a real sshd --------------------------------------------------------------

def test_ssh_login_as_another_spelling_asks_for_the_accounts_code(victim):
    wrong = victim.host.ssh([victim.wrong_code()], user="TVICTIM")
    assert (wrong.authenticated, wrong.prompts) == (False, [PROMPT]), wrong
    right = victim.host.ssh([oathtool_code(victim.secret)], user="TVICTIM")
    assert (right.authenticated, right.prompts, right.output) == (True, [PROMPT], f"{VICTIM}\n"), right


def test_ssh_login_as_another_spelling_with_password_and_wrong_code_is_refused(make_totp, nss_libdir):
    """sshd with a password stack before pam_totpd (as pam-auth-update's profile adds it):
    the password alone must not do for another spelling."""
    if shutil.which("openssl") is None:
        pytest.fail("this test hashes the password with openssl: apt-get install openssl")
    hashed = subprocess.run(["openssl", "passwd", "-6", "-salt", "totpfold", PASSWORD],
                            capture_output=True, text=True, check=True).stdout.strip()
    totp = make_totp(config=POLICIES["allow"] + THROTTLE, auth_before="auth required pam_unix.so nodelay\n",
                     user=VICTIM, uid=VICTIM_UID, password_hash=hashed, nss=nss(nss_libdir))
    wrong = totp.host.ssh([PASSWORD, totp.wrong_code()], user="TVICTIM")
    assert (wrong.authenticated, wrong.prompts) == (False, ["Password: ", PROMPT]), wrong
    right = totp.host.ssh([PASSWORD, oathtool_code(totp.secret)], user="TVICTIM")
    assert (right.authenticated, right.output) == (True, f"{VICTIM}\n"), right


def test_another_name_for_the_accounts_uid_needs_the_accounts_code(make_totp, nss_libdir):
    # One uid is one account to the kernel: a second passwd name for it (toor beside
    # root, a local entry that duplicates a directory's uid) shares its second factor.
    totp = make_totp(config=POLICIES["allow"] + THROTTLE, user=VICTIM, uid=VICTIM_UID, nss=nss(nss_libdir),
                     extra_users=({"name": "talias", "uid": VICTIM_UID},))
    wrong, right = pam_logins(totp, [("talias", totp.wrong_code()), ("talias", oathtool_code(totp.secret))])
    assert (wrong.name, wrong.prompts) == ("PAM_AUTH_ERR", [PROMPT])
    assert (right.name, right.prompts) == ("PAM_SUCCESS", [PROMPT])
    assert audit_lines(totp, "verify", 2)[0]["user"] == VICTIM


def test_a_policy_list_naming_the_account_in_another_spelling_still_means_the_account(make_totp, nss_libdir):
    # required_users = ["Tvictim"] must require tvictim: an unenrolled tvictim is then
    # denied, where a list compared as written would not require it and let it in.
    config = 'required_users = ["Tvictim"]\nunenrolled = "deny"\n' + THROTTLE
    totp = make_totp(config=config, user=VICTIM, uid=VICTIM_UID, nss=nss(nss_libdir))
    assert totpctl(totp, "reset", VICTIM).returncode == 0
    (result,) = pam_logins(totp, [(VICTIM, "000000")])
    assert result.name == "PAM_AUTH_ERR"
    assert audit_lines(totp, "check", 1)[0]["result"] == "not_enrolled_denied"


def test_doctor_names_an_enrollment_stored_under_another_spelling(make_totp, nss_libdir):
    # An earlier release (or check_accounts = false) stored the name as typed; once
    # names are resolved, logins as tvictim no longer find that enrollment.
    totp = make_totp(config="check_accounts = false\n", user=VICTIM, uid=VICTIM_UID, nss=nss(nss_libdir))
    assert totpctl(totp, "reset", VICTIM).returncode == 0
    assert totpctl(totp, "enroll", "TVICTIM", "--no-confirm").returncode == 0
    totp.stop_daemon()
    totp.config.write_text(totp.config.read_text().replace("check_accounts = false", "check_accounts = true"))
    totp.start_daemon()
    done = totpctl(totp, "doctor", "--json", "--config", str(totp.config), "--service", "sshd")
    findings = {finding["id"]: finding for finding in json.loads(done.stdout)["findings"]}
    assert done.returncode == 1
    assert "account TVICTIM is enrolled under a name NSS resolves to tvictim" in findings["accounts.not_canonical"]["message"]
    assert findings["accounts.not_canonical"]["fix"] == "totpctl reset TVICTIM, then totpctl enroll tvictim"
