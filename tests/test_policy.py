"""Rollout policy, remembered hosts, self-service and the clock, through the real daemon and real libpam."""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from pathlib import Path

import pyotp
import pytest

import wire
from daemonproc import wrong_code

import pamdriver  # noqa: E402

NOBODY = 65534


def check(daemon, user: str, service: str = "sshd", rhost: str = "192.0.2.1"):
    return wire.request(daemon.socket_path, "check", user=user, service=service, rhost=rhost)


def verify(daemon, user: str, code: str, service: str = "sshd", rhost: str = "192.0.2.1"):
    return wire.request(daemon.socket_path, "verify", user=user, code=code, service=service, rhost=rhost)


def login(daemon, tmp_path, service: str, user: str, answer: str = "000000", then: str = "pam_permit.so",
          rhost: str = "192.0.2.1"):
    """A real libpam transaction from `rhost`: pam_totpd, then `then` (what the rest of the stack decides)."""
    module = Path(__file__).resolve().parent.parent / "pam" / "pam_totpd.so"
    confdir = str(tmp_path / f"pam.d-{service}")
    pamdriver.write_confdir(
        confdir, service, [f"auth [success=done ignore=ignore default=die] {module} socket={daemon.socket_path}", f"auth required {then}"]
    )
    return pamdriver.authenticate(service, user, confdir, answer, rhost=rhost)


# -- who must use a second factor ---------------------------------------------------


def test_everyone_is_required_by_default_and_told_how_to_enroll(daemon):
    reply = check(daemon, "bob")
    assert reply.status == "DENIED" and "totpctl enroll bob" in reply.message


def test_required_users_only_those_must_enroll(make_daemon):
    daemon = make_daemon(required_users=["alice"])
    assert check(daemon, "alice").status == "DENIED"
    assert check(daemon, "bob").status == "IGNORE"


def test_required_groups_are_resolved_through_nss(make_daemon):
    daemon = make_daemon(required_groups=["root"])
    assert check(daemon, "root").status == "DENIED"  # root's primary group
    assert check(daemon, "nobody").status == "IGNORE"  # nogroup


def test_exempt_groups_win_over_a_requirement(make_daemon):
    daemon = make_daemon(exempt_groups=["nogroup"])
    assert check(daemon, "nobody").status == "IGNORE"
    assert check(daemon, "root").status == "DENIED"
    daemon_users = make_daemon(exempt_users=["root"], required_groups=["root"])
    assert check(daemon_users, "root").status == "IGNORE"


def test_an_enrolled_account_always_needs_its_code_even_when_exempt(make_daemon):
    daemon = make_daemon(exempt_users=["alice"])
    daemon.enroll("alice")
    assert check(daemon, "alice").status == "NEED_CODE"


def test_allow_until_lets_unenrolled_accounts_in_and_counts_the_days(make_daemon):
    deadline = datetime.date.today() + datetime.timedelta(days=20)
    daemon = make_daemon(allow_until=deadline.isoformat(), self_enroll=True)
    reply = check(daemon, "bob")
    assert reply.status == "IGNORE"
    assert reply.message == f"Two-factor login becomes mandatory on {deadline.isoformat()} (in 20 days); to enroll, run: totpctl enroll"


def test_allow_until_denies_once_the_date_has_come(make_daemon):
    today = datetime.date.today()
    daemon = make_daemon(unenrolled="allow_until", allow_until=today.isoformat())
    reply = check(daemon, "bob")
    assert reply.status == "DENIED" and f"mandatory since {today.isoformat()}" in reply.message


def test_allow_lets_the_rest_of_the_stack_decide(make_daemon):
    daemon = make_daemon(unenrolled="allow")
    assert check(daemon, "bob").status == "IGNORE"


def test_per_service_overrides_make_sudo_stricter_than_sshd(make_daemon):
    daemon = make_daemon(unenrolled="allow", services={"sudo": {"unenrolled": "deny"}})
    assert check(daemon, "bob", service="sshd").status == "IGNORE"
    assert check(daemon, "bob", service="sudo").status == "DENIED"
    assert verify(daemon, "bob", "123456", service="sudo").status == "DENIED"


def test_a_per_service_deadline_applies_only_to_that_service(make_daemon):
    later = datetime.date.today() + datetime.timedelta(days=1)
    daemon = make_daemon(services={"sshd": {"allow_until": later.isoformat()}})
    assert "(tomorrow)" in check(daemon, "bob", service="sshd").message
    assert check(daemon, "bob", service="sudo").status == "DENIED"


def test_the_person_at_the_prompt_sees_the_deadline_and_gets_in_through_the_rest_of_the_stack(make_daemon, tmp_path):
    deadline = datetime.date.today() + datetime.timedelta(days=3)
    daemon = make_daemon(allow_until=deadline.isoformat())
    result = login(daemon, tmp_path, "sshd", "bob")
    assert result.retcode == pamdriver.PAM_SUCCESS
    assert result.prompts == []  # no code asked
    assert any(f"mandatory on {deadline.isoformat()} (in 3 days)" in text for text in result.infos)
    denied = login(daemon, tmp_path, "sshd", "bob", then="pam_deny.so")
    assert denied.retcode != pamdriver.PAM_SUCCESS  # IGNORE means the rest of the stack decides


