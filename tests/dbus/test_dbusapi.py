"""org.totpd.Totpd1 on a private system bus: the real daemon, real clients, mock polkit.

Every call here crosses a real dbus-daemon (whose policy includes the shipped
packaging/dbus/org.totpd.Totpd1.conf) into a real totpd process; polkit's answers
come from python-dbusmock's polkitd template on the same bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import re
import subprocess
import threading
import time
from pathlib import Path

import pyotp
from dbus_fast import Message, MessageType, Variant
from dbus_fast.introspection import Node

import wire
from privatebus import (
    BUS_NAME, DAEMON_UID, IFACE, NOBODY, PATH, POLKIT_IFACE, REPO, gdbus_as, gdbus_error,
)
from totpd import dbusapi
from totpd.admission import Admission
from totpd.audit import Audit
from totpd.config import Config
from totpd.sealing import Sealer, key_check, load_key
from totpd.service import Service
from totpd.store import open_store
from pamdriver import PAM_SUCCESS
from pamconf import Stack

PERMISSION_DENIED = IFACE + ".Error.PermissionDenied"
INTERACTIVE = "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
OWN, ANY = "org.totpd.manage-own", "org.totpd.manage-any"


def ok(reply: Message) -> list:
    assert reply.message_type is MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return list(reply.body)


def error(reply: Message) -> str:
    assert reply.message_type is MessageType.ERROR, reply.body
    return reply.error_name


def oath_code(uri: str, at: float) -> str:
    """The code Debian's oathtool computes for the secret of `uri` at time `at`."""
    secret = re.search(r"secret=([A-Z2-7]+)", uri).group(1)
    return subprocess.run(["oathtool", "--totp", "-b", secret, "-N", f"@{int(at)}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def logged(daemon, line: str, times: int = 1) -> bool:
    """Whether the daemon's log shows `line` `times` times (audit lines are flushed a moment after the reply)."""
    deadline = time.monotonic() + 5
    while daemon.log().count(line) < times and time.monotonic() < deadline:
        time.sleep(0.02)
    return daemon.log().count(line) == times


def allow(bus, *actions: str) -> None:
    bus.polkit_mock("SetAllowed", "as", list(actions))


def polkit_checks(bus) -> list[tuple[str, str, int]]:
    """(subject kind, action, flags) of every CheckAuthorization the mock polkit answered."""
    calls = bus.polkit_mock("GetMethodCalls", "s", "CheckAuthorization").body[0]
    out = []
    for _stamp, args in calls:
        subject, action, _details, flags, _cancel = (arg.value for arg in args)
        out.append((subject[0], action, flags))
    return out


# -- the interface itself ---------------------------------------------------------------


def _members(interface) -> dict:
    """Methods, signals and properties with their argument types and directions, in order."""
    return {
        "methods": {m.name: [(a.direction.value, a.signature) for a in m.in_args + m.out_args] for m in interface.methods},
        "in_names": {m.name: [a.name for a in m.in_args] for m in interface.methods},
        "signals": {s.name: [a.signature for a in s.args] for s in interface.signals},
        "properties": {p.name: (p.signature, p.access.value) for p in interface.properties},
    }


def test_live_introspection_matches_the_shipped_xml(bus, totpd_on):
    totpd_on(bus)
    live = Node.parse(ok(bus.call(BUS_NAME, PATH, "org.freedesktop.DBus.Introspectable", "Introspect"))[0])
    shipped = Node.parse((REPO / "packaging/dbus/org.totpd.Totpd1.xml").read_text())
    live_iface = next(i for i in live.interfaces if i.name == IFACE)
    assert [i.name for i in shipped.interfaces] == [IFACE]
    assert _members(live_iface) == _members(shipped.interfaces[0])
    assert (REPO / "packaging/dbus/org.totpd.Totpd1.xml").read_text().split("<node", 1)[1] in (
        REPO / "docs/dbus.md").read_text(), "docs/dbus.md must quote packaging/dbus/org.totpd.Totpd1.xml as it is"


def test_properties_give_version_and_policy_to_anyone(bus, totpd_on):
    totpd_on(bus, self_enroll=True, max_failures=7)
    props = ok(bus.call(BUS_NAME, PATH, "org.freedesktop.DBus.Properties", "GetAll", "s", [IFACE]))[0]
    from totpd import __version__

    assert props["Version"].value == __version__
    policy = props["Policy"].value
    assert policy["self_enroll"].value is True and policy["max_failures"].value == 7
    # An unprivileged caller reads them too: no polkit question, nothing secret in them.
    result = gdbus_as(NOBODY, bus, "GetAll", IFACE, interface="org.freedesktop.DBus.Properties")
    assert result.returncode == 0 and "'max_failures': <uint32 7>" in result.stdout
    assert polkit_checks(bus) == []


# -- each method, as root (root is never asked about) ----------------------------------------


def test_enrollment_begins_confirms_and_signals(bus, totpd_on, subscriber):
    daemon = totpd_on(bus)
    uri, secret, png = ok(bus.totpd("BeginEnrollment", "sa{sv}", "alice", {}))
    assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    status = ok(bus.totpd("GetStatus", "s", "alice"))[0]
    assert status["pending"].value is True and status["enrolled"].value is False
    codes = ok(bus.totpd("ConfirmEnrollment", "ss", "alice", pyotp.TOTP(secret).now()))[0]
    assert len(codes) == 10
    assert subscriber.next() == ("Enrolled", ["alice"])
    status = ok(bus.totpd("GetStatus", "s", "alice"))[0]
    assert status["enrolled"].value is True and status["recovery_codes_left"].value == 10
    assert status["digits"].value == 6 and status["algorithm"].value == "SHA1"
    assert logged(daemon, "event=confirm user=alice service=dbus token=default uid=0 result=confirmed")
    log = daemon.log()
    assert secret not in log and not any(code in log for code in codes)
    assert polkit_checks(bus) == []


def test_enrollment_options_are_passed_and_checked(bus, totpd_on):
    totpd_on(bus)
    uri = ok(bus.totpd("BeginEnrollment", "sa{sv}", "bob", {"digits": Variant("u", 8), "algorithm": Variant("s", "SHA256")}))[0]
    assert "digits=8" in uri and "algorithm=SHA256" in uri
    assert error(bus.totpd("BeginEnrollment", "sa{sv}", "bob", {"secret": Variant("s", "A" * 32)})) == INVALID_ARGS
    assert error(bus.totpd("BeginEnrollment", "sa{sv}", "bob", {"digits": Variant("s", "8")})) == INVALID_ARGS


def test_tokens_are_added_confirmed_listed_and_removed_over_dbus(bus, totpd_on):
    daemon = totpd_on(bus)
    uri, secret, _ = ok(bus.totpd("BeginEnrollment", "sa{sv}", "alice", {"token": Variant("s", "phone")}))
    ok(bus.totpd("ConfirmEnrollment", "ss", "alice", pyotp.TOTP(secret).now()))
    options = {"token": Variant("s", "key"), "type": Variant("s", "hotp"), "counter": Variant("t", 7)}
    uri, key, png = ok(bus.totpd("AddToken", "sa{sv}", "alice", options))
    assert uri.startswith("otpauth://hotp/") and "counter=7" in uri and png.startswith(b"\x89PNG")
    assert ok(bus.totpd("ConfirmEnrollment", "ss", "alice", pyotp.HOTP(key).at(7)))[0] == []  # recovery codes kept
    tokens = {entry["name"].value: entry for entry in ok(bus.totpd("ListTokens", "s", "alice"))[0]}
    assert set(tokens) == {"phone", "key"} and tokens["key"]["counter"].value == 8 and tokens["key"]["type"].value == "hotp"
    assert error(bus.totpd("AddToken", "sa{sv}", "alice", {"force": Variant("b", True)})) == INVALID_ARGS
    ok(bus.totpd("RemoveToken", "ss", "alice", "phone"))
    assert error(bus.totpd("RemoveToken", "ss", "alice", "key")) == INVALID_ARGS  # the last one: that is Reset
    assert logged(daemon, "event=token_remove user=alice service=dbus token=phone uid=0 result=done")
    assert key not in daemon.log()


def test_enrolling_an_enrolled_account_needs_force(bus, totpd_on):
    daemon = totpd_on(bus)
    daemon.enroll("alice")
    assert error(bus.totpd("BeginEnrollment", "sa{sv}", "alice", {})) == IFACE + ".Error.AlreadyEnrolled"
    uri = ok(bus.totpd("BeginEnrollment", "sa{sv}", "alice", {"force": Variant("b", True)}))[0]
    assert uri.startswith("otpauth://")


def test_wrong_first_codes_are_throttled_like_any_code(bus, totpd_on):
    totpd_on(bus, max_failures=2, backoff_after=100)
    secret = ok(bus.totpd("BeginEnrollment", "sa{sv}", "alice", {}))[1]
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 500_000) % 1_000_000:06d}"
    assert error(bus.totpd("ConfirmEnrollment", "ss", "alice", wrong)) == IFACE + ".Error.CodeRejected"
    assert error(bus.totpd("ConfirmEnrollment", "ss", "alice", wrong)) == IFACE + ".Error.Locked"
    assert error(bus.totpd("ConfirmEnrollment", "ss", "alice", pyotp.TOTP(secret).now())) == IFACE + ".Error.Locked"


