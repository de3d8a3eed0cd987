"""New recovery codes (totpd/recovery_codes.py), through totpctl against a real daemon;
the tests marked both_backends run on SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import wire
from daemon_fixtures import both_backends
from daemonproc import NOBODY


def verify(daemon, user: str, value: str, service: str = "sshd"):
    return wire.request(daemon.socket_path, "verify", user=user, code=value, service=service, rhost="192.0.2.1")


@both_backends
def test_regenerated_recovery_codes_replace_the_old_ones(daemon):
    old = daemon.enroll_json("alice")["recovery_codes"]
    result = daemon.ctl("recovery-codes", "alice", "--regenerate", "--json")
    new = json.loads(result.stdout)["recovery_codes"]
    assert len(new) == 10 and not set(new) & set(old)
    assert verify(daemon, "alice", old[1]).status == "REJECTED"
    assert verify(daemon, "alice", new[1]).status == "ACCEPTED"


def test_a_user_regenerates_recovery_codes_with_a_recovery_code_as_proof(make_daemon):
    daemon = make_daemon(self_enroll=True)
    out = daemon.enroll_json("nobody")
    assert daemon.ctl("recovery-codes", "--regenerate", "--json", input="wrong-code\n", user=NOBODY).returncode == 1
    result = daemon.ctl("recovery-codes", "--regenerate", "--json", input=out["recovery_codes"][0] + "\n", user=NOBODY)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["recovery_codes"]) == 10
    counted = daemon.ctl("recovery-codes", "--json", user=NOBODY)
    assert json.loads(counted.stdout)["recovery_codes_left"] == 10