def test_per_service_overrides_through_real_libpam(make_daemon, tmp_path):
    daemon = make_daemon(unenrolled="allow", services={"sudo": {"unenrolled": "deny"}})
    assert login(daemon, tmp_path, "sshd", "bob").retcode == pamdriver.PAM_SUCCESS
    sudo = login(daemon, tmp_path, "sudo", "bob")
    assert sudo.retcode == pamdriver.PAM_AUTH_ERR
    assert any("totpctl enroll bob" in text for text in sudo.errors)


def test_a_policy_error_in_the_config_names_the_key(make_daemon):
    daemon = make_daemon(start=False, services={"sudo": {"unenrolled": "sometimes"}})
    with pytest.raises(RuntimeError, match="key 'services.sudo.unenrolled' must be one of"):
        daemon.start()


# -- remembered hosts ---------------------------------------------------------------


def test_hosts_are_not_remembered_unless_configured(daemon):
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", pyotp.TOTP(secret).now()).status == "ACCEPTED"
    assert check(daemon, "alice").status == "NEED_CODE"


def test_a_remembered_host_skips_the_code_for_the_same_account_service_and_rhost_only(make_daemon):
    daemon = make_daemon(services={"sshd": {"remember_host": 2}})
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", pyotp.TOTP(secret).now()).status == "ACCEPTED"
    assert check(daemon, "alice").status == "ACCEPTED"
    assert check(daemon, "alice", rhost="192.0.2.99").status == "NEED_CODE"
    assert check(daemon, "alice", service="sudo").status == "NEED_CODE"
    time.sleep(2.1)
    assert check(daemon, "alice").status == "NEED_CODE"


def test_a_failure_forgets_remembered_hosts(make_daemon):
    daemon = make_daemon(remember_host=600)
    secret = daemon.enroll("alice")
    assert verify(daemon, "alice", pyotp.TOTP(secret).now()).status == "ACCEPTED"
    assert check(daemon, "alice").status == "ACCEPTED"
    assert verify(daemon, "alice", "000001", rhost="198.51.100.7").status == "REJECTED"
    assert check(daemon, "alice").status == "NEED_CODE"


# -- self-service -------------------------------------------------------------------


def test_self_enrollment_is_off_by_default(daemon):
    result = daemon.ctl("enroll", "--json", user=NOBODY)
    assert result.returncode == 1 and "may not enroll" in result.stderr


def test_a_user_enrolls_their_own_account_and_replacing_it_needs_proof(make_daemon):
    daemon = make_daemon(self_enroll=True)
    while time.time() % 30 > 20:  # the previous step's code must stay within reach until it is judged
        time.sleep(0.2)
    secret = pyotp.random_base32(32)
    first = pyotp.TOTP(secret).at(time.time() - 30)
    result = daemon.ctl("enroll", "--json", "--secret-file", "-", input=f"{secret}\n{first}\n", user=NOBODY)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["user"] == "nobody" and len(out["recovery_codes"]) == 10
    # Another account, or activating without a first code, is refused.
    assert daemon.ctl("enroll", "alice", "--json", user=NOBODY).returncode == 1
    assert daemon.ctl("enroll", "--json", "--no-confirm", "--force", input="\n", user=NOBODY).returncode == 1
    # Replacing needs a current code (or a recovery code) of the enrollment being replaced.
    refused = daemon.ctl("enroll", "--json", "--force", input="000000\n", user=NOBODY)
    assert refused.returncode == 1 and "needs a current code" in refused.stderr
    new_secret = pyotp.random_base32(32)
    proof = pyotp.TOTP(secret).now()
    replaced = daemon.ctl(
        "enroll", "--json", "--force", "--secret-file", "-", user=NOBODY,
        input=f"{new_secret}\n{proof}\n{pyotp.TOTP(new_secret).at(time.time() - 30)}\n",
    )
    assert replaced.returncode == 0, replaced.stderr
    assert verify(daemon, "nobody", pyotp.TOTP(new_secret).now()).status == "ACCEPTED"


# -- clock --------------------------------------------------------------------------


def test_status_reports_the_host_clock(daemon):
    daemon.enroll("alice")
    fields = json.loads(daemon.ctl("status", "alice", "--json").stdout)
    assert fields["clock_synchronized"] in (0, 1, "unknown")
    assert "host clock:" in daemon.ctl("status", "alice").stdout


def test_a_failed_code_says_nothing_of_when_it_would_match(daemon):
    # Whoever reads the log must not learn the offset at which a guess becomes valid.
    secret = daemon.enroll("alice")
    drifted = pyotp.TOTP(secret).at(time.time() + 5 * 30)
    assert verify(daemon, "alice", drifted).status == "REJECTED"
    assert "steps" not in daemon.log() and "clock is likely off" not in daemon.log()
    assert drifted not in daemon.log()


