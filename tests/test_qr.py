"""totpd/qr.py: the one drawing of a QR code, as terminal lines and as image files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyotp
import pytest

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


def _copies(lines: list[str], width: int) -> tuple[list[str], list[str]]:
    """The two copies of a plain drawing `width` columns each: (left, right) or (upper, lower)."""
    if len(lines[0]) > width:
        return [line[:width] for line in lines], [line[width + qr.COPIES_GAP :] for line in lines]
    return lines[: len(lines) // 2], lines[len(lines) // 2 :]


def _inked(lines: list[str]) -> list[list[bool]]:
    """Which modules of half-block lines are drawn in the text's colour (two a text row)."""
    rows: list[list[bool]] = []
    for line in lines:
        rows += [[char in "\u2588\u2580" for char in line], [char in "\u2588\u2584" for char in line]]
    return rows


def _matrix(uri: str) -> list[list[bool]]:
    return [[bool(module) for module in row] for row in qr.symbol(uri).matrix_iter(border=qr.TERMINAL_QUIET_ZONE)]


SHORT_URI = pyotp.TOTP(pyotp.random_base32(32)).provisioning_uri(name="alice", issuer_name="web1")


@pytest.mark.parametrize("uri", [SHORT_URI, URI], ids=["short", "long"])
def test_the_plain_drawing_is_the_symbol_in_ink_and_the_same_inverted_with_its_quiet_zone(uri):
    matrix = _matrix(uri)
    width = len(matrix[0])
    lines = qr.block_lines(uri)
    assert all(set(line) <= set("\u2588\u2580\u2584 ") for line in lines)  # text only: no escape to strip
    for_light, for_dark = _copies(lines, width)
    assert all(len(line) == width for line in for_light + for_dark)
    # An odd count of module rows: the last text row's lower half is more quiet zone, in each copy's ink.
    assert _inked(for_light)[: len(matrix)] == matrix
    assert _inked(for_dark)[: len(matrix)] == [[not module for module in row] for row in matrix]
    assert all(not any(row) for row in _inked(for_light)[len(matrix) :])
    assert all(all(row) for row in _inked(for_dark)[len(matrix) :])


def test_two_copies_go_side_by_side_where_they_fit_80_columns_and_one_above_the_other_where_not():
    short, long = qr.block_lines(SHORT_URI), qr.block_lines(URI)
    short_width, long_width = (len(_matrix(uri)[0]) for uri in (SHORT_URI, URI))
    assert max(len(line) for line in short) == 2 * short_width + qr.COPIES_GAP <= 80
    assert len(short) == (short_width + 1) // 2  # one copy's height
    assert max(len(line) for line in long) == long_width and 2 * long_width + qr.COPIES_GAP > 80
    assert len(long) == 2 * ((long_width + 1) // 2)
    # A wider terminal takes them side by side.
    assert max(len(line) for line in qr.block_lines(URI, columns=120)) == 2 * long_width + qr.COPIES_GAP


def test_the_ascii_drawing_is_the_same_two_copies_two_columns_a_module_one_row_a_line():
    matrix = _matrix(URI)
    lines = qr.ascii_lines(URI)
    assert all(line.isascii() and set(line) <= {"#", " "} for line in lines)
    assert all(line[i : i + 2] in ("##", "  ") for line in lines for i in range(0, len(line), 2))
    for_light, for_dark = _copies(lines, 2 * len(matrix[0]))
    assert [[line[i : i + 2] == "##" for i in range(0, len(line), 2)] for line in for_light] == matrix
    assert [[line[i : i + 2] == "  " for i in range(0, len(line), 2)] for line in for_dark] == matrix


@pytest.mark.parametrize("uri", [SHORT_URI, URI], ids=["side by side", "one above the other"])
def test_the_plain_drawing_scans_on_light_and_dark_themes_without_an_inverting_scanner(uri, tmp_path):
    text = qr.TWO_COPIES + ":\n" + "\n".join(qr.block_lines(uri)) + "\nOr add an account by hand with this key\n"
    assert terminal.read_on_every_theme(text, tmp_path) == uri


def test_one_copy_alone_scans_on_one_theme_only_which_is_why_there_are_two(tmp_path):
    """The drawing before two copies: the dark modules in the text's colour, read on a dark
    theme only by a scanner that inverts (zbarimg -Stest-inverted), which many phone apps are not."""
    for_light, for_dark = _copies(qr.block_lines(URI), len(_matrix(URI)[0]))
    scans = {}
    for name, lines in (("for light", for_light), ("for dark", for_dark)):
        for theme in (terminal.LIGHT, terminal.DARK):
            photo = terminal.screenshot("\n".join(lines), theme, tmp_path / "screen.png")
            scans[name, theme.name] = (terminal.zbar(photo), terminal.zbar(photo, inverted=True))
    assert scans == {
        ("for light", "light"): (URI, URI), ("for light", "dark"): (None, URI),
        ("for dark", "light"): (None, URI), ("for dark", "dark"): (URI, URI),
    }


def test_the_plain_drawing_fits_80_columns_and_a_pam_message():
    for uri in (SHORT_URI, URI):
        lines = qr.block_lines(uri)
        assert len(terminal.cells("\n".join(lines), terminal.LIGHT)) == len(lines)  # nothing wrapped at 80 columns
        assert max(len(line.encode()) for line in lines) < 512  # PAM_MAX_MSG_SIZE


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
        "print(json.dumps([segno.__version__, qr.terminal_lines(sys.argv[1]), qr.block_lines(sys.argv[1]),"
        " qr.ascii_lines(sys.argv[1])]))\n"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + script, URI],
        capture_output=True, text=True, check=True, cwd="/",
    )
    version, *drawings = json.loads(result.stdout)
    assert drawings == [qr.terminal_lines(URI), qr.block_lines(URI), qr.ascii_lines(URI)], f"segno {version}"

