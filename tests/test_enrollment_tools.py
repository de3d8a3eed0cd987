"""Enrollment as a person meets it: the QR code scans and other TOTP tools agree."""

from __future__ import annotations

import io
import json
import stat
import subprocess

import pyotp
import pytest

import terminal
import wire
from totpd import qr


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


def _printed_uri(stdout: str) -> str:
    return next(line[len("URI: "):] for line in stdout.splitlines() if line.startswith("URI: "))


@pytest.mark.parametrize("theme", terminal.THEMES, ids=lambda theme: theme.name)
def test_the_qr_code_totpctl_prints_scans_on_light_and_dark_terminals(daemon, tmp_path, theme):
    result = daemon.ctl("enroll", "alice", "--no-confirm")
    assert result.returncode == 0, result.stderr
    uri = _printed_uri(result.stdout)
    photo = terminal.screenshot(result.stdout, theme, tmp_path / "screen.png")
    scanned = terminal.zbar(photo)
    assert scanned == uri, f"{theme.name}: zbarimg read {scanned!r} from {photo}"
    # What the app makes of the scan is what the daemon accepts.
    code = pyotp.parse_uri(scanned).now()
    assert wire.request(daemon.socket_path, "verify", user="alice", code=code).status == "ACCEPTED"


def test_the_ascii_qr_code_scans_where_text_is_dark_on_light(daemon, tmp_path):
    result = daemon.ctl("enroll", "alice", "--no-confirm", "--qr-ascii")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and result.stdout.isascii()
    uri = _printed_uri(result.stdout)
    # Two columns a module: wider than 80 columns for most URIs (docs/man/totpctl.8.scd).
    light = terminal.screenshot(result.stdout, terminal.LIGHT, tmp_path / "light.png", columns=132, module_width=2)
    assert terminal.zbar(light) == uri
    # Without colours the drawing cannot know the theme: on a dark one it comes out inverted.
    dark = terminal.screenshot(result.stdout, terminal.DARK, tmp_path / "dark.png", columns=132, module_width=2)
    assert terminal.zbar(dark) is None


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "reverse-video"])
def test_a_qr_code_in_the_terminals_own_colours_scans_on_a_dark_theme_only(tmp_path, compact):
    """The failure the explicit colours fix, caught by the same screenshots: segno's terminal
    modes draw light modules in the theme's foreground (compact) or in reverse video."""
    uri = pyotp.TOTP(pyotp.random_base32(32)).provisioning_uri(name="alice", issuer_name="host.example.com")
    drawn = io.StringIO()
    qr.symbol(uri).terminal(out=drawn, compact=compact, border=qr.TERMINAL_QUIET_ZONE)
    module_width = 1 if compact else 2
    scans = {
        theme.name: terminal.zbar(terminal.screenshot(drawn.getvalue(), theme, tmp_path / "screen.png", 132, module_width))
        for theme in terminal.THEMES
    }
    assert scans == {terminal.LIGHT.name: None, terminal.DARK.name: uri, terminal.LIGHT_SWAPPED_PALETTE.name: None}