def test_list_accounts_pages(bus, totpd_on):
    daemon = totpd_on(bus)
    for user in ("carol", "alice", "bob"):
        daemon.enroll(user)
    total, accounts = ok(bus.totpd("ListAccounts", "uu", 0, 2))
    assert total == 3 and [a["user"].value for a in accounts] == ["alice", "bob"]
    assert all(a["enrolled"].value is True for a in accounts)
    total, accounts = ok(bus.totpd("ListAccounts", "uu", 2, 100))
    assert [a["user"].value for a in accounts] == ["carol"]


def test_lock_unlock_recovery_and_reset_each_send_a_signal(bus, totpd_on, subscriber):
    daemon = totpd_on(bus, max_failures=2, backoff_after=100)
    secret = daemon.enroll("alice")  # over the socket: the signal says so all the same
    assert subscriber.next() == ("Enrolled", ["alice"])
    codes = ok(bus.totpd("RegenerateRecoveryCodes", "ss", "alice", ""))[0]
    wrong = f"{(int(pyotp.TOTP(secret).now()) + 500_000) % 1_000_000:06d}"
    for _ in range(2):
        daemon.ctl("verify", "alice", wrong)
    assert subscriber.next() == ("Locked", ["alice", "totpctl"])
    assert ok(bus.totpd("GetStatus", "s", "alice"))[0]["locked"].value is True
    ok(bus.totpd("Unlock", "s", "alice"))
    assert subscriber.next() == ("Unlocked", ["alice"])
    assert daemon.ctl("verify", "alice", codes[0]).returncode == 0
    assert subscriber.next() == ("RecoveryCodeUsed", ["alice", "totpctl"])
    ok(bus.totpd("Reset", "s", "alice"))
    assert subscriber.next() == ("Reset", ["alice"])
    assert error(bus.totpd("GetStatus", "s", "alice")) == IFACE + ".Error.NotEnrolled"
    assert subscriber.signals.empty()


