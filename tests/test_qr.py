"""totpd/qr.py: the one drawing of a QR code, as terminal lines and as image files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyotp

import terminal
from totpd import qr

REPO = Path(__file__).resolve().parent.parent
# A long issuer: the URIs of real hosts are longer than the shortest test ones.
URI = pyotp.TOTP(pyotp.random_base32(32)).provisioning_uri(name="alice", issuer_name="build-server-03.example.com")
DARK, LIGHT = (0, 0, 0), (255, 255, 255)


def _modules(lines: list[str]) -> list[list[bool]]:
    """The module rows a terminal shows for `lines` (two per text row): True for dark."""
    rows: list[list[bool]] = []
    for line in terminal.cells("\n".join(lines), terminal.LIGHT, columns=200):
        upper, lower = [], []
        for cell in line:
            top = cell.foreground if cell.char in "\u2588\u2580" else cell.background
            bottom = cell.foreground if cell.char in "\u2588\u2584" else cell.background
            assert {top, bottom} <= {DARK, LIGHT}, f"a cell that is neither black nor white: {cell}"
            upper.append(top == DARK)
            lower.append(bottom == DARK)
        rows += [upper, lower]
    return rows


def test_every_cell_sets_both_its_colours_and_every_line_resets_them():
    lines = qr.terminal_lines(URI)
    for theme in terminal.THEMES:
        for line in terminal.cells("\n".join(lines), theme, columns=200):
            assert all(cell.coloured for cell in line)
    assert all(line.endswith("\x1b[0m") for line in lines)
    # 256-colour cube black and white: themes restyle colours 0-15, never these.
    assert all(line.startswith("\x1b[38;5;16;48;5;231m") for line in lines)


def test_the_lines_draw_exactly_the_symbol_inside_a_light_quiet_zone():
    matrix = [[bool(module) for module in row] for row in qr.symbol(URI).matrix]
    shown = _modules(qr.terminal_lines(URI))
    zone = qr.TERMINAL_QUIET_ZONE
    assert zone >= 2
    size = len(matrix)
    assert [row[zone : zone + size] for row in shown[zone : zone + size]] == matrix
    quiet = shown[:zone] + shown[zone + size :] + [row[:zone] + row[zone + size :] for row in shown[zone : zone + size]]
    assert not any(any(row) for row in quiet)
    # An odd count of module rows: the last text row's lower half is more quiet zone.
    assert len(shown) - (size + 2 * zone) in (0, 1)


def test_the_ascii_drawing_is_the_symbol_two_columns_a_module_with_the_same_quiet_zone():
    matrix = [[bool(module) for module in row] for row in qr.symbol(URI).matrix_iter(border=qr.TERMINAL_QUIET_ZONE)]
    lines = qr.ascii_lines(URI)
    assert all(line.isascii() and set(line) <= {"#", " "} for line in lines)
    assert [[line[i : i + 2] == "##" for i in range(0, len(line), 2)] for line in lines] == matrix
    assert all(line[i : i + 2] in ("##", "  ") for line in lines for i in range(0, len(line), 2))


def test_the_terminal_code_fits_an_80_column_terminal_and_a_pam_message():
    lines = qr.terminal_lines(URI)
    assert len(terminal.cells("\n".join(lines), terminal.LIGHT)) == len(lines)  # nothing wrapped at 80 columns
    assert max(len(line.encode()) for line in lines) < 512  # PAM_MAX_MSG_SIZE, for a conversation to carry


def test_a_uri_short_enough_for_a_micro_qr_still_gets_a_regular_qr_code():
    assert not qr.symbol("otpauth://totp/a").is_micro  # authenticator apps do not read Micro QR


def test_the_png_and_the_svg_decode_to_the_uri(tmp_path):
    png = tmp_path / "qr.png"
    png.write_bytes(qr.png(URI))
    assert terminal.zbar(png) == URI
    assert qr.svg(URI).lstrip().startswith(b"<?xml")


def test_debians_segno_draws_the_same_lines():
    """Debian 12 ships segno 1.4.1; the drawing uses only the API that version has."""
    found = subprocess.run(["/usr/bin/python3", "-c", "import segno"], capture_output=True)
    assert found.returncode == 0, "Debian's segno is missing: apt install python3-segno (make test installs it)"
    script = (
        "import json, sys, segno\n"
        "from totpd import qr\n"
        "print(json.dumps([segno.__version__, qr.terminal_lines(sys.argv[1]), qr.ascii_lines(sys.argv[1])]))\n"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + script, URI],
        capture_output=True, text=True, check=True, cwd="/",
    )
    version, lines, ascii_lines = json.loads(result.stdout)
    assert (lines, ascii_lines) == (qr.terminal_lines(URI), qr.ascii_lines(URI)), f"segno {version}"

