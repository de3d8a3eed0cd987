"""Enrollment as a person meets it: the QR code scans and other TOTP tools agree."""

from __future__ import annotations

import json
import stat
import subprocess

import wire


def test_the_qr_png_decodes_to_the_uri_that_json_reports(daemon, tmp_path):
    png, svg = tmp_path / "qr.png", tmp_path / "qr.svg"
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--json", "--qr-png", str(png), "--qr-svg", str(svg))
    assert result.returncode == 0, result.stderr
    uri = json.loads(result.stdout)["uri"]
    decoded = subprocess.run(["zbarimg", "--quiet", "--raw", str(png)], capture_output=True, text=True, check=True)
    assert decoded.stdout.strip() == uri
    for path in (png, svg):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the image carries the secret
    assert svg.read_text().lstrip().startswith("<?xml")


def test_a_code_from_oathtool_is_accepted(daemon):
    out = daemon.enroll_json("alice")
    token = subprocess.run(["oathtool", "--totp", "-b", out["secret"]], capture_output=True, text=True, check=True).stdout.strip()
    assert wire.request(daemon.socket_path, "verify", user="alice", code=token).status == "ACCEPTED"


def test_oathtool_agrees_for_sha256_eight_digits_sixty_seconds(daemon):
    out = daemon.enroll_json("alice", "--algorithm", "SHA256", "--digits", "8", "--period", "60")
    token = subprocess.run(
        ["oathtool", "--totp=sha256", "--digits=8", "--time-step-size=60s", "-b", out["secret"]],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert len(token) == 8
    assert wire.request(daemon.socket_path, "verify", user="alice", code=token).status == "ACCEPTED"