def test_new_recovery_codes_replace_the_old_ones(bus, totpd_on):
    daemon = totpd_on(bus)
    first = daemon.enroll_json("alice")["recovery_codes"]
    second = ok(bus.totpd("RegenerateRecoveryCodes", "ss", "alice", ""))[0]
    assert set(first).isdisjoint(second)
    assert daemon.ctl("verify", "alice", first[0]).returncode != 0
    assert daemon.ctl("verify", "alice", second[0]).returncode == 0


# -- errors --------------------------------------------------------------------------------


def test_unknown_or_unenrolled_accounts_are_errors(bus, totpd_on):
    totpd_on(bus, check_accounts=True)
    assert error(bus.totpd("BeginEnrollment", "sa{sv}", "no-such-user-x", {})) == IFACE + ".Error.UnknownAccount"
    for member in ("GetStatus", "Reset", "Unlock"):
        assert error(bus.totpd(member, "s", "nobody")) == IFACE + ".Error.NotEnrolled"
    assert error(bus.totpd("ConfirmEnrollment", "ss", "nobody", "123456")) == IFACE + ".Error.NotEnrolled"
    assert error(bus.totpd("RegenerateRecoveryCodes", "ss", "nobody", "")) == IFACE + ".Error.NotEnrolled"


def test_bad_arguments_get_invalid_args(bus, totpd_on):
    daemon = totpd_on(bus)
    assert error(bus.totpd("GetStatus", "s", "a\nb")) == INVALID_ARGS
    assert error(bus.totpd("GetStatus", "s", "x" * 300)) == INVALID_ARGS
    assert error(bus.totpd("GetStatus", "u", 5)) == INVALID_ARGS
    bus.totpd("BeginEnrollment", "sa{sv}", "alice", {})
    assert error(bus.totpd("ConfirmEnrollment", "ss", "alice", "000000x")) == IFACE + ".Error.CodeRejected"
    assert daemon.process.poll() is None


