"""totpctl: files it writes for a person, and codes kept out of argv."""

from __future__ import annotations

import json
import os
import stat

import pyotp

import wire


def test_a_qr_file_is_created_new_and_private(daemon, tmp_path):
    target = tmp_path / "qr.png"
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--qr-png", str(target), "--qr-svg", str(tmp_path / "qr.svg"))
    assert result.returncode == 0, result.stderr
    for path in (target, tmp_path / "qr.svg"):
        info = os.lstat(path)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert target.read_bytes().startswith(b"\x89PNG")


def test_a_planted_symlink_is_refused_and_its_target_untouched(daemon, tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("root:x:0:0\n")
    link = tmp_path / "qr.png"
    link.symlink_to(victim)
    for flag in ("--qr-png", "--qr-svg"):
        result = daemon.ctl("enroll", "alice", "--no-confirm", "--force", flag, str(link))
        assert result.returncode == 2
        assert result.stderr.strip() == f"totpctl: {link}: already exists (or is a symlink); not overwritten: name a new file"
        assert victim.read_text() == "root:x:0:0\n"


def test_an_existing_file_is_refused_not_truncated(daemon, tmp_path):
    existing = tmp_path / "qr.svg"
    existing.write_text("keep me")
    existing.chmod(0o644)
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--qr-svg", str(existing))
    assert result.returncode == 2 and "already exists" in result.stderr
    assert existing.read_text() == "keep me"


def test_verify_without_a_code_reads_it_from_stdin(daemon):
    secret = daemon.enroll("alice")
    result = daemon.ctl("verify", "alice", input=pyotp.TOTP(secret).now() + "\n")
    assert result.returncode == 0, result.stderr
    assert "Accepted code for alice" in result.stdout


def test_confirm_without_a_code_reads_it_from_stdin(daemon):
    secret = wire.request(daemon.socket_path, "enroll", user="alice").fields["secret"]
    result = daemon.ctl("confirm", "alice", "--json", input=pyotp.TOTP(secret).now() + "\n")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["recovery_codes"]) == 10
