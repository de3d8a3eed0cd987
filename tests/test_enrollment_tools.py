"""Enrollment as a person meets it: the QR code scans and other TOTP tools agree."""

from __future__ import annotations

import errno
import io
import json
import os
import pty
import stat
import subprocess
import sys

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


def _on_a_terminal(daemon, *args: str, **env: str) -> str:
    """What totpctl prints with its standard output on a terminal (a pty), as the terminal shows it."""
    main, side = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "totpd.cli", "--socket", daemon.socket_path, *args],
                             stdin=subprocess.DEVNULL, stdout=side, stderr=subprocess.PIPE, env=dict(daemon.env, **env), cwd="/")
    os.close(side)
    shown = b""
    try:
        while chunk := os.read(main, 65536):
            shown += chunk
    except OSError as exc:  # EIO: the child closed the terminal
        if exc.errno != errno.EIO:
            raise
    finally:
        os.close(main)
    assert child.wait(timeout=60) == 0, child.stderr.read().decode() if child.stderr else ""
    return shown.decode().replace("\r\n", "\n")


def _scans_everywhere(screen: str, daemon, tmp_path, **photo: int) -> None:
    """The code on `screen` is read, without inverting, on every theme, and its code is accepted."""
    uri = _printed_uri(screen)
    assert terminal.read_on_every_theme(screen, tmp_path, **photo) == uri
    # What the app makes of the scan is what the daemon accepts.
    assert wire.request(daemon.socket_path, "verify", user="alice", code=pyotp.parse_uri(uri).now()).status == "ACCEPTED"


def test_on_a_terminal_totpctl_draws_one_code_black_on_white_that_scans_on_light_and_dark_themes(daemon, tmp_path):
    screen = _on_a_terminal(daemon, "enroll", "alice", "--no-confirm")
    assert "\x1b[38;5;16;48;5;231m" in screen and qr.TWO_COPIES not in screen
    _scans_everywhere(screen, daemon, tmp_path)


@pytest.mark.parametrize("where", ["NO_COLOR", "a pipe"])
def test_without_colour_totpctl_draws_two_plain_copies_that_scan_on_light_and_dark_themes(daemon, tmp_path, where):
    if where == "NO_COLOR":
        screen = _on_a_terminal(daemon, "enroll", "alice", "--no-confirm", NO_COLOR="1")
    else:
        result = daemon.ctl("enroll", "alice", "--no-confirm")
        assert result.returncode == 0, result.stderr
        screen = result.stdout
    assert "\x1b" not in screen and qr.TWO_COPIES in screen
    _scans_everywhere(screen, daemon, tmp_path)


def test_the_ascii_qr_code_scans_on_light_and_dark_themes(daemon, tmp_path):
    screen = _on_a_terminal(daemon, "enroll", "alice", "--no-confirm", "--qr-ascii")
    assert "\x1b" not in screen and screen.isascii() and qr.TWO_COPIES in screen
    # Two columns a module: wider than 80 columns for most URIs (docs/man/totpctl.8.scd).
    _scans_everywhere(screen, daemon, tmp_path, columns=132, module_width=2)


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