# -- polkit --------------------------------------------------------------------------------


def test_polkit_denial_is_permission_denied_and_audited(bus, totpd_on):
    daemon = totpd_on(bus)
    daemon.enroll("nobody")
    result = gdbus_as(NOBODY, bus, "GetStatus", "nobody")
    assert gdbus_error(result) == PERMISSION_DENIED
    assert logged(daemon, "event=status user=nobody service=dbus uid=65534 result=forbidden")
    assert polkit_checks(bus) == [("system-bus-name", OWN, 0)]


def test_manage_own_allows_only_the_callers_own_account(bus, totpd_on):
    daemon = totpd_on(bus)
    daemon.enroll("nobody")
    daemon.enroll("alice")
    allow(bus, OWN)
    result = gdbus_as(NOBODY, bus, "GetStatus", "nobody")
    assert result.returncode == 0 and "'enrolled': <true>" in result.stdout
    assert gdbus_error(gdbus_as(NOBODY, bus, "GetStatus", "alice")) == PERMISSION_DENIED
    assert gdbus_error(gdbus_as(NOBODY, bus, "Reset", "nobody")) == PERMISSION_DENIED  # reset is manage-any
    assert gdbus_error(gdbus_as(NOBODY, bus, "ListAccounts", "0", "10")) == PERMISSION_DENIED
    assert [action for _, action, _ in polkit_checks(bus)] == [OWN, ANY, ANY, ANY]


def test_manage_any_allows_other_accounts(bus, totpd_on, subscriber):
    daemon = totpd_on(bus)
    daemon.enroll("alice")
    assert subscriber.next() == ("Enrolled", ["alice"])
    allow(bus, ANY)
    assert gdbus_as(DAEMON_UID, bus, "ListAccounts", "0", "10").returncode == 0
    assert gdbus_as(DAEMON_UID, bus, "Reset", "alice").returncode == 0
    assert subscriber.next() == ("Reset", ["alice"])
    assert logged(daemon, "event=reset user=alice service=dbus uid=1 result=done")


def test_polkit_challenge_asks_for_interactive_authorization(bus, totpd_on):
    daemon = totpd_on(bus)
    daemon.enroll("alice")
    # polkit's answer when the action needs a password: not authorized, but a challenge.
    bus.polkit_mock("AddMethod", "sssss", POLKIT_IFACE, "CheckAuthorization", "(sa{sv})sa{ss}us", "(bba{ss})",
                    "ret = (False, True, {})")
    assert gdbus_error(gdbus_as(DAEMON_UID, bus, "Reset", "alice")) == INTERACTIVE
    # Allowed to interact but still a challenge (no agent answered): the same error, and
    # polkit was asked with AllowUserInteraction.
    assert gdbus_error(gdbus_as(DAEMON_UID, bus, "Reset", "alice", interactive=True)) == INTERACTIVE
    assert [flags for _, _, flags in polkit_checks(bus)] == [0, 1]
    assert ok(bus.totpd("GetStatus", "s", "alice"))[0]["enrolled"].value is True
    assert logged(daemon, "event=reset user=alice service=dbus uid=1 result=forbidden", times=2)


def test_without_polkit_only_root_may_call(bus_without_polkit, totpd_on):
    daemon = totpd_on(bus_without_polkit, self_enroll=True)
    daemon.enroll("nobody")
    result = gdbus_as(NOBODY, bus_without_polkit, "GetStatus", "nobody")
    assert gdbus_error(result) == PERMISSION_DENIED and "only root" in result.stderr
    assert ok(bus_without_polkit.totpd("GetStatus", "s", "nobody"))[0]["enrolled"].value is True