def test_an_accepted_code_far_from_the_host_clock_is_logged_as_drift(make_daemon):
    daemon = make_daemon(window=3)
    secret = daemon.enroll("alice")
    drifted = pyotp.TOTP(secret).at(time.time() + 3 * 30)
    assert verify(daemon, "alice", drifted).status == "ACCEPTED"
    # +3, or +2 if a step boundary passed in between
    assert re.search(r"an accepted code for alice was \+[23] steps from this host's clock", daemon.log())
    assert drifted not in daemon.log()


# -- trusted networks ---------------------------------------------------------------

TRUSTED = ["192.0.2.0/24", "2001:db8::/32"]


@pytest.mark.parametrize("rhost", ["192.0.2.77", "2001:db8::5", "::ffff:192.0.2.77"])
def test_a_login_from_a_trusted_network_skips_the_code_even_when_enrolled(make_daemon, tmp_path, rhost):
    daemon = make_daemon(trusted_networks=TRUSTED)
    daemon.enroll("alice")
    result = login(daemon, tmp_path, "sshd", "alice", rhost=rhost)
    assert (result.name, result.prompts) == ("PAM_SUCCESS", [])  # pam_permit, the rest of the stack, decided
    assert logged(daemon, f"event=check user=alice service=sshd rhost={rhost} uid=0 result=trusted_network")


def logged(daemon, text: str, timeout: float = 5.0) -> bool:
    """Whether the daemon's log shows `text` within `timeout` (a turn's audit lines follow its replies)."""
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("rhost", ["198.51.100.7", "trusted.example", "192.0.2.77.example", ""])
def test_an_untrusted_address_a_host_name_or_no_remote_host_is_asked_for_the_code(make_daemon, tmp_path, rhost):
    daemon = make_daemon(trusted_networks=["0.0.0.0/0", "::/0"] if not rhost or "example" in rhost else TRUSTED)
    daemon.enroll("alice")
    result = login(daemon, tmp_path, "sshd", "alice", rhost=rhost)
    assert (result.name, result.prompts) == ("PAM_AUTH_ERR", ["Verification code: "])


def test_a_service_can_trust_no_network_while_others_do(make_daemon, tmp_path):
    daemon = make_daemon(trusted_networks=TRUSTED, services={"sudo": {"trusted_networks": []}})
    daemon.enroll("alice")
    assert login(daemon, tmp_path, "sshd", "alice", rhost="192.0.2.9").name == "PAM_SUCCESS"
    assert login(daemon, tmp_path, "sudo", "alice", rhost="192.0.2.9").name == "PAM_AUTH_ERR"


def test_a_non_root_caller_cannot_claim_a_trusted_address(make_daemon):
    daemon = make_daemon(trusted_networks=TRUSTED, check_accounts=True)
    daemon.enroll("nobody")
    status, _ = daemon.call_as(NOBODY, "check", user="nobody", service="sshd", rhost="192.0.2.9")
    assert status == "NEED_CODE"


def test_a_trusted_network_with_host_bits_set_is_refused_naming_the_key(make_daemon):
    daemon = make_daemon(start=False, trusted_networks=["10.0.0.1/8"])
    with pytest.raises(RuntimeError, match=r"key 'trusted_networks' lists '10.0.0.1/8', which is not a network"):
        daemon.start()



# -- a lock that ends by itself ---------------------------------------------------------


def test_a_lock_ends_after_lock_duration_and_the_next_failure_locks_again(make_daemon, tmp_path):
    daemon = make_daemon(max_failures=3, backoff_after=10, lock_duration=2)
    secret = daemon.enroll("alice")
    wrong = wrong_code(secret)
    results = [login(daemon, tmp_path, "sshd", "alice", answer=wrong).name for _ in range(3)]
    assert results == ["PAM_AUTH_ERR", "PAM_AUTH_ERR", "PAM_MAXTRIES"]
    assert login(daemon, tmp_path, "sshd", "alice", answer=pyotp.TOTP(secret).now()).name == "PAM_MAXTRIES"
    time.sleep(2.2)
    assert login(daemon, tmp_path, "sshd", "alice", answer=wrong).name == "PAM_MAXTRIES"  # locked again at once
    assert login(daemon, tmp_path, "sshd", "alice", answer=pyotp.TOTP(secret).now()).name == "PAM_MAXTRIES"
    time.sleep(2.2)
    assert login(daemon, tmp_path, "sshd", "alice", answer=pyotp.TOTP(secret).now()).name == "PAM_SUCCESS"
    status = json.loads(daemon.ctl("status", "alice", "--json").stdout)
    assert (status["locked"], status["failures"]) == (0, 0)


def test_a_timed_lock_says_when_it_ends(make_daemon):
    daemon = make_daemon(max_failures=1, lock_duration=600)
    secret = daemon.enroll("alice")
    reply = verify(daemon, "alice", wrong_code(secret))
    assert reply.status == "LOCKED" and "for 10 more minutes" in reply.message
    assert "for 10 more minutes" in check(daemon, "alice").message