@contextlib.contextmanager
def a_call_hanging_in_polkit(bus):
    """nobody's GetStatus, held inside polkit (so in flight) until the block ends; then
    the list gets that call's stderr."""
    bus.polkit_mock("SimulateHang", "b", True)
    hanging = subprocess.Popen(
        ["gdbus", "call", "--address", bus.address, "--dest", BUS_NAME, "--object-path", PATH,
         "--method", f"{IFACE}.GetStatus", "--", "nobody"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
    )
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while not bus.polkit_mock("HaveHangingCalls").body[0]:
            assert time.monotonic() < deadline, "the call never reached polkit"
            time.sleep(0.02)
        yield errors
    finally:
        bus.polkit_mock("ReleaseHangingCalls")
        errors.append(hanging.communicate(timeout=30)[1])


def test_calls_in_flight_are_capped_per_uid_like_connections(bus, totpd_on):
    totpd_on(bus, max_connections_per_uid=1)
    with a_call_hanging_in_polkit(bus) as hung:
        assert gdbus_error(gdbus_as(NOBODY, bus, "GetStatus", "nobody")) == IFACE + ".Error.Busy"
        assert error(bus.totpd("GetStatus", "s", "nobody")) == IFACE + ".Error.NotEnrolled"  # root is not capped
    assert PERMISSION_DENIED in hung[0]  # the released call got polkit's "no"


# Run as another uid: one connection to totpd's socket, a ping, the status of the answer
# (OK: the daemon admitted it; BUSY: it was refused), and the connection held until stdin closes.
HOLD_A_CONNECTION = r"""
import contextlib, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
with contextlib.suppress(BrokenPipeError):  # a refused connection is answered BUSY, then closed
    s.sendall(b"TD\x01\x00" + struct.pack(">I", 5) + b"ping\n")
header = s.recv(8)
print(s.recv(struct.unpack(">I", header[4:])[0]).split(b"\n")[0].decode(), flush=True)
sys.stdin.read()
"""


def test_one_per_uid_cap_counts_socket_connections_and_dbus_calls_together(bus, totpd_on):
    daemon = totpd_on(bus, max_connections_per_uid=1, read_timeout=60)
    daemon.enroll("nobody")
    allow(bus, OWN)
    holder = subprocess.Popen(
        ["python3", "-c", HOLD_A_CONNECTION, daemon.socket_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
    )
    try:
        assert holder.stdout.readline().strip() == "OK"
        # nobody's one place is taken by its socket connection: its D-Bus call is refused.
        assert gdbus_error(gdbus_as(NOBODY, bus, "GetStatus", "nobody")) == IFACE + ".Error.Busy"
    finally:
        holder.communicate(input="", timeout=30)
    assert gdbus_as(NOBODY, bus, "GetStatus", "nobody").returncode == 0  # the place is free again
    assert polkit_checks(bus) == [("system-bus-name", OWN, 0)]  # the refused call never reached polkit


def test_a_dbus_call_in_flight_takes_the_place_of_a_socket_connection(bus, totpd_on):
    daemon = totpd_on(bus, max_connections_per_uid=1)
    with a_call_hanging_in_polkit(bus):  # it holds nobody's one place
        socket_answer = subprocess.run(
            ["python3", "-c", HOLD_A_CONNECTION, daemon.socket_path], input="", capture_output=True, text=True,
            user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", timeout=30,
        )
        assert socket_answer.stdout.strip() == "BUSY", socket_answer.stderr
    assert wire.request(daemon.socket_path, "ping").status == "OK"


class InProcessTotpd:
    """The D-Bus door onto a real Service in this process, its loop on a thread, so a
    test can count what the service does (the daemon's own start-up is test_daemon.py's)."""

    def __init__(self, directory: Path, bus, **settings) -> None:
        self.config = Config(
            database=str(directory / "totpd.db"), key_file=str(directory / "master.key"),
            audit="stderr", dbus=bus.address, **settings,
        )
        sealer = Sealer(load_key(self.config.key_file, create=True))
        self.store = open_store(self.config.database, key_check(sealer))
        self.service = Service(self.config, self.store, sealer, Audit("stderr"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        admission = Admission(self.config.max_connections, self.config.max_connections_per_uid)
        self.api = self._run(dbusapi.start(self.config, self.service, admission))
        assert self.api is not None, "the in-process D-Bus door did not take its name"

    def _run(self, work):
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(60)

    def close(self) -> None:
        self._run(self.api.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.service.close()
        self.store.close()


def test_a_confirm_enrollment_looks_its_account_up_in_nss_once(bus, tmp_path, monkeypatch):
    """The identity step's one lookup serves the service (the canonical name) and
    polkit's question (whose account), and the service's own check of it."""
    allow(bus, OWN)
    lookups: list[str] = []
    real_getpwnam = pwd.getpwnam

    def counted(name: str):
        lookups.append(name)
        return real_getpwnam(name)

    totpd = InProcessTotpd(tmp_path, bus, self_enroll=True, check_accounts=True)
    try:
        monkeypatch.setattr(pwd, "getpwnam", counted)
        begun = gdbus_as(NOBODY, bus, "BeginEnrollment", "nobody", "@a{sv} {}")
        assert begun.returncode == 0, begun.stderr
        uri = re.search(r"'(otpauth://[^']+)'", begun.stdout).group(1)
        lookups.clear()
        confirmed = gdbus_as(NOBODY, bus, "ConfirmEnrollment", "nobody", oath_code(uri, time.time()))
        assert confirmed.returncode == 0, confirmed.stderr
        # At most one: a short-lived memo of names (identity.py) may answer in its place.
        assert lookups in ([], ["nobody"]), lookups
        # And the account was known to be the caller's own: polkit was asked manage-own.
        assert [action for _, action, _ in polkit_checks(bus)] == [OWN, OWN]
    finally:
        totpd.close()


# -- the bus policy and optional D-Bus ---------------------------------------------------------


def test_bus_policy_lets_no_other_user_own_the_name(bus):
    result = subprocess.run(
        ["gdbus", "call", "--address", bus.address, "--dest", "org.freedesktop.DBus", "--object-path",
         "/org/freedesktop/DBus", "--method", "org.freedesktop.DBus.RequestName", BUS_NAME, "4"],
        capture_output=True, text=True, user=NOBODY, group=65534, extra_groups=[], cwd="/", timeout=30,
    )
    assert gdbus_error(result) == "org.freedesktop.DBus.Error.AccessDenied"


def test_a_second_daemon_leaves_the_name_to_the_first_and_serves_its_socket(bus, totpd_on, make_daemon):
    totpd_on(bus)
    second = make_daemon(dbus=bus.address)
    assert logged(second, "is owned by another process; serving the socket only")
    assert second.ctl("list").returncode == 0


def test_losing_the_bus_is_logged_once_and_the_socket_serves_on(bus_without_polkit, totpd_on):
    daemon = totpd_on(bus_without_polkit)
    bus_without_polkit.process.terminate()
    bus_without_polkit.process.wait(10)
    assert logged(daemon, "D-Bus: lost the connection to the bus; serving the socket only")
    secret = daemon.enroll("alice")
    assert daemon.ctl("verify", "alice", pyotp.TOTP(secret).now()).returncode == 0
    assert daemon.stop() == 0


def test_without_a_bus_the_daemon_logs_once_and_serves_its_socket(make_daemon, tmp_path):
    daemon = make_daemon(dbus=f"unix:path={tmp_path}/no-bus-here")
    assert daemon.ctl("status", "alice").returncode in (0, 1)
    secret = daemon.enroll("alice")
    assert daemon.ctl("verify", "alice", pyotp.TOTP(secret).now()).returncode == 0
    assert daemon.log().count("D-Bus:") == 1 and "serving the socket only" in daemon.log()


# -- self-enrollment over D-Bus, then a login through the PAM module ------------------------------


def test_self_enrollment_over_dbus_then_pam_login(bus, totpd_on, subscriber, pam_module, tmp_path):
    daemon = totpd_on(bus, self_enroll=True, check_accounts=True)
    allow(bus, OWN)
    begun = gdbus_as(NOBODY, bus, "BeginEnrollment", "nobody", "@a{sv} {}")
    assert begun.returncode == 0, begun.stderr
    uri = re.search(r"'(otpauth://[^']+)'", begun.stdout).group(1)
    # Confirm with the previous step's code (inside the window) so the login's code is fresh.
    now = time.time()
    confirmed = gdbus_as(NOBODY, bus, "ConfirmEnrollment", "nobody", oath_code(uri, now - 30))
    assert confirmed.returncode == 0, confirmed.stderr
    assert len(re.findall(r"'[^']+'", confirmed.stdout)) == 10  # the recovery codes
    assert subscriber.next() == ("Enrolled", ["nobody"])
    stack = Stack(tmp_path / "pam.d", pam_module, daemon.socket_path).write("timeout=5")
    assert stack.auth(oath_code(uri, now), user="nobody").retcode == PAM_SUCCESS
    assert polkit_checks(bus) == [("system-bus-name", OWN, 0)] * 2
    assert re.search(r"secret=([A-Z2-7]+)", uri).group(1) not in daemon.log()
